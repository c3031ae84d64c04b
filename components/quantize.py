"""Quantize a base model with llm-compressor `oneshot` and save the compressed checkpoint."""
from __future__ import annotations

import shutil
from pathlib import Path

from components.recipes import SchemeDef


def quantize(model_path: str, scheme: SchemeDef, calibration_path: str | None, out: Path,
             num_samples: int, max_seq_length: int) -> Path:
    """Run `oneshot` with the scheme's recipe; write the checkpoint (with recipe.yaml) to `out`.

    Writes into `<out>.partial` and renames at the end, so `out` only ever holds a whole checkpoint.
    """
    import torch
    from datasets import load_from_disk
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device_map = "auto" if torch.cuda.is_available() else None
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto", device_map=device_map)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dataset = load_from_disk(calibration_path) if calibration_path else None
    kwargs = dict(dataset=dataset, num_calibration_samples=num_samples, max_seq_length=max_seq_length) if dataset is not None else {}
    oneshot(model=model, recipe=scheme.recipe_yaml, **kwargs)

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, save_compressed=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out
