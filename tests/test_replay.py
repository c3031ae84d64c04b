"""What is published replays: the checkpoint's own recipe.yaml (also MLflow's `recipe` artifact), run again with
llm-compressor's oneshot on the same base and calibration set, makes the same checkpoint."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from components import calibration, recipes
from components.digests import digest_dir
from components.quantize import CPU, quantize
from components.specs import VariantSpec


def test_the_checkpoints_recipe_replays_to_the_same_checkpoint(tiny_model, tmp_path):
    import torch
    from datasets import load_from_disk
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.determinism import SEED

    spec = VariantSpec.model_validate({"base": {"source": str(tiny_model)}, "scheme": "w8a8-int8",
                                       "calibration": {"num_samples": 4, "max_seq_length": 32}})
    ds, description = calibration.build(spec.calibration, AutoTokenizer.from_pretrained(tiny_model))
    calib = calibration.save(ds, description, spec.calibration, tmp_path / "calibration")
    scheme = recipes.load("w8a8-int8")
    ckpt = quantize(str(tiny_model), scheme, calib.path, tmp_path / "ckpt", calib.num_samples, calib.max_seq_length, CPU)
    recipe = ckpt / "recipe.yaml"

    # the replay: plain llm-compressor on the published recipe file, as a reader of the checkpoint would run it
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype="auto")
    oneshot(model=model, recipe=str(recipe), dataset=load_from_disk(calib.path), num_calibration_samples=calib.num_samples,
            max_seq_length=calib.max_seq_length, batch_size=CPU.batch_size, sequential_offload_device=CPU.activation_offload)
    again = tmp_path / "replayed"
    model.save_pretrained(again, save_compressed=True)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(again)
    shutil.copyfile(recipe, again / "recipe.yaml")  # it publishes the recipe it ran, as the pipeline does
    assert digest_dir(Path(again)) == digest_dir(ckpt)
    # every pinned field kept: llm-compressor's own copy drops `actorder: null`, which 0.14 then resolves to static
    assert yaml.safe_load(recipe.read_text()) == scheme.recipe and "actorder: null" in recipe.read_text()
