"""Quantize a base model with llm-compressor `oneshot` and save the compressed checkpoint."""
from __future__ import annotations

from pathlib import Path

from components.recipes import SchemeDef


def quantize(model_path: str, scheme: SchemeDef, calibration_path: str | None, out: Path,
             num_samples: int, max_seq_length: int) -> Path:
    """Run `oneshot` with the scheme's recipe; write the checkpoint (with recipe.yaml) to `out`.

    `out` is a fresh, uniquely named temporary folder (`artifacts.workdir`): the caller holds the checkpoint's lock,
    then installs it whole under its final name with its stamp, so nobody ever sees half a checkpoint.
    """
    import torch
    from datasets import load_from_disk
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.determinism import make_deterministic

    make_deterministic()  # same base, recipe and calibration: same checkpoint digest
    device_map = "auto" if torch.cuda.is_available() else None
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto", device_map=device_map)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dataset = load_from_disk(calibration_path) if calibration_path else None
    kwargs = dict(dataset=dataset, num_calibration_samples=num_samples, max_seq_length=max_seq_length) if dataset is not None else {}
    oneshot(model=model, recipe=scheme.recipe_yaml, **kwargs)

    if out.exists():
        raise FileExistsError(f"{out} exists: quantize writes only into a fresh temporary folder")
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    return out
