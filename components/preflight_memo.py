"""Preflight's model-side facts, remembered by content, so that a rerun imports neither torch, transformers nor
llm-compressor.

Why: reading config.json with transformers, checking it has a causal-LM head, building the meta-device skeleton,
parsing the recipe with llm-compressor, matching it against the skeleton's modules (with the checkpoint-size estimate)
and counting the GPUs with torch cost 10-30 s on every run, nearly all of it importing those libraries, to learn the
same facts again (benchmarks/notes.md). Those facts depend only on what the checks read, so they are remembered under
a sha256 of exactly that (`key`):

- the bytes of the model's config.json (the one file AutoConfig reads from a model directory);
- the scheme: its recipe file's whole content, as `SchemeDef`;
- the source files of the modules that compute and use the facts (`CODE`);
- the installed libraries that read them (`LIBRARIES`), each by the sha256 of its distribution's RECORD file (a hash of
  every installed file: any content change changes it, a version string may not); an absent one is keyed as absent;
- this machine as torch would count its GPUs, read without torch (`machine_fingerprint`): the NVIDIA driver's version
  and GPU list (/proc/driver/nvidia), its MIG capabilities, the /dev/nvidia* nodes, the *_VISIBLE_DEVICES variables,
  and host RAM.

Kept (`ModelFacts`): the config as JSON, its parameter count (the skeleton's), the estimated compressed checkpoint
size, the number of visible GPUs, the smallest one's memory and the platform the engine checks see (cuda or cpu). A
memo is written only when the whole preflight found no problem, so a problem is always found afresh; it is written
whole (a temporary file, then os.replace) to `$QUANTFLOW_HOME/preflight/<key>.json`; one that cannot be read or parsed,
or holds another key, is a miss. What is cheap runs on every preflight: weight-file headers, tokenizer and
chat-template files, calibration rows, the suite, stores, tracking, free disk, and the memory plan from the remembered
config and GPUs. A GGUF file never converted before has no config.json: its facts are read afresh (that run converts
it; the next ones read the conversion's config.json).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from pydantic import BaseModel, ValidationError

from components.artifacts import write_memo
from components.digests import code_digest, digest_obj, library_identity
from components.settings import settings

VERSION = 1  # what a memo holds; bump when ModelFacts changes meaning
CODE = ("components.models", "components.recipes", "components.memory_plan", "components.preflight",
        "components.preflight_memo")
LIBRARIES = ("transformers", "torch", "llmcompressor", "compressed-tensors", "huggingface_hub")
VISIBLE = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "HIP_VISIBLE_DEVICES",
           "ROCR_VISIBLE_DEVICES")
NVIDIA = Path("/proc/driver/nvidia")


class ModelFacts(BaseModel):
    """What the model-side checks found for one key, all of them passed."""

    key: str
    config: dict  # config.json as transformers reads it (PretrainedConfig.to_json_string, use_diff=False)
    params: int  # parameters of the meta-device skeleton (tied weights once)
    checkpoint_bytes: int | None  # recipes.check_against_model's estimate of the compressed checkpoint
    gpus: int  # what torch counted (memory_plan.machine_now)
    gpu_bytes: float
    platform: str  # evaluation.engine.detect_platform(): cuda or cpu


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError as e:
        return f"unreadable: {e.strerror}"


def machine_fingerprint() -> dict:
    """What decides torch's GPU count and sizes here, read without torch."""
    import psutil

    gpus = {p.parent.name: _read(p) for p in sorted(NVIDIA.glob("gpus/*/information"))}
    caps = sorted(str(Path(d).relative_to(NVIDIA / "capabilities") / f) for d, _, files in
                  os.walk(NVIDIA / "capabilities") for f in files)
    try:
        dev = sorted(n for n in os.listdir("/dev") if n.startswith(("nvidia", "kfd", "dri")))
    except OSError:
        dev = []
    return {"driver": _read(NVIDIA / "version") if NVIDIA.exists() else None, "gpus": gpus, "mig": caps, "dev": dev,
            "env": {k: os.environ.get(k) for k in VISIBLE}, "host_bytes": psutil.virtual_memory().total}


def key(config_json: bytes, scheme) -> str:
    """The memo's key: everything the model-side checks read (module docstring)."""
    parts = {
        "version": VERSION,
        "config.json": hashlib.sha256(config_json).hexdigest(),
        "scheme": digest_obj(scheme.model_dump()),
        "code": code_digest(CODE),
        "libraries": {name: library_identity(name) for name in LIBRARIES},
        "machine": machine_fingerprint(),
    }
    return digest_obj(parts)


def _path(k: str) -> Path:
    return settings().home.expanduser().resolve() / "preflight" / f"{k}.json"


def load(k: str) -> ModelFacts | None:
    """The facts stored under `k`; None when there are none, or they cannot be read or parsed (a miss)."""
    try:
        facts = ModelFacts.model_validate_json(_path(k).read_bytes())
    except (OSError, ValueError, ValidationError):
        return None
    return facts if facts.key == k else None


def store(facts: ModelFacts) -> None:
    """Write the facts whole (temporary file, then rename); a memo that cannot be written is only a lost speed-up."""
    write_memo(_path(facts.key), facts.model_dump_json())


class Memo:
    """One preflight's use of the memo: `known` is handed to models.check, which calls it with the config.json bytes
    it read; a hit fills `facts`. `machine` is this machine for the memory plan (from the facts on a hit, else counted
    by torch); `remember` stores what a clean miss found."""

    def __init__(self, scheme):
        self.scheme = scheme
        self.key: str | None = None
        self.facts: ModelFacts | None = None
        self.gpus: tuple[int, float] | None = None

    def known(self, config_json: bytes) -> tuple[dict, int] | None:
        """(config, parameter count) checked before for exactly this config, scheme, code, libraries and machine."""
        try:
            self.key = key(config_json, self.scheme)
        except Exception:  # noqa: BLE001 - what cannot be keyed is checked afresh (and not remembered)
            return None
        self.facts = load(self.key)
        return (self.facts.config, self.facts.params) if self.facts else None

    def machine(self, disk: Path):
        from components import memory_plan as mp

        if self.facts is None:
            machine = mp.machine_now(disk)
            self.gpus = (machine.gpus, machine.gpu_bytes)
            return machine
        import psutil

        return mp.Machine(gpus=self.facts.gpus, gpu_bytes=self.facts.gpu_bytes, host_bytes=psutil.virtual_memory().total,
                          disk_free_bytes=shutil.disk_usage(disk).free, name="this machine")

    def platform(self) -> tuple[str | None, int | None]:
        """(platform, GPU count) for the engine checks: the remembered ones on a hit, else (None, None): ask torch."""
        return (self.facts.platform, self.facts.gpus) if self.facts is not None else (None, None)

    def remember(self, config: dict | None, params: int | None, checkpoint_bytes: int | None) -> None:
        """After a preflight that found no problem: store the facts of a miss (nothing when any is unknown)."""
        if self.facts is not None or self.key is None or config is None or params is None or self.gpus is None:
            return
        from components.evaluation import engine

        try:
            facts = ModelFacts(key=self.key, config=config, params=params, checkpoint_bytes=checkpoint_bytes,
                               gpus=self.gpus[0], gpu_bytes=self.gpus[1], platform=engine.detect_platform())
        except Exception:  # noqa: BLE001 - a fact that cannot be kept is found afresh next time, never guessed
            return
        store(facts)
