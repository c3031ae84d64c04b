"""Quantize a base model with llm-compressor `oneshot` and save the compressed checkpoint."""
from __future__ import annotations

from pathlib import Path

from components.memory_plan import HEADROOM, Settings
from components.recipes import SchemeDef

CPU = Settings(placement="cpu", activation_offload="cpu", pipeline=None, batch_size=1)


def quantize(model_path: str, scheme: SchemeDef, calibration_path: str | None, out: Path,
             num_samples: int, max_seq_length: int, how: Settings = CPU, gpus: list[int] | None = None) -> Path:
    """Run `oneshot` with the scheme's recipe; write the checkpoint (with recipe.yaml, the recipe as run) to `out`.

    `how` (the memory plan's choice, components/memory_plan.py): `gpu` loads the whole model onto the GPU(s);
    `sequential` and `cpu` load it into host RAM and let llm-compressor onload one layer at a time to the main device;
    calibration activations wait on `how.activation_offload` between layers. `gpus`: the GPUs it keeps to when the
    base evaluation runs beside it on the others (components/overlap.py; None: every visible GPU); one layer at a time
    already keeps to cuda:0 (and cuda:1), so only the whole model's device map needs telling.

    `out` is a fresh, uniquely named temporary folder (`artifacts.workdir`): the caller holds the checkpoint's lock,
    then installs it whole under its final name with its stamp, so nobody ever sees half a checkpoint.
    """
    import torch
    from datasets import load_from_disk
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.determinism import make_deterministic

    make_deterministic()  # same base, recipe and calibration: same checkpoint digest
    device_map = "auto" if how.placement == "gpu" and torch.cuda.is_available() else None
    # HEADROOM of each card, as the plan counted: a card filled to its total leaves no room for the CUDA context,
    # the allocator's fragmentation or the calibration workspace on cuda:0
    cards = gpus if gpus else range(torch.cuda.device_count())
    max_memory = {i: int(torch.cuda.get_device_properties(i).total_memory * HEADROOM) for i in cards} if device_map else None
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto", device_map=device_map, max_memory=max_memory)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dataset = load_from_disk(calibration_path) if calibration_path else None
    kwargs = dict(dataset=dataset, num_calibration_samples=num_samples, max_seq_length=max_seq_length,
                  batch_size=how.batch_size, sequential_offload_device=how.activation_offload) if dataset is not None else {}
    if how.pipeline:
        kwargs["pipeline"] = how.pipeline
    oneshot(model=model, recipe=scheme.recipe_yaml, **kwargs)

    if out.exists():
        raise FileExistsError(f"{out} exists: quantize writes only into a fresh temporary folder")
    save(model, tokenizer, out)
    # The recipe as run, in place of llm-compressor's copy: it drops fields set to their default (`actorder: null`),
    # and replayed on a version whose default moved that copy makes another checkpoint (actorder resolves to static).
    (out / "recipe.yaml").write_text(scheme.recipe_yaml)
    return out


def save(model, tokenizer, out: Path) -> None:
    """Write the compressed checkpoint and its tokenizer to `out`; a full disk says where and how much is free."""
    from components.artifacts import disk_named

    with disk_named(out, "the compressed checkpoint"):
        model.save_pretrained(out, save_compressed=True)
        tokenizer.save_pretrained(out)
