"""Preflight: each bad input is named, with what to change, before any heavy work; several at once.

Pure checks (no Prefect or MLflow server needed: QUANTFLOW_TEST_SERVERS=0 runs all but the flow test), plus one
flow run on a bad spec that must fail in seconds without writing a checkpoint or calling oneshot. The remote-name
tests at the end show that names built from user input cannot leave their S3 prefix or Hub namespace.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import yaml
from servers import no_aws_environment
from tiny import tiny_spec

from components import recipes
from components.messages import Checked
from components.preflight import Plan, PreflightError, preflight
from components.settings import settings
from components.specs import VariantSpec

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No stray credentials or opt-ins from the caller's environment; settings re-read from the environment."""
    for var in ("HF_TOKEN", "QUANTFLOW_ALLOW_CODE_EXECUTION"):
        monkeypatch.delenv(var, raising=False)
    no_aws_environment(monkeypatch, tmp_path)
    settings.cache_clear()
    yield
    settings.cache_clear()


def good(tiny: Path, tmp: Path, **over) -> dict:
    """A spec preflight accepts: the tests' tiny variant, published to a local store in tmp."""
    return tiny_spec(tiny, **{"stores": [{"kind": "local", "uri": str(tmp / "published")}], **over})


def problems_of(spec) -> list[str]:
    with pytest.raises(PreflightError) as ei:
        preflight(spec)
    assert str(ei.value).startswith("preflight found")
    return ei.value.problems


def test_good_spec_passes_and_plans(tiny_model, tmp_path):
    plan = preflight(good(tiny_model, tmp_path))
    assert isinstance(plan, Plan)
    assert plan.scheme.name == "w8a8-int8" and plan.suite.name == "smoke" and plan.engine.engine == "hf"
    assert plan.engine.limit == 2 and plan.engine.batch_size == "4"  # hf on CPU: a fixed batch size
    assert plan.name == "tiny-llama-quantized.w8a8"
    assert 0 < plan.checkpoint_bytes < 2 * sum(p.stat().st_size for p in tiny_model.glob("*.safetensors"))
    assert not (tmp_path / "published").exists(), "preflight writes nothing"


def test_serving_planned_on_vllm_only(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTFLOW_EVAL_PYTHON", sys.executable)
    settings.cache_clear()
    assert preflight(good(tiny_model, tmp_path, evaluation__engine="vllm")).serving
    assert not preflight(good(tiny_model, tmp_path, evaluation__engine="vllm", evaluation__serving__enabled=False)).serving
    on_hf = preflight(good(tiny_model, tmp_path))
    assert not on_hf.serving and any("serving speed is measured with vLLM" in n for n in on_hf.notes)


def test_w4a16_passes_on_the_tiny_model(tiny_model, tmp_path):
    """hidden 128, intermediate 256: every Linear's input width is a multiple of the group size 128."""
    assert preflight(good(tiny_model, tmp_path, scheme="w4a16")).scheme.group_size == 128


# --- the bad inputs: each case builds a spec (and the world around it) and names the problem it must report -----

Ctx = namedtuple("Ctx", "tiny tmp mp embedded")


def _recipe_dir(ctx: Ctx) -> Path:
    """A private copy of components/recipes/ that a case may break."""
    d = ctx.tmp / "recipes"
    if not d.exists():
        d.mkdir()
        for p in recipes.RECIPES.glob("*.yaml"):
            shutil.copy(p, d / p.name)
        ctx.mp.setattr(recipes, "RECIPES", d)
    return d


def _edit_recipe(ctx: Ctx, name: str, fn) -> None:
    path = _recipe_dir(ctx) / f"{name}.yaml"
    doc = yaml.safe_load(path.read_text())
    fn(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _gptq(doc) -> dict:
    return doc["recipe"]["quant_stage"]["quant_modifiers"]["GPTQModifier"]


def _model_copy(ctx: Ctx, name: str = "model-copy") -> Path:
    """The tiny model's small files copied, its weights linked: a model directory a case may break."""
    d = ctx.tmp / name
    d.mkdir()
    for p in ctx.tiny.iterdir():
        (d / p.name).symlink_to(p) if p.suffix == ".safetensors" else shutil.copy(p, d / p.name)
    return d


def _jsonl(ctx: Ctx, rows: list, name: str = "calib.jsonl") -> str:
    path = ctx.tmp / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def case_scheme_misspelled(ctx):
    return {**good(ctx.tiny, ctx.tmp), "scheme": "w8a8_int8"}, r"unknown scheme 'w8a8_int8': did you mean 'w8a8-int8'\?"


def case_scheme_ambiguous(ctx):
    return {**good(ctx.tiny, ctx.tmp), "scheme": "fp8"}, r"did you mean one of 'fp8-dynamic', 'fp8-static'\?"


def case_recipe_file_missing(ctx):
    (_recipe_dir(ctx) / "w8a8-int8.yaml").unlink()
    return good(ctx.tiny, ctx.tmp), r"scheme 'w8a8-int8': no recipe file w8a8-int8.yaml"


def case_recipe_not_yaml(ctx):
    (_recipe_dir(ctx) / "w8a8-int8.yaml").write_text("name: w8a8-int8\nrecipe: [unclosed\n")
    return good(ctx.tiny, ctx.tmp), r"w8a8-int8.yaml is not valid YAML"


def case_recipe_missing_card_fields(ctx):
    _edit_recipe(ctx, "w8a8-int8", lambda d: d.pop("suffix"))
    return good(ctx.tiny, ctx.tmp), r"lacks or misstates scheme fields: suffix: Field required"


def case_recipe_without_modifiers(ctx):
    _edit_recipe(ctx, "w8a8-int8", lambda d: d.update(recipe={"quant_stage": {"quant_modifiers": {}}}))
    return good(ctx.tiny, ctx.tmp), r"parses to no llm-compressor modifier"


def case_recipe_unknown_modifier(ctx):
    def typo(d):
        mods = d["recipe"]["quant_stage"]["quant_modifiers"]
        mods["GPTQModifer"] = mods.pop("GPTQModifier")
    _edit_recipe(ctx, "w8a8-int8", typo)
    return good(ctx.tiny, ctx.tmp), r"not a valid llm-compressor recipe \(ValueError: No modifier of type 'GPTQModifer'"


def case_recipe_unknown_preset(ctx):
    _edit_recipe(ctx, "w8a8-int8", lambda d: _gptq(d).update(scheme="W9A9"))
    return good(ctx.tiny, ctx.tmp), r"not a valid llm-compressor recipe .*scheme"


def case_recipe_target_matches_nothing(ctx):
    _edit_recipe(ctx, "w8a8-int8", lambda d: _gptq(d).update(targets=["Conv2d"]))
    return good(ctx.tiny, ctx.tmp), r"target 'Conv2d' matches no module of tiny-llama"


def case_recipe_regex_target_matches_nothing(ctx):
    _edit_recipe(ctx, "w8a8-int8", lambda d: _gptq(d).update(targets=["re:.*qkv_proj$"]))
    return good(ctx.tiny, ctx.tmp), r"target 're:\.\*qkv_proj\$' matches no module"


def case_recipe_ignore_matches_nothing(ctx):
    _edit_recipe(ctx, "w8a8-int8", lambda d: _gptq(d).update(ignore=["lm_heads"]))
    return good(ctx.tiny, ctx.tmp), r"ignore entry 'lm_heads' matches no module of tiny-llama"


def case_group_size_does_not_divide(ctx):
    """SmolLM2-135M: hidden 576, 576 % 128 = 64."""
    return good(ctx.embedded, ctx.tmp, scheme="w4a16"), \
        r"group size 128 does not divide the input width of \d+ Linear layer\(s\).*576 columns, 576 % 128 = 64"


def case_base_missing(ctx):
    return good(ctx.tmp / "no-such-model", ctx.tmp), r"no such directory or file"


def case_base_without_config(ctx):
    d = _model_copy(ctx)
    (d / "config.json").unlink()
    return good(d, ctx.tmp), r"no config.json: not a Hugging Face model directory"


def case_base_config_unreadable(ctx):
    d = _model_copy(ctx)
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], ')
    return good(d, ctx.tmp), r"config.json is unreadable \(JSONDecodeError"


def case_base_symlink_loop(ctx):
    loop = ctx.tmp / "loop"
    loop.symlink_to(loop)
    return good(loop, ctx.tmp), r"'.*/loop': is a symlink loop \(a link that leads back to itself, ELOOP\): point it"


def case_base_dangling_symlink(ctx):
    link = ctx.tmp / "model-link"
    link.symlink_to(ctx.tmp / "gone")
    return good(link, ctx.tmp), r"model-link': is a symlink to '.*/gone', which does not exist: fix the link"


def case_base_config_is_a_fifo(ctx):
    d = _model_copy(ctx)
    (d / "config.json").unlink()
    os.mkfifo(d / "config.json")  # reading it would block preflight for ever
    return good(d, ctx.tmp), r"config.json is not a regular file but a FIFO \(named pipe\): replace it"


def case_weights_file_is_a_fifo(ctx):
    d = _model_copy(ctx)
    (d / "model.safetensors").unlink()
    os.mkfifo(d / "model.safetensors")
    return good(d, ctx.tmp), r"weight file model.safetensors is not a regular file: download or copy it again"


def _config_edit(ctx, **changes) -> Path:
    d = _model_copy(ctx)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, **changes}))
    return d


def case_config_fewer_layers_than_the_weights(ctx):
    """A 1-layer config over 2-layer weights: quantization would make a 1-layer checkpoint, evaluation fail later."""
    return good(_config_edit(ctx, num_hidden_layers=1), ctx.tmp), \
        r"config.json does not match its weights \(num_hidden_layers is 1 but the weights hold 2 layers \(0-1\)\): " \
        r"use the config.json that came with these weights"


def case_config_more_layers_than_the_weights(ctx):
    return good(_config_edit(ctx, num_hidden_layers=3), ctx.tmp), \
        r"config.json does not match its weights \(num_hidden_layers is 3 but the weights hold 2 layers"


def case_config_other_vocabulary(ctx):
    vocab = json.loads((ctx.tiny / "config.json").read_text())["vocab_size"]
    return good(_config_edit(ctx, vocab_size=vocab + 64), ctx.tmp), \
        rf"config.json does not match its weights \(vocab_size is {vocab + 64} but model.embed_tokens.weight has " \
        rf"{vocab} rows"


def case_config_other_tensor_shape(ctx):
    """A shape only the model built from config.json shows (intermediate_size): named with both shapes."""
    return good(_config_edit(ctx, intermediate_size=512), ctx.tmp), \
        r"config.json does not match its weights \(model.layers.0.mlp.down_proj.weight is \[128, 256\] in the weights " \
        r"but \[128, 512\] from config.json; "


def case_base_without_weights(ctx):
    d = _model_copy(ctx)
    (d / "model.safetensors").unlink()
    return good(d, ctx.tmp), r"no weights \(\*.safetensors or \*.bin\)"


def case_base_not_a_causal_lm(ctx):
    from transformers import ViTConfig

    d = ctx.tmp / "vit"
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(d)
    (d / "model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")  # a valid, empty safetensors file
    return good(d, ctx.tmp), r"model type 'vit' has no causal-LM head"


def case_base_classification_checkpoint(ctx):
    d = _model_copy(ctx)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForSequenceClassification"]}))
    return good(d, ctx.tmp), r"architectures \['LlamaForSequenceClassification'\] have no causal-LM head"


def case_gguf_missing(ctx):
    return good(ctx.tmp / "model.Q4_0.gguf", ctx.tmp), r"GGUF file not found"


def case_gguf_package_missing(ctx):
    return good("pkg:qf_no_such_package/x.gguf", ctx.tmp), r"package 'qf_no_such_package' is not installed"


def case_hub_model_not_cached_offline(ctx):
    return good("qf-test-org/never-downloaded-model", ctx.tmp), r"not in the local Hugging Face cache and HF_HUB_OFFLINE"


def case_calibration_file_missing(ctx):
    return good(ctx.tiny, ctx.tmp, calibration__dataset=str(ctx.tmp / "nope.jsonl")), r"calibration.dataset .*: file not found"


def case_calibration_too_few_rows(ctx):
    return good(ctx.tiny, ctx.tmp, calibration__num_samples=100), \
        r"has 48 rows, calibration.num_samples is 100: lower num_samples to 48"


def case_calibration_missing_column(ctx):
    return good(ctx.tiny, ctx.tmp, calibration__column="message"), \
        r"calibration.column 'message' is not in .*did you mean 'messages'\?"


def case_calibration_file_type(ctx):
    path = ctx.tmp / "calib.txt"
    path.write_text("hello\n")
    return good(ctx.tiny, ctx.tmp, calibration__dataset=str(path)), r"unsupported file type '.txt'"


def case_calibration_not_json(ctx):
    path = ctx.tmp / "calib.jsonl"
    path.write_text('{"messages": [] \n')
    return good(ctx.tiny, ctx.tmp, calibration__dataset=str(path)), r"cannot be read as .jsonl .*line 1 is not JSON"


def case_calibration_parquet_too_small(ctx):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = ctx.tmp / "calib.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c"]}), path)
    return good(ctx.tiny, ctx.tmp, calibration__dataset=str(path), calibration__column="text",
                calibration__apply_chat_template=False), r"has 3 rows, calibration.num_samples is 8"


def case_chat_template_missing(ctx):
    d = _model_copy(ctx)
    (d / "chat_template.jinja").unlink()
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return good(d, ctx.tmp), r"apply_chat_template is on but model-copy's tokenizer has no chat template"


def case_chat_template_on_plain_text(ctx):
    data = _jsonl(ctx, [{"text": f"sample {i}"} for i in range(10)])
    return good(ctx.tiny, ctx.tmp, calibration__dataset=data, calibration__column="text"), \
        r"column 'text' holds plain text, not chat messages"


def case_messages_without_chat_template(ctx):
    data = _jsonl(ctx, [{"messages": MESSAGES}] * 10)
    return good(ctx.tiny, ctx.tmp, calibration__dataset=data, calibration__apply_chat_template=False), \
        r"column 'messages' holds chat messages, not text"


def case_calibration_hub_dataset_offline(ctx):
    return good(ctx.tiny, ctx.tmp, calibration__dataset="qf-test-org/never-downloaded-set"), \
        r"not in the local cache and offline mode is on"


def case_seq_length_above_positions(ctx):
    return good(ctx.tiny, ctx.tmp, calibration__max_seq_length=4096), \
        r"max_seq_length 4096 is above tiny-llama's max_position_embeddings 2048"


def case_suite_unknown(ctx):
    return good(ctx.tiny, ctx.tmp, evaluation__suite="smok"), r"evaluation.suite: unknown suite 'smok': did you mean 'smoke'\?"


def case_suite_invalid(ctx):
    from components.evaluation import suites

    doc = yaml.safe_load((suites.SUITES / "smoke.yaml").read_text())
    doc["include_path"] = str((suites.SUITES / doc["include_path"]).resolve())
    doc["tasks"][0]["task"] = "qf_factz"
    doc["tasks"][1]["metric"] = "exact_match,first-number"
    path = ctx.tmp / "my-suite.yaml"
    path.write_text(yaml.safe_dump(doc))
    return good(ctx.tiny, ctx.tmp, evaluation__suite=str(path)), [
        r"'qf_factz' \(.*\): unknown lm-eval task.*did you mean qf_facts\?",
        r"metric 'exact_match,first-number' is not a metric name .*give metric and filter separately"]


def case_suite_not_a_suite(ctx):
    path = ctx.tmp / "not-a-suite.yaml"
    path.write_text("name: x\n")
    return good(ctx.tiny, ctx.tmp, evaluation__suite=str(path)), r"not a valid suite file: .*description: Field required"


def case_humaneval_without_opt_in(ctx):
    return good(ctx.tiny, ctx.tmp, evaluation__suite="humaneval"), r"QUANTFLOW_ALLOW_CODE_EXECUTION=1"


def case_humaneval_plus_without_its_problems_file(ctx):
    ctx.mp.setenv("QUANTFLOW_ALLOW_CODE_EXECUTION", "1")
    ctx.mp.setenv("HUMANEVAL_OVERRIDE_PATH", str(ctx.tmp / "HumanEvalPlus.jsonl"))
    return good(ctx.tiny, ctx.tmp, evaluation__suite="humaneval-evalplus", evaluation__engine="hf"), \
        r"HumanEval\+ needs its problems file offline: set HUMANEVAL_OVERRIDE_PATH .*no such file: .*HumanEvalPlus.jsonl"


def case_gpu_placement_without_a_gpu(ctx):
    return good(ctx.tiny, ctx.tmp, quantization__placement="gpu"), \
        r"quantization.placement 'gpu': no CUDA GPU is visible: use auto or cpu"


def case_engine_cannot_run_scheme(ctx):
    return good(ctx.tiny, ctx.tmp, scheme="fp8-static", evaluation__engine="vllm"), \
        r"vLLM on cpu cannot run scheme fp8-static .*use engine 'hf' or 'auto'"


def case_eval_python_missing(ctx):
    ctx.mp.setenv("QUANTFLOW_EVAL_PYTHON", str(ctx.tmp / "no-venv-eval" / "bin" / "python"))
    return good(ctx.tiny, ctx.tmp, evaluation__engine="vllm"), r"vLLM .*: evaluation environment not found at .*no-venv-eval"


def case_vllm_context_above_positions(ctx):
    ctx.mp.setenv("QUANTFLOW_ALLOW_CODE_EXECUTION", "1")
    ctx.mp.setenv("QUANTFLOW_EVAL_PYTHON", sys.executable)  # present: only the context length is wrong
    return good(ctx.tiny, ctx.tmp, evaluation__engine="vllm", evaluation__suite="humaneval"), \
        r"vLLM would run with max_model_len 4096, above tiny-llama's max_position_embeddings 2048"


def _serving_case(ctx, **serving) -> dict:
    ctx.mp.setenv("QUANTFLOW_EVAL_PYTHON", sys.executable)  # present: only the serving settings are wrong
    return good(ctx.tiny, ctx.tmp, evaluation__engine="vllm", **{f"evaluation__serving__{k}": v for k, v in serving.items()})


def case_serving_prompts_missing(ctx):
    return _serving_case(ctx, prompts=str(ctx.tmp / "prompts.jsonl")), r"evaluation.serving.prompts: no file .*prompts.jsonl"


def case_serving_prompts_not_jsonl(ctx):
    (ctx.tmp / "prompts.jsonl").write_text('{"prompt": "hi"}\nnot json\n')
    return _serving_case(ctx, prompts=str(ctx.tmp / "prompts.jsonl")), r"prompts.jsonl is not JSONL"


def case_serving_prompts_without_prompt(ctx):
    (ctx.tmp / "prompts.jsonl").write_text('{"prompt": "hi"}\n{"text": "no prompt"}\n')
    return (_serving_case(ctx, prompts=str(ctx.tmp / "prompts.jsonl")),
            r"needs a string `prompt` on every line \(missing on lines \[2\]\)")


def case_serving_context_above_positions(ctx):
    return _serving_case(ctx, max_model_len=4096), \
        r"evaluation.serving.max_model_len 4096 is above tiny-llama's max_position_embeddings 2048"


def case_reference_baseline_unknown(ctx):
    return good(ctx.tiny, ctx.tmp, evaluation__reference_baseline="Llama-9"), \
        r"evaluation.reference_baseline: no reference baseline 'Llama-9' \(shipped: "


def case_reference_baseline_for_another_model_and_suite(ctx):
    where = r"evaluation.reference_baseline 'Meta-Llama-3.1-70B-Instruct.openllm-v1-2024': "
    return good(ctx.tiny, ctx.tmp, evaluation__reference_baseline="Meta-Llama-3.1-70B-Instruct.openllm-v1-2024"), [
        where + r"it is for suite 'openllm-v1-2024', the evaluation runs 'smoke'",
        where + r"no published score for task\(s\) qf_facts, qf_arith, qf_prose",
        where + r"task\(s\) arc_challenge_llama, .* are not in suite 'smoke'",
        where + r"it was published for meta-llama/Meta-Llama-3.1-70B-Instruct, the base model is tiny-llama"]


def case_gpu_required_but_absent(ctx):
    ctx.mp.setattr("components.evaluation.engine.detect_platform", lambda: "cpu")
    return good(ctx.tiny, ctx.tmp, evaluation__require_gpu=True), r"require_gpu is set but no CUDA GPU is visible"


def case_variant_name_escapes(ctx):
    return (good(ctx.tiny, ctx.tmp, variant_name="../../etc/x"),
            r"variant_name: variant name '\.\./\.\./etc/x' must be one plain name")


def case_default_name_not_plain(ctx):
    d = _model_copy(ctx, "my model (v2)")
    return (good(d, ctx.tmp),
            r"variant_name: the default name, variant name 'my model \(v2\)-quantized.w8a8' must be one plain name")


def case_local_store_root_is_a_file(ctx):
    (ctx.tmp / "a-file").write_text("x")
    return good(ctx.tiny, ctx.tmp, stores=[{"kind": "local", "uri": str(ctx.tmp / "a-file")}]), \
        r"stores\[0\] \(local .*a-file\): .* exists and is not a directory"


def case_s3_bad_bucket_name(ctx):
    return good(ctx.tiny, ctx.tmp, stores=[{"kind": "s3", "uri": "s3://Bad_Bucket/x"}]), r"invalid S3 bucket name 'Bad_Bucket'"


def _answers_once_access_denied() -> str:
    """An endpoint that answers (one request, 403 AccessDenied, as S3 answers an unsigned one), then closes."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Denied(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
            self.send_response(403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Denied)
    server.timeout = 60

    def once():
        server.handle_request()
        server.server_close()
    threading.Thread(target=once, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}"


def case_s3_no_credentials(ctx):
    """The endpoint answers: only the missing credentials are the problem."""
    store = {"kind": "s3", "uri": "s3://qf-bucket/x", "endpoint_url": _answers_once_access_denied()}
    return good(ctx.tiny, ctx.tmp, stores=[store]), r"checking the bucket: no AWS credentials found for bucket 'qf-bucket'"


def case_s3_unreachable(ctx):
    from servers import free_ports

    ctx.mp.setenv("AWS_ACCESS_KEY_ID", "QFKEY")
    ctx.mp.setenv("AWS_SECRET_ACCESS_KEY", "qf-not-a-real-secret")
    [port] = free_ports(1)
    return good(ctx.tiny, ctx.tmp, stores=[{"kind": "s3", "uri": "s3://qf-bucket/x",
                                            "endpoint_url": f"http://127.0.0.1:{port}"}]), \
        rf"cannot reach bucket 'qf-bucket' at http://127.0.0.1:{port}"


def case_hub_token_missing(ctx):
    from huggingface_hub import constants

    ctx.mp.setattr(constants, "HF_HUB_OFFLINE", False)
    return good(ctx.tiny, ctx.tmp, stores=[{"kind": "hub", "uri": "qf-org/tiny-w8a8", "endpoint_url": "http://127.0.0.1:9"}]), \
        r"no Hugging Face token to publish to http://127.0.0.1:9: set HF_TOKEN"


def case_hub_repo_id_invalid(ctx):
    return (good(ctx.tiny, ctx.tmp, stores=[{"kind": "hub", "uri": "qf-org/a/b"}]),
            r"Hub repo id 'qf-org/a/b' must be 'namespace/name'")


def case_hub_offline(ctx):
    ctx.mp.setenv("HF_TOKEN", "hf_" + os.urandom(8).hex())
    return good(ctx.tiny, ctx.tmp, stores=[{"kind": "hub", "uri": "qf-org/tiny-w8a8"}]), r"HF_HUB_OFFLINE is set: cannot publish"


def case_mlflow_unreachable(ctx):
    from servers import free_ports

    [port] = free_ports(1)
    ctx.mp.setenv("QUANTFLOW_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}/?view=qf-not-shown")
    return good(ctx.tiny, ctx.tmp), \
        rf"MLflow tracking server http://127.0.0.1:{port}/ \(QUANTFLOW_MLFLOW_TRACKING_URI\) does not answer"


def case_mlflow_uri_with_a_token_in_its_query(ctx):
    ctx.mp.setenv("QUANTFLOW_MLFLOW_TRACKING_URI", "http://127.0.0.1:9/?view=runs&access_token=qf-not-shown")
    return good(ctx.tiny, ctx.tmp), \
        r"'http://127.0.0.1:9/\?view=runs&access_token=\*\*\*' carries credentials in the URL.*MLFLOW_TRACKING_USERNAME"


def case_mlflow_uri_with_credentials(ctx):
    ctx.mp.setenv("QUANTFLOW_MLFLOW_TRACKING_URI", "http://qf-user:qf-pass@127.0.0.1:9")
    return good(ctx.tiny, ctx.tmp), r"'http://\*\*\*@127.0.0.1:9' carries credentials in the URL.*MLFLOW_TRACKING_USERNAME"


def case_disk_full(ctx):
    usage = shutil.disk_usage("/")
    ctx.mp.setattr("components.preflight.shutil.disk_usage", lambda p: usage._replace(free=8 << 20))
    return good(ctx.tiny, ctx.tmp), r"not enough free disk under .*: ~0.\d\d GiB needed \(checkpoint ~0.01 GiB, stores\[0\] copy"


def case_calibration_bad_later_row(ctx):
    rows = [{"messages": MESSAGES}] * 40
    rows[16] = {"messages": None}  # line 17: fails minutes later inside build_calibration without this check
    return good(ctx.tiny, ctx.tmp, calibration__dataset=_jsonl(ctx, rows)), \
        r"1 row of column 'messages' cannot be used \(line 17: messages are missing \(null\), not a non-empty list"


def case_calibration_bad_rows_named(ctx):
    rows = [{"messages": MESSAGES}] * 40
    rows[9], rows[19], rows[29], rows[39] = {"messages": []}, {"messages": [{"role": "user"}]}, {"other": 1}, \
        {"messages": "hi"}
    return good(ctx.tiny, ctx.tmp, calibration__dataset=_jsonl(ctx, rows)), \
        r"4 rows .*\(line 10: messages are empty, .*; line 20: message 0 is missing a string role or content; " \
        r"line 30: messages are missing \(null\), [^;]*; \.\.\.\): fix or drop them"


def case_calibration_empty_file(ctx):
    return good(ctx.tiny, ctx.tmp, calibration__dataset=_jsonl(ctx, [])), \
        r"calibration.dataset '.*calib.jsonl' is empty \(no rows\): give one with at least \d+ rows"


def case_calibration_empty_parquet(ctx):
    """Columns but no rows: empty, not 'column messages is missing'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = ctx.tmp / "calib.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    return good(ctx.tiny, ctx.tmp, calibration__dataset=str(path), calibration__column="text",
                calibration__apply_chat_template=False), r"calib.parquet' is empty \(no rows\)"


def case_calibration_not_utf8(ctx):
    path = Path(_jsonl(ctx, [{"messages": MESSAGES}] * 40))
    lines = path.read_bytes().splitlines(keepends=True)
    lines[6] = lines[6].replace(b"Hello!", b"Hell\xe9!")  # Latin-1, as a spreadsheet export may write
    path.write_bytes(b"".join(lines))
    return good(ctx.tiny, ctx.tmp, calibration__dataset=str(path)), \
        r"calib.jsonl': not UTF-8 text \(line 7, column \d+ \(byte 0xe9\)\): save it as UTF-8"


def case_calibration_later_line_not_json(ctx):
    path = Path(_jsonl(ctx, [{"messages": MESSAGES}] * 40))
    path.write_text(path.read_text() + '{"messages": [\n')
    return good(ctx.tiny, ctx.tmp, calibration__dataset=str(path)), r"cannot be read as .jsonl .*line 41 is not JSON"


def case_calibration_text_row_empty(ctx):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = ctx.tmp / "calib.parquet"
    pq.write_table(pa.table({"text": [f"sample {i}" for i in range(11)] + [None]}), path)
    return good(ctx.tiny, ctx.tmp, calibration__dataset=str(path), calibration__column="text",
                calibration__apply_chat_template=False), r"row 12: text is missing \(null\), not a non-empty string"


def _weights_copy(ctx) -> Path:
    d = _model_copy(ctx)
    (d / "model.safetensors").unlink()
    shutil.copy(ctx.tiny / "model.safetensors", d / "model.safetensors")
    return d


def case_weights_truncated(ctx):
    d = _weights_copy(ctx)
    with open(d / "model.safetensors", "r+b") as f:
        f.truncate((d / "model.safetensors").stat().st_size - 1000)
    return good(d, ctx.tmp), r"weight file model.safetensors is \d+ bytes but its header describes \d+: truncated"


def case_weights_not_safetensors(ctx):
    d = _weights_copy(ctx)
    (d / "model.safetensors").write_bytes(b"<html>404 Not Found</html>" * 10)
    return good(d, ctx.tmp), r"weight file model.safetensors declares a \d+-byte header but the file is 260 bytes"


def case_weights_empty_file(ctx):
    d = _weights_copy(ctx)
    (d / "model.safetensors").write_bytes(b"")
    return good(d, ctx.tmp), r"weight file model.safetensors is 0 bytes: too short"


def case_base_path_with_comma(ctx):
    d = _model_copy(ctx, "tiny,llama")
    return good(d, ctx.tmp, variant_name="tiny-llama-x"), r"path .*tiny,llama' holds a comma, which lm_eval's --model_args"


def case_home_path_with_comma(ctx):
    ctx.mp.setenv("QUANTFLOW_HOME", str(ctx.tmp / "qf,home"))
    return good(ctx.tiny, ctx.tmp), r"QUANTFLOW_HOME '.*qf,home' holds a comma, .*\(checkpoints live under it\)"


def case_home_is_a_file(ctx):
    (ctx.tmp / "home-file").write_text("x")
    ctx.mp.setenv("QUANTFLOW_HOME", str(ctx.tmp / "home-file"))
    return good(ctx.tiny, ctx.tmp), r"QUANTFLOW_HOME '.*home-file' exists and is not a directory"


def case_home_under_a_file(ctx):
    (ctx.tmp / "home-file").write_text("x")
    ctx.mp.setenv("QUANTFLOW_HOME", str(ctx.tmp / "home-file" / "qf"))
    return good(ctx.tiny, ctx.tmp), r"QUANTFLOW_HOME '.*home-file/qf' cannot be created: .*home-file is a file"


def case_hub_unreachable_not_offline(ctx):
    """huggingface_hub retries a refused connection five times, 1 + 2 + 4 + 8 + 8 s apart: the retries run, their waits
    are skipped (its module's `time`, whose only use is that sleep)."""
    import types

    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    from servers import free_ports

    [port] = free_ports(1)
    dead = f"http://127.0.0.1:{port}"
    ctx.mp.setattr(_http, "time", types.SimpleNamespace(sleep=lambda seconds: None))
    ctx.mp.setattr(constants, "HF_HUB_OFFLINE", False)
    ctx.mp.setattr(constants, "ENDPOINT", dead)
    ctx.mp.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
    return good("qf-test-org/never-downloaded-model", ctx.tmp), \
        rf"cannot reach the Hub at {dead} \(\w+\) and the model is not in the local cache"


def case_s3_dead_endpoint_without_credentials(ctx):
    """boto3 refuses to sign without credentials before it sends anything: the dead endpoint is named too."""
    from servers import free_ports

    [port] = free_ports(1)
    store = {"kind": "s3", "uri": "s3://qf-b/x", "endpoint_url": f"http://127.0.0.1:{port}"}
    return good(ctx.tiny, ctx.tmp, stores=[store]), \
        rf"cannot reach bucket 'qf-b' at http://127.0.0.1:{port} \(EndpointConnectionError\): check endpoint_url and " \
        r"that the server runs; no AWS credentials were found either"


CASES = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.removeprefix("case_") for c in CASES])
def test_bad_input_is_named(case, tiny_model, embedded_shaped, tmp_path, monkeypatch):
    spec, expected = case(Ctx(tiny_model, tmp_path, monkeypatch, embedded_shaped))
    settings.cache_clear()
    found = problems_of(spec)
    expected = [expected] if isinstance(expected, str) else expected
    assert len(found) == len(expected), "exactly these problems, nothing else:\n" + "\n".join(found)
    for pattern, problem in zip(expected, found, strict=True):
        assert re.search(pattern, problem), problem
        assert "Traceback" not in problem


def test_s3_credentials_refused_and_bucket_missing(tiny_model, tmp_path, monkeypatch):
    """Against a real SeaweedFS: wrong secret -> refused; right secret, no bucket -> missing, unless create_bucket."""
    from servers import ensure_bucket, seaweed_s3

    with seaweed_s3(tmp_path / "weed", buckets=("qf-there",)) as s3:
        ensure_bucket(s3, "qf-there")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + os.urandom(8).hex())
        store = {"kind": "s3", "uri": "s3://qf-there/checkpoints", "endpoint_url": s3.endpoint_url}
        [p] = problems_of(good(tiny_model, tmp_path, stores=[store]))
        assert "S3 refused the credentials for bucket 'qf-there'" in p and "SignatureDoesNotMatch" in p

        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
        assert preflight(good(tiny_model, tmp_path, stores=[store]))
        missing = {**store, "uri": "s3://qf-not-there/checkpoints"}
        [p] = problems_of(good(tiny_model, tmp_path, stores=[missing]))
        assert "bucket 'qf-not-there'" in p and "does not exist (create it, or set create_bucket=True)" in p
        assert preflight(good(tiny_model, tmp_path, stores=[{**missing, "create_bucket": True}]))
        import boto3

        cli = boto3.client("s3", endpoint_url=s3.endpoint_url, aws_access_key_id=s3.access_key,
                           aws_secret_access_key=s3.secret_key, region_name="us-east-1")
        assert "qf-not-there" not in {b["Name"] for b in cli.list_buckets()["Buckets"]}, "preflight creates nothing"
        assert "Contents" not in cli.list_objects_v2(Bucket="qf-there")


def test_every_problem_reported_at_once(tiny_model, tmp_path, monkeypatch):
    spec = good(tiny_model, tmp_path, scheme="w8a8-int8",
                calibration__dataset=str(tmp_path / "missing.jsonl"), calibration__max_seq_length=8192,
                evaluation__suite=str(tmp_path / "smok.yaml"), evaluation__engine="vllm",
                stores=[{"kind": "hub", "uri": "qf-org/x"}, {"kind": "s3", "uri": "s3://qf-b/x", "endpoint_url": "http://127.0.0.1:9"}])
    monkeypatch.setenv("QUANTFLOW_EVAL_PYTHON", str(tmp_path / "nothing"))
    settings.cache_clear()
    found = problems_of(spec)
    expected = ["max_seq_length 8192 is above", "missing.jsonl': file not found", "smok.yaml",
                "evaluation environment not found", "HF_HUB_OFFLINE is set", "no Hugging Face token", "no AWS credentials"]
    for text in expected:
        assert any(text in p for p in found), (text, found)
    assert len(found) == len(expected), found


def test_spec_errors_from_a_dict_are_listed_together(tmp_path):
    found = problems_of({"scheme": "w8a8_int8", "variant_name": "a/../b", "calibration": {"num_samples": 0},
                         "evaluation": {"engine": "tensorrt"}})
    assert [p.split(":")[0] for p in found] == ["scheme", "calibration.num_samples", "evaluation.engine", "variant_name"]
    assert "did you mean 'w8a8-int8'" in found[0]


@pytest.mark.skipif(not os.environ.get("PREFECT_API_URL"), reason="needs the session's Prefect server")
def test_bad_spec_fails_in_seconds_before_any_work(tiny_model, data_root, tmp_path, monkeypatch):
    """Through the flow: PreflightError in seconds, no checkpoint folder, no oneshot, no task run."""
    import llmcompressor

    from flows import quantize_variant as qv
    from prefect_states import task_states

    calls = []
    monkeypatch.setattr(llmcompressor, "oneshot", lambda *a, **k: calls.append("oneshot"))
    monkeypatch.setattr(qv, "quantize", lambda *a, **k: calls.append("quantize"))
    checkpoints = data_root / "home" / "checkpoints"
    before = sorted(checkpoints.iterdir()) if checkpoints.exists() else []
    spec = VariantSpec.model_validate(good(tiny_model, tmp_path, calibration__column="text",
                                           evaluation__suite=str(tmp_path / "smok.yaml"), scheme="w4a16",
                                           variant_name="fast-fail"))
    start = time.time()
    state = qv.quantize_variant(spec, return_state=True)
    took = time.time() - start
    assert state.is_failed()
    with pytest.raises(PreflightError) as ei:
        state.result()
    assert len(ei.value.problems) == 2 and "'text' is not in" in str(ei.value) and "smok.yaml" in str(ei.value)
    assert took < 30, f"preflight took {took:.1f} s"
    assert calls == []
    assert (sorted(checkpoints.iterdir()) if checkpoints.exists() else []) == before, "no checkpoint folder"
    assert task_states(state.state_details.flow_run_id) == {}, "no task ran"


# --- remote names: user input cannot leave its prefix or namespace ---------------------------------------------

ESCAPES = ["../x", "../../etc/passwd", "/abs/path", "a/../../b", "..", ".", "a/b", "a\\b", "x y", "x?y", "x#y",
           "-lead", "trail.", "a..b", "a--b", "ü-name", "", "x" * 97, "name\n", "C:evil"]


@pytest.mark.parametrize("name", ESCAPES)
def test_variant_names_from_user_input_are_plain(name):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="variant_name"):
        VariantSpec(variant_name=name)


@pytest.mark.parametrize("name", ["tiny-llama-quantized.w8a8", "Llama-3.1-8B_W4A16", "a", "x" * 96])
def test_plain_names_stay_inside_every_store(name, tmp_path):
    """Accepted names map to one key segment under the S3 prefix, one repo in the Hub namespace, one folder."""
    from components.stores.hub import HubStore
    from components.stores.local import LocalStore
    from components.stores.s3 import S3Store

    spec = VariantSpec(variant_name=name)
    s3 = S3Store("qf-bucket", "team/checkpoints", endpoint_url="http://127.0.0.1:9")
    assert s3.uri(spec.variant_name) == f"s3://qf-bucket/team/checkpoints/{name}/"
    assert HubStore("qf-org").repo_id(spec.variant_name) == f"qf-org/{name}"
    root = tmp_path / "published"
    assert LocalStore(str(root))._dir(spec.variant_name) == (root / name).resolve()


@pytest.mark.parametrize("name", ["../x", "a/../../b", "/abs", "..", "a/b"])
def test_stores_refuse_escaping_names_even_without_the_spec(name, tmp_path):
    """Defence in depth: names reaching a store some other way are refused there too, before any request."""
    from components.stores.hub import HubStore
    from components.stores.local import LocalStore
    from components.stores.s3 import S3Store

    s3 = S3Store("qf-bucket", "team/checkpoints", endpoint_url="http://127.0.0.1:9")
    local = LocalStore(str(tmp_path / "published"))
    with pytest.raises(ValueError):
        HubStore("qf-org").repo_id(name)
    if name == "a/b":  # a sub-path stays under the prefix and inside the root
        assert s3.uri(name) == "s3://qf-bucket/team/checkpoints/a/b/"
        assert (tmp_path / "published").resolve() in local._dir(name).parents
        return
    with pytest.raises(ValueError):
        s3.uri(name)
    with pytest.raises(ValueError):
        local._dir(name)


def test_the_memory_plan_picks_the_placement(tiny_model, tmp_path):
    """On this machine (no GPU) the plan keeps everything on the CPU and says what it sized; the plan's choice
    reaches quantize through Plan.quantization (and its cache key)."""
    plan = preflight(good(tiny_model, tmp_path))
    assert plan.quantization.placement == "cpu" and plan.quantization.activation_offload == "cpu"
    assert plan.memory is not None and plan.memory.fits and plan.memory.weights_bytes > 0
    assert any(n.startswith("memory plan: weights ") for n in plan.notes), plan.notes
    forced = preflight(good(tiny_model, tmp_path, quantization__batch_size=4))
    assert forced.quantization.batch_size == 4


def test_the_base_evaluation_overlaps_quantization_only_when_asked_on_cpu(tiny_model, tmp_path):
    """No GPU here: auto keeps them in sequence; true overlaps them on the CPU, names no device, and says so."""
    plan = preflight(good(tiny_model, tmp_path))
    assert not plan.overlap.overlap and not any("overlap_base" in n for n in plan.notes)
    plan = preflight(good(tiny_model, tmp_path, evaluation__overlap_base=True))
    assert plan.overlap.overlap and plan.overlap.quantize_gpus == plan.overlap.eval_gpus == []
    assert "evaluation.overlap_base: the base evaluation runs while the variant is quantized, sharing the CPU" \
        in plan.notes, plan.notes



def test_the_suite_is_checked_against_the_lm_eval_that_runs_it(tiny_model, tmp_path, monkeypatch):
    """vLLM runs lm-eval in the evaluation environment: the suite's tasks are looked up in that lm-eval's task folder
    (here one that knows none of them), not in this environment's, which knows them."""
    from components.evaluation import suites

    tasks = tmp_path / "eval-env" / "lm_eval" / "tasks"
    tasks.mkdir(parents=True)
    python = tmp_path / "eval-env" / "bin" / "python"
    python.parent.mkdir()
    python.write_text(f"#!/bin/sh\necho {tasks}\n")  # answers the lookup of its lm_eval's folder
    python.chmod(0o755)
    monkeypatch.setenv("QUANTFLOW_EVAL_PYTHON", str(python))
    settings.cache_clear()
    found = problems_of(good(tiny_model, tmp_path, evaluation__engine="vllm", evaluation__suite="openllm-v1-2024"))
    assert any(p.startswith("evaluation.suite 'openllm-v1-2024': 'mmlu' (MMLU (5-shot)): unknown lm-eval task")
               for p in found), found
    assert suites.check("openllm-v1-2024") == Checked(suites.load("openllm-v1-2024"))  # this environment's lm-eval


_REFUSED = """
import json, sys
from components.preflight import PreflightError, preflight
try:
    preflight(json.loads(sys.argv[1]))
except PreflightError as e:
    print(json.dumps({"error": str(e), "imported": [m for m in sys.argv[2].split(",") if m in sys.modules]}))
"""


def test_a_missing_base_is_refused_without_importing_torch_transformers_or_llmcompressor(tmp_path):
    """The recipe against the model cannot be checked without a model: a refusal for a missing base reads the recipe
    and everything else without importing the heavy libraries (a fresh process: this one has them already). Where GPU
    device nodes exist, torch is asked whether CUDA works; on a machine without any, nothing of it is needed."""
    from components.memory_plan import gpu_possible

    root = Path(__file__).resolve().parents[1]
    spec = {"base": {"source": str(tmp_path / "no-such-model")}, "scheme": "w8a8-int8",
            "stores": [{"kind": "local", "uri": str(tmp_path / "published")}]}
    heavy = ("transformers", "llmcompressor", "compressed_tensors", *(() if gpu_possible() else ("torch",)))
    r = subprocess.run([sys.executable, "-c", _REFUSED, json.dumps(spec), ",".join(heavy)], cwd=root,
                       env={**os.environ, "PYTHONPATH": str(root), "QUANTFLOW_HOME": str(tmp_path / "home")},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr[-3000:]
    found = json.loads(r.stdout.strip().splitlines()[-1])
    assert found["imported"] == [], f"a refusal for a missing base imported {found['imported']}"
    assert "no such directory or file" in found["error"] and "preflight found 1 problem" in found["error"]
    assert "llm-compressor" in found["error"].splitlines()[-1]  # the one note: what waits for a readable base
