"""A deliberately damaged variant, the control that the gate must fail: the base model with its token embeddings
(SmolLM2 ties lm_head to them) rounded to 4 bits per row, symmetric, no groups, kept in bf16 so that any engine
loads it. Quantizing embeddings and lm_head that coarsely is what the shipped recipes avoid (`ignore: [lm_head]`)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

EMBEDDINGS = ("model.embed_tokens.weight", "lm_head.weight")


def round_rows(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-row rounding to 2**(bits-1) - 1 levels each side of 0 (fake quantization)."""
    levels = 2 ** (bits - 1) - 1
    x = w.float()
    scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / levels
    return (torch.round(x / scale).clamp(-levels, levels) * scale).to(w.dtype)


def damage_embeddings(src: Path, dst: Path, bits: int = 4) -> Path:
    """A copy of the checkpoint at `src` in `dst` whose embeddings (and an untied lm_head) are rounded to `bits`."""
    shutil.copytree(src, dst)
    touched = []
    for f in sorted(dst.glob("*.safetensors")):
        tensors = load_file(f)
        hit = [k for k in tensors if k in EMBEDDINGS]
        if hit:
            for k in hit:
                tensors[k] = round_rows(tensors[k], bits)
            with open(f, "rb") as fh:  # keep the header's metadata (format: pt)
                head = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
            save_file(tensors, f, metadata=head.get("__metadata__"))
            touched += hit
    if "model.embed_tokens.weight" not in touched:
        raise ValueError(f"no token embeddings in {src}")
    return dst
