"""Preflight: check a VariantSpec against everything it names, before any heavy work, and report every problem at once.

`preflight(spec)` reads only what is cheap to read: config.json (the model skeleton is built on the meta device, no
weights), tokenizer files, the first rows and the row count of a local calibration file, suite YAML, the evaluation
environment's path, one listing call per S3 store, the Hub token, the MLflow server's /health, free disk. It raises one
`PreflightError` listing every problem, each with what to change; nothing under QUANTFLOW_HOME is written.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import ValidationError

from components import recipes, stores
from components.calibration import FILE_BUILDERS
from components.evaluation import references, suites
from components.evaluation.command import EngineSettings
from components.evaluation.engine import batch_size, choose_engine, detect_platform
from components.evaluation.runner import EvalResult, suite_digest
from components.memory_plan import MemoryPlan, Settings
from components.models import gguf_path, model_name
from components.quantize import CPU
from components.recipes import SchemeDef
from components.settings import settings
from components.specs import (VariantSpec, check_variant_name, credentials_in_url, did_you_mean, strip_userinfo,
                              validation_problems)
from components.tracking import safe_uri

GiB = 1 << 30
MiB = 1 << 20


class PreflightError(ValueError):
    """Everything wrong with a spec, found before any heavy work; `problems` lists them one by one."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        n = len(self.problems)
        super().__init__(f"preflight found {n} problem{'s' if n != 1 else ''}, nothing was started:\n  - "
                         + "\n  - ".join(self.problems))


@dataclass
class Plan:
    """What the flow runs with, once preflight found nothing wrong."""

    scheme: SchemeDef
    suite: suites.Suite
    suite_digest: str
    engine: EngineSettings
    name: str  # the published name: variant_name, or <base name>-<scheme suffix>
    checkpoint_bytes: int | None = None  # estimated size of the compressed checkpoint
    notes: list[str] = field(default_factory=list)  # what could not be checked here (not errors)
    serving: bool = False  # measure serving speed (vLLM evaluates this scheme here and the spec asks for it)
    quantization: Settings = field(default_factory=lambda: CPU)  # where llm-compressor puts model and activations
    memory: MemoryPlan | None = None
    reference: EvalResult | None = None  # published baseline scores standing in for evaluating the base model


@dataclass
class _Base:
    """What preflight learned about the base model without loading its weights."""

    name: str
    dir: Path | None = None  # a local HF directory, when there is one already
    config: Any = None
    skeleton: Any = None  # the model on the meta device
    has_chat_template: bool | None = None
    weights_bytes: int | None = None  # on disk now (safetensors), None if unknown
    to_download_bytes: int = 0  # bytes the flow will write before quantizing (GGUF conversion, Hub download)


class _Checks:
    def __init__(self, spec: VariantSpec):
        self.spec = spec
        self.problems: list[str] = []
        self.notes: list[str] = []

    def problem(self, msg: str) -> None:
        self.problems.append(msg)

    def guard(self, what: str, fn: Callable, *args):
        """Run one check; an unexpected exception becomes a problem naming what could not be checked."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - a check that cannot run is itself a finding
            self.problem(f"{what}: {type(e).__name__}: {_first_line(e)}")
            return None

    def add(self, what: str, fn: Callable, *args) -> None:
        """Run a component's check and record the problems it returns."""
        for problem in self.guard(what, fn, *args) or []:
            self.problem(problem)


def _first_line(e: BaseException, limit: int = 400) -> str:
    """The gist of an exception: a pydantic error's every field and message, else the first line."""
    if isinstance(e, ValidationError):
        return f"{e.title}: " + "; ".join(validation_problems(e))[:limit]
    text = str(e).strip().splitlines()
    return text[0][:limit] if text else ""


# --- the base model ---------------------------------------------------------------------------

def _looks_like_path(source: str) -> bool:
    return (source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source
            or source.endswith((".gguf", ".safetensors", ".json")))


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


def _base_model(c: _Checks) -> _Base | None:
    source, revision = c.spec.base.source, c.spec.base.revision
    try:
        gguf = gguf_path(source)
    except FileNotFoundError as e:
        c.problem(f"base.source {source!r}: {e}")
        return None
    if gguf is not None:
        return _gguf_base(c, source, gguf)
    local = Path(source).expanduser()
    if local.exists() or _looks_like_path(source):
        return _local_base(c, source, local)
    return _hub_base(c, source, revision)


def _gguf_base(c: _Checks, source: str, gguf: Path) -> _Base | None:
    if not gguf.is_file():
        c.problem(f"base.source {source!r}: GGUF file not found: {gguf}")
        return None
    base = _Base(name=model_name(source))
    # A conversion made by an earlier run (named <model>-<sha256[:12]>): its config is this model's. Hashing the GGUF
    # to pick the exact one would cost seconds per GB on every run; the flow's cached resolve_base does not.
    converted = max((p.parent for p in (settings().home.resolve() / "models").glob(f"{model_name(source)}-*/config.json")),
                    key=lambda d: d.stat().st_mtime, default=None)
    if converted is not None:
        base.dir = converted
        _read_config(c, base, converted)
        base.has_chat_template = _chat_template_in_dir(converted)
        base.weights_bytes = _dir_bytes(converted)
        return base
    from transformers import AutoConfig

    try:
        base.config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:  # noqa: BLE001
        c.problem(f"base.source {source!r}: transformers cannot read this GGUF file's metadata "
                  f"({type(e).__name__}: {_first_line(e)})")
        return None
    if c.spec.calibration.apply_chat_template:
        try:
            import gguf as gguf_lib

            base.has_chat_template = "tokenizer.chat_template" in gguf_lib.GGUFReader(str(gguf)).fields
        except Exception:  # noqa: BLE001 - unknown: let the flow find out
            base.has_chat_template = None
    _check_causal_lm(c, base, source)
    return base


def _local_base(c: _Checks, source: str, local: Path) -> _Base | None:
    if not local.exists():
        c.problem(f"base.source {source!r}: no such directory or file (give a local Hugging Face model directory, "
                  "a GGUF file, pkg:<package>/<file.gguf>, or a Hub id such as org/name)")
        return None
    if not local.is_dir():
        c.problem(f"base.source {source!r}: a file, not a model directory (only .gguf files are accepted as files)")
        return None
    if not os.access(local, os.R_OK | os.X_OK):
        c.problem(f"base.source {source!r}: the directory is not readable")
        return None
    base = _Base(name=model_name(str(local.resolve())), dir=local.resolve())
    if not (local / "config.json").is_file():
        c.problem(f"base.source {source!r}: no config.json: not a Hugging Face model directory")
        return None
    if not any(local.glob("*.safetensors")) and not any(local.glob("*.bin")):
        c.problem(f"base.source {source!r}: no weights (*.safetensors or *.bin) next to config.json")
    _weight_files(c, source, local)
    _path_chars(c, f"base.source {source!r}", local.resolve())
    base.weights_bytes = _dir_bytes(local)
    base.has_chat_template = _chat_template_in_dir(local)
    if not _read_config(c, base, local):
        return None
    return base


def _hub_base(c: _Checks, source: str, revision: str | None) -> _Base | None:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HFValidationError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError as e:
        c.problem(f"base.source {source!r}: neither a local path nor a valid Hub repo id ({_first_line(e)})")
        return None
    offline = constants.is_offline_mode()
    try:
        config_path = Path(hf_hub_download(source, "config.json", revision=revision, local_files_only=offline))
    except LocalEntryNotFoundError as e:
        if offline:
            c.problem(f"base.source {source!r}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set: download "
                      "it once online (or unset HF_HUB_OFFLINE), or give a local directory")
        else:  # online, yet neither the Hub nor the cache had it: the Hub did not answer
            cause = e.__cause__ or e.__context__
            c.problem(f"base.source {source!r}: cannot reach the Hub at {constants.ENDPOINT} "
                      f"({type(cause).__name__ if cause else 'no answer'}) and the model is not in the local cache: "
                      "check the network or proxy (HF_ENDPOINT), or give a local directory")
        return None
    except GatedRepoError:
        c.problem(f"base.source {source!r}: a gated repo: accept its license on the Hub and set HF_TOKEN")
        return None
    except RepositoryNotFoundError:
        c.problem(f"base.source {source!r}: no such model on the Hub (or it is private: set HF_TOKEN)")
        return None
    except RevisionNotFoundError:
        c.problem(f"base.revision {revision!r}: no such revision of {source}")
        return None
    except EntryNotFoundError:
        c.problem(f"base.source {source!r}: the repo has no config.json: not a transformers model")
        return None
    except Exception as e:  # noqa: BLE001
        c.problem(f"base.source {source!r}: cannot fetch config.json from the Hub ({type(e).__name__}: {_first_line(e)})")
        return None
    snapshot = config_path.parent
    _weight_files(c, source, snapshot)
    _path_chars(c, f"base.source {source!r} (Hugging Face cache)", snapshot)
    base = _Base(name=model_name(source), dir=None)
    if not _read_config(c, base, snapshot):
        return None
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


def _weight_files(c: _Checks, source: str, d: Path) -> None:
    """Each *.safetensors file against its own header: a truncated or foreign file is named here, not deep inside
    quantization (reads 8 bytes and the JSON header of each file, no tensor data)."""
    for f in sorted(d.glob("*.safetensors")):
        problem = safetensors_problem(f)
        if problem:
            c.problem(f"base.source {source!r}: weight file {f.name} {problem}: download or copy it again")


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's framing (header length, JSON header, data size), or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                return f"is {size} bytes: too short for a safetensors header"
            n = int.from_bytes(raw, "little")
            if n > min(size - 8, 100 * MiB):
                return f"declares a {n}-byte header but the file is {size} bytes: truncated or not safetensors"
            header = json.loads(f.read(n))
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    except (ValueError, UnicodeDecodeError):
        return "has no valid JSON header: not a safetensors file"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
            and "data_offsets" in t]
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        return (f"is {size} bytes but its header describes {expected}: "
                + ("truncated" if size < expected else "trailing bytes"))
    return None


# lm_eval splits --model_args on ',': a checkpoint path holding one reaches lm_eval as two broken arguments.
UNSAFE_PATH_CHARS = {",": "a comma", "\n": "a newline", "\r": "a carriage return"}


def _path_chars(c: _Checks, what: str, path: Path) -> None:
    problem = path_chars_problem(path)
    if problem:
        c.problem(f"{what}: path {str(path)!r} {problem}")


def path_chars_problem(path: Path) -> str | None:
    found = [name for ch, name in UNSAFE_PATH_CHARS.items() if ch in str(path)]
    if not found:
        return None
    return (f"holds {' and '.join(found)}, which lm_eval's --model_args (pretrained=<path>,...) cannot carry: "
            "move or link it to a path without one")


def home_problems() -> list[str]:
    """QUANTFLOW_HOME usable: a directory (or creatable as one), writable, with a path lm_eval can be given."""
    home = settings().home.expanduser()
    what = f"QUANTFLOW_HOME {str(home)!r}"
    try:
        resolved = home.resolve()
    except OSError as e:
        return [f"{what}: cannot be resolved ({e.strerror}): set QUANTFLOW_HOME to a writable directory"]
    problems = []
    existing = _existing(resolved)
    if existing == resolved and not resolved.is_dir():
        problems.append(f"{what} exists and is not a directory: set QUANTFLOW_HOME to a directory")
    elif not existing.is_dir():
        problems.append(f"{what} cannot be created: {existing} is a file: set QUANTFLOW_HOME to a directory")
    elif not os.access(existing, os.W_OK | os.X_OK):
        problems.append(f"{what}: {existing} is not writable by this user: set QUANTFLOW_HOME to a writable "
                        "directory, or fix its permissions")
    chars = path_chars_problem(resolved)
    if chars:
        problems.append(f"{what} {chars} (checkpoints live under it)")
    return problems


def prefect_api_problem(url: str) -> str | None:
    """Whether the Prefect API at `url` answers /health (one line naming it and the fix), before a run starts."""
    try:
        with urllib.request.urlopen(safe_uri(url).rstrip("/") + "/health", timeout=5):
            return None
    except urllib.error.HTTPError as e:
        if e.code < 500:
            return None  # it answers; auth or a proxy in front of /health is the API's business
        reason = f"HTTP {e.code}"
    except Exception as e:  # noqa: BLE001
        reason = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
    return (f"Prefect API {safe_uri(url)} (PREFECT_API_URL) does not answer ({reason}): start it (`quantflow server "
            "up`), or unset PREFECT_API_URL to run with a temporary local server")


def _read_config(c: _Checks, base: _Base, d: Path) -> bool:
    from transformers import AutoConfig

    try:
        json.loads((d / "config.json").read_text())
    except (ValueError, OSError) as e:
        c.problem(f"base.source {c.spec.base.source!r}: config.json is unreadable ({type(e).__name__}: {_first_line(e)})")
        return False
    try:
        base.config = AutoConfig.from_pretrained(d)
    except Exception as e:  # noqa: BLE001
        c.problem(f"base.source {c.spec.base.source!r}: transformers cannot read its config.json "
                  f"({type(e).__name__}: {_first_line(e)})")
        return False
    return _check_causal_lm(c, base, c.spec.base.source)


def _check_causal_lm(c: _Checks, base: _Base, source: str) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = base.config
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        c.problem(f"base.source {source!r}: model type {getattr(config, 'model_type', '?')!r} has no causal-LM head "
                  "in transformers (AutoModelForCausalLM cannot load it): quantflow quantizes text-generation models")
        return False
    causal = {n for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for n in ([v] if isinstance(v, str) else v)}
    archs = list(getattr(config, "architectures", None) or [])
    if archs and not any(a in causal or a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        c.problem(f"base.source {source!r}: its architectures {archs} have no causal-LM head (a "
                  "sequence-classification or encoder checkpoint?): give the text-generation checkpoint")
        return False
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            base.skeleton = AutoModelForCausalLM.from_config(config)
    except Exception as e:  # noqa: BLE001
        c.problem(f"base.source {source!r}: AutoModelForCausalLM cannot build this model from its config "
                  f"({type(e).__name__}: {_first_line(e)})")
        return False
    return True


def _max_positions(config) -> int | None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


# --- the scheme's recipe against the model -----------------------------------------------------

def _scheme(c: _Checks) -> SchemeDef | None:
    name = c.spec.scheme.value
    path = recipes.RECIPES / f"{name}.yaml"
    if not path.is_file():
        c.problem(f"scheme {name!r}: no recipe file {path.name} in {recipes.RECIPES}"
                  f"{did_you_mean(name, recipes.names())} (schemes: {', '.join(recipes.names())})")
        return None
    import yaml

    try:
        scheme = recipes.load(name)
    except yaml.YAMLError as e:
        c.problem(f"scheme {name!r}: {path} is not valid YAML ({_first_line(e)})")
        return None
    except ValidationError as e:
        c.problem(f"scheme {name!r}: {path} lacks or misstates scheme fields: "
                  + "; ".join(validation_problems(e)))
        return None
    return scheme


def _modifiers(c: _Checks, scheme: SchemeDef) -> list | None:
    try:
        from llmcompressor.recipe import Recipe

        recipe = Recipe.create_instance(scheme.recipe_yaml)
    except Exception as e:  # noqa: BLE001
        c.problem(f"scheme {scheme.name!r}: its recipe is not a valid llm-compressor recipe "
                  f"({type(e).__name__}: {_first_line(e)}): fix `recipe:` in components/recipes/{scheme.name}.yaml")
        return None
    if not recipe.modifiers:
        c.problem(f"scheme {scheme.name!r}: its recipe parses to no llm-compressor modifier: `recipe:` in "
                  f"components/recipes/{scheme.name}.yaml needs a stage with e.g. QuantizationModifier or GPTQModifier")
        return None
    return list(recipe.modifiers)


def _patterns(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _recipe_vs_model(c: _Checks, scheme: SchemeDef, modifiers: list, base: _Base) -> int | None:
    """Targets and ignores that match nothing, group sizes that do not divide a layer; returns the checkpoint estimate."""
    import torch
    from compressed_tensors.utils.match import _match_class, is_match, match_name

    model = base.skeleton
    modules = [(n, m) for n, m in model.named_modules() if n]
    linears = [(n, m) for n, m in modules if isinstance(m, torch.nn.Linear)]
    example = linears[0][0] if linears else "?"

    def matches(pattern: str) -> bool:
        return any(match_name(n, pattern) or _match_class(m, pattern) for n, m in modules)

    quantized: dict[str, int] = {}  # Linear name -> weight bits
    for mod in modifiers:
        kind = type(mod).__name__
        try:
            config = mod.resolve_quantization_config() if hasattr(mod, "resolve_quantization_config") else None
        except Exception as e:  # noqa: BLE001
            c.problem(f"scheme {scheme.name!r} ({kind}): its quantization settings do not resolve "
                      f"({type(e).__name__}: {_first_line(e)})")
            continue
        targets = _patterns(getattr(mod, "targets", None))
        ignore = _patterns(getattr(mod, "ignore", None))
        groups = list(config.config_groups.items()) if config is not None else []
        for _, g in groups:
            targets += [t for t in _patterns(g.targets) if t not in targets]
        if config is not None:
            ignore += [t for t in _patterns(config.ignore) if t not in ignore]
        for t in targets:
            if not matches(t):
                c.problem(f"scheme {scheme.name!r} ({kind}): target {t!r} matches no module of {base.name} "
                          f"(plain names match a class such as 'Linear' or a full module name such as {example!r}; "
                          "prefix 're:' for a regex)")
        for t in ignore:
            if not matches(t):
                c.problem(f"scheme {scheme.name!r} ({kind}): ignore entry {t!r} matches no module of {base.name} "
                          f"(plain names are full module names such as 'lm_head' or {example!r}, or class names; "
                          "prefix 're:' for a regex)")
        for _, g in groups:
            w = g.weights
            if w is None:
                continue
            bad = []
            for n, m in linears:
                if not is_match(n, m, g.targets, config.ignore or []):
                    continue
                quantized[n] = w.num_bits
                size = getattr(w, "group_size", None)
                if size and m.in_features % size:
                    bad.append((n, m.in_features))
            if bad:
                n0, cols = bad[0]
                c.problem(f"scheme {scheme.name!r}: group size {w.group_size} does not divide the input width of "
                          f"{len(bad)} Linear layer(s) of {base.name} (e.g. {n0}: {cols} columns, {cols} % "
                          f"{w.group_size} = {cols % w.group_size}): choose a scheme with per-channel weights "
                          "(w8a8-int8, fp8-dynamic), or a model whose layer widths are multiples of "
                          f"{w.group_size}")
    return _checkpoint_bytes(model, quantized, base)


def _checkpoint_bytes(model, quantized: dict[str, int], base: _Base) -> int:
    dtype = getattr(base.config, "dtype", None) or getattr(base.config, "torch_dtype", None)
    width = {"float32": 4, "torch.float32": 4}.get(str(dtype), 2)
    total = 0
    seen = set()
    for n, p in model.named_parameters(remove_duplicate=True):
        if id(p) in seen:
            continue
        seen.add(id(p))
        owner = n.rsplit(".", 1)[0]
        bits = quantized.get(owner) if n.endswith("weight") else None
        total += p.numel() * bits // 8 if bits else p.numel() * width
    return int(total * 1.02) + MiB  # scales, zero points, tokenizer, config


# --- calibration data ---------------------------------------------------------------------------

def _calibration(c: _Checks, base: _Base | None) -> None:
    spec = c.spec.calibration
    if base is not None and base.config is not None:
        limit = _max_positions(base.config)
        if limit and spec.max_seq_length > limit:
            c.problem(f"calibration.max_seq_length {spec.max_seq_length} is above {base.name}'s "
                      f"max_position_embeddings {limit}: set it to {limit} or less")
    if spec.source == "random":
        return
    local = spec.dataset_path
    if local.is_file():
        _local_dataset(c, local, base)
    elif local.is_dir():
        c.guard(f"calibration.dataset {spec.dataset!r}", _dataset_dir, c, local, base)
    elif _looks_like_path(spec.dataset) or Path(spec.dataset).suffix in FILE_BUILDERS:
        c.problem(f"calibration.dataset {spec.dataset!r}: file not found")
    else:
        _hub_dataset(c, spec.dataset)


def _hub_dataset(c: _Checks, dataset: str) -> None:
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(dataset)
    except HFValidationError as e:
        c.problem(f"calibration.dataset {dataset!r}: neither a local file/directory nor a Hub dataset id ({_first_line(e)})")
        return
    if constants.is_offline_mode() or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        hub_cache = Path(constants.HF_HUB_CACHE) / f"datasets--{dataset.replace('/', '--')}"
        ds_cache = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")
        if not hub_cache.is_dir() and not any(ds_cache.glob(f"{dataset.replace('/', '___')}*")):
            c.problem(f"calibration.dataset {dataset!r}: not in the local cache and offline mode is on "
                      "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): download it once online, or give a local file")
        else:
            c.notes.append(f"calibration.dataset {dataset!r}: Hub dataset served from the cache; rows and columns are "
                           "checked when it is loaded")
        return
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        HfApi().dataset_info(dataset)
    except GatedRepoError:
        c.problem(f"calibration.dataset {dataset!r}: a gated dataset: accept its terms on the Hub and set HF_TOKEN")
        return
    except RepositoryNotFoundError:
        c.problem(f"calibration.dataset {dataset!r}: no such dataset on the Hub (or it is private: set HF_TOKEN)")
        return
    except Exception as e:  # noqa: BLE001
        c.problem(f"calibration.dataset {dataset!r}: cannot reach the Hub at {constants.ENDPOINT} ({type(e).__name__}): "
                  "check the network or proxy (HF_ENDPOINT), or set HF_HUB_OFFLINE=1 with the dataset cached, or give "
                  "a local file")
        return
    c.notes.append(f"calibration.dataset {dataset!r}: Hub dataset found; rows and columns are checked when it is loaded")


def _rows(path: Path) -> tuple[list[str], Iterator[tuple[int, Any]]]:
    """(columns, every (row number, row)) of a local json/jsonl/csv/parquet file, read as a stream where the format
    allows (JSON lines, parquet batches, csv), numbered as a person finds them (line for JSON lines, else from 1)."""
    suffix = path.suffix
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)

        def batches():
            n = 0
            for batch in pf.iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    n += 1
                    yield n, row
        return list(pf.schema_arrow.names), batches()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            columns = next(csv.reader(f), [])

        def lines():
            with open(path, newline="", encoding="utf-8") as f:
                yield from enumerate(csv.DictReader(f), 1)
        return columns, lines()
    with open(path, encoding="utf-8") as f:
        head = f.read(1 << 16).lstrip()
    if head.startswith("["):  # one JSON array of rows
        rows = json.loads(path.read_text(encoding="utf-8"))
        first = rows[0] if rows else {}
        return (list(first) if isinstance(first, dict) else []), enumerate(rows, 1)
    if suffix == ".json" and head.startswith("{"):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            doc = None  # JSON lines in a .json file
        if isinstance(doc, dict):
            if doc and all(isinstance(v, list) for v in doc.values()):  # columns
                n = len(next(iter(doc.values())))
                return list(doc), ((i + 1, {k: v[i] if i < len(v) else None for k, v in doc.items()}) for i in range(n))
            return list(doc), iter([(1, doc)])
    first = None
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                first = _json_line(i, line)
                break

    def json_lines():
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    yield i, _json_line(i, line)
    return (list(first) if isinstance(first, dict) else []), json_lines()


def _json_line(i: int, line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError as e:
        raise ValueError(f"line {i} is not JSON ({e})") from None


def _local_dataset(c: _Checks, path: Path, base: _Base | None) -> None:
    spec = c.spec.calibration
    if path.suffix not in FILE_BUILDERS:
        c.problem(f"calibration.dataset {spec.dataset!r}: unsupported file type {path.suffix!r} "
                  f"(use {', '.join(FILE_BUILDERS)})")
        return
    unit = "line" if path.suffix in (".jsonl", ".json") else "row"
    try:
        columns, rows = _rows(path)
        _rows_columns(c, columns, rows, base, unit)
    except Exception as e:  # noqa: BLE001
        c.problem(f"calibration.dataset {spec.dataset!r}: cannot be read as {path.suffix} "
                  f"({type(e).__name__}: {_first_line(e)})")


def _dataset_dir(c: _Checks, path: Path, base: _Base | None) -> None:
    from components.calibration import load_raw

    ds = load_raw(c.spec.calibration)
    _rows_columns(c, list(ds.column_names), enumerate(ds, 1), base, "row")


def _row_problem(value: Any, chat: bool) -> str | None:
    """What is wrong with one calibration value for the way it is used (None: nothing)."""
    if not chat:
        return None if isinstance(value, str) and value.strip() else f"text is {_kind(value)}, not a non-empty string"
    if not isinstance(value, list) or not value:
        return f"messages are {_kind(value)}, not a non-empty list of {{role, content}}"
    for j, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), (str, list)):
            return f"message {j} is {_kind(m) if not isinstance(m, dict) else 'missing a string role or content'}"
    return None


def _kind(value: Any) -> str:
    return "missing (null)" if value is None else "empty" if value in ("", [], {}) else f"a {type(value).__name__}"


def _rows_columns(c: _Checks, columns: list[str], rows: Iterator[tuple[int, Any]], base: _Base | None,
                  unit: str) -> None:
    """Count every row and check each one's value against how it is used; the first few bad rows are named."""
    spec = c.spec.calibration
    if spec.column not in columns:
        c.problem(f"calibration.column {spec.column!r} is not in {spec.dataset!r}"
                  f"{did_you_mean(spec.column, columns)} (columns: {', '.join(columns) or 'none'})")
        return
    n, first, bad, shown = 0, None, 0, []
    for i, row in rows:
        n += 1
        value = row.get(spec.column) if isinstance(row, dict) else None
        first = value if n == 1 else first
        problem = _row_problem(value, spec.apply_chat_template) if isinstance(row, dict) else f"{_kind(row)}, not an object"
        if problem:
            bad += 1
            if len(shown) < 3:
                shown.append(f"{unit} {i}: {problem}")
    if n < spec.num_samples:
        c.problem(f"calibration.dataset {spec.dataset!r} has {n} rows, calibration.num_samples is {spec.num_samples}: "
                  f"lower num_samples to {n} or less, or use a larger dataset")
    if spec.apply_chat_template:
        if isinstance(first, str):
            c.problem(f"calibration.column {spec.column!r} holds plain text, not chat messages: set "
                      "calibration.apply_chat_template: false, or choose a column of messages")
            return
        if base is not None and base.has_chat_template is False:
            c.problem(f"calibration.apply_chat_template is on but {base.name}'s tokenizer has no chat template: set "
                      "it to false and choose a text column, or use a model (or tokenizer) with a chat template")
    elif isinstance(first, list):
        c.problem(f"calibration.column {spec.column!r} holds chat messages, not text: set "
                  "calibration.apply_chat_template: true, or choose a text column")
        return
    if bad:
        c.problem(f"calibration.dataset {spec.dataset!r}: {bad} row{'s' if bad != 1 else ''} of column {spec.column!r} "
                  f"cannot be used ({'; '.join(shown)}{'; ...' if bad > len(shown) else ''}): fix or drop "
                  f"{'them' if bad != 1 else 'it'}")


# --- evaluation ---------------------------------------------------------------------------------

def _suite(c: _Checks) -> suites.Suite | None:
    name = c.spec.evaluation.suite
    try:
        suite = suites.load(name)
    except ValueError as e:
        if isinstance(e, ValidationError):
            c.problem(f"evaluation.suite {name!r}: not a valid suite file: " + "; ".join(validation_problems(e)))
        else:
            c.problem(f"evaluation.suite {name!r}: no such suite{did_you_mean(name, suites.names())} (suites: "
                      f"{', '.join(suites.names())}; or give the path of a suite YAML file)")
        return None
    except Exception as e:  # noqa: BLE001 - YAML errors and unreadable files
        c.problem(f"evaluation.suite {name!r}: cannot be read ({type(e).__name__}: {_first_line(e)})")
        return None
    found = suites.problems(suite)
    for problem in found:
        c.problem(f"evaluation.suite {suite.name!r}: {problem}")
    if found:
        return None
    if any(t.scorer for t in suite.tasks):
        from components.evaluation import humaneval, sandbox

        try:
            sandbox.require_opt_in()
        except sandbox.CodeExecutionNotAllowed as e:
            c.problem(f"evaluation.suite {suite.name!r}: {e}")
        for problem in humaneval.problems(t.task for t in suite.tasks):
            c.problem(f"evaluation.suite {suite.name!r}: {problem}")
    return suite


def _engine(c: _Checks, scheme: SchemeDef | None, suite: suites.Suite | None, base: _Base | None) -> EngineSettings | None:
    ev = c.spec.evaluation
    platform = detect_platform()
    if ev.require_gpu and platform != "cuda":
        c.problem("evaluation.require_gpu is set but no CUDA GPU is visible here (torch.cuda.is_available() is False): "
                  "run on a GPU work pool, or unset require_gpu to run on CPU")
    if platform == "cuda":
        import torch

        if ev.tensor_parallel_size > torch.cuda.device_count():
            c.problem(f"evaluation.tensor_parallel_size {ev.tensor_parallel_size} is more than the "
                      f"{torch.cuda.device_count()} GPU(s) visible here")
    if scheme is None:
        return None
    try:
        engine_name = choose_engine(ev.engine.value, scheme, platform)
    except ValueError as e:
        c.problem(f"evaluation.engine: {e}")
        return None
    if engine_name == "vllm":
        python = settings().eval_python
        if not Path(python).exists():
            c.problem(f"evaluation.engine: vLLM evaluates this scheme here but its environment is missing: no "
                      f"{python} (run `make setup`, set QUANTFLOW_EVAL_PYTHON, or use evaluation.engine: hf)")
        limit = _max_positions(base.config) if base is not None and base.config is not None else None
        if suite is not None and limit:
            longest = max([t.max_model_len or suite.max_model_len for t in suite.tasks])
            if longest > limit:
                c.problem(f"evaluation.suite {suite.name!r}: vLLM would run with max_model_len {longest}, above "
                          f"{base.name}'s max_position_embeddings {limit} (vLLM refuses it): use engine hf or a suite "
                          f"with max_model_len <= {limit}")
    return EngineSettings(engine=engine_name, platform=platform, tensor_parallel_size=ev.tensor_parallel_size,
                          batch_size=batch_size(ev.batch_size, engine_name, platform), limit=ev.limit, seed=ev.seed,
                          gpu_memory_utilization=ev.gpu_memory_utilization if engine_name == "vllm" else None)


def _reference(c: _Checks, suite: suites.Suite | None, engine: EngineSettings | None, base: _Base | None) -> EvalResult | None:
    name = c.spec.evaluation.reference_baseline
    if not name or suite is None or engine is None:
        return None
    try:
        ref = references.load(name)
    except ValueError as e:
        c.problem(f"evaluation.reference_baseline: {e}")
        return None
    found = references.problems(ref, suite, base.name if base is not None else None)
    for p in found:
        c.problem(f"evaluation.reference_baseline {name!r}: {p}")
    if found:
        return None
    c.notes.append(f"baseline: published scores ({ref.source}) stand in for evaluating {ref.model}")
    return references.as_eval(ref, suite, engine)


def _serving(c: _Checks, engine: EngineSettings | None, base: _Base | None) -> bool:
    """The serving benchmark's prompt file and length; whether it runs (vLLM only)."""
    sv = c.spec.evaluation.serving
    if not sv.enabled or engine is None:
        return False
    if engine.engine != "vllm":
        c.notes.append(f"evaluation.serving: not measured: this variant evaluates on {engine.engine} and serving speed "
                       "is measured with vLLM")
        return False
    path = sv.prompts_path
    if not path.is_file():
        c.problem(f"evaluation.serving.prompts: no file {path}")
        return False
    rows = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    try:
        bad = [i + 1 for i, line in enumerate(rows) if not isinstance(json.loads(line).get("prompt"), str)]
    except (ValueError, AttributeError) as e:
        c.problem(f"evaluation.serving.prompts: {path} is not JSONL (one JSON object a line): {_first_line(e)}")
        return False
    if not rows or bad:
        c.problem(f"evaluation.serving.prompts: {path} needs a string `prompt` on every line"
                  + (f" (missing on lines {bad[:5]})" if bad else " (the file is empty)"))
        return False
    limit = _max_positions(base.config) if base is not None and base.config is not None else None
    if limit and sv.max_model_len > limit:
        c.problem(f"evaluation.serving.max_model_len {sv.max_model_len} is above {base.name}'s "
                  f"max_position_embeddings {limit} (vLLM refuses it)")
        return False
    return True


def _memory(c: _Checks, scheme: SchemeDef, base: _Base) -> tuple[MemoryPlan | None, Settings]:
    """The memory plan on this machine: refuse with the numbers when nothing fits, else the placement to use."""
    from components import memory_plan as mp

    q = c.spec.quantization
    try:
        shape = mp.shape_from_config(base.config.to_dict())
    except (KeyError, TypeError, ValueError) as e:
        c.notes.append(f"quantization: no memory plan for {base.name} (its config has no {e}): llm-compressor's "
                       "defaults unless the spec says otherwise")
        return None, mp.settings_for(q, None, mp.machine_now(Path.cwd()))
    cal = c.spec.calibration if scheme.needs_calibration else None
    calib = mp.Calibration(num_samples=cal.num_samples if cal else 0, seq_len=cal.max_seq_length if cal else 0,
                           batch_size=q.batch_size)
    # free disk is preflight's own check (_disk), against every copy the run writes
    machine = mp.machine_now(Path.cwd()).model_copy(update={"disk_free_bytes": float("inf")})
    memory = mp.plan(shape, calib, mp.quantization_of(scheme), machine)
    for problem in memory.problems:
        c.problem(f"quantization: {problem}")
    if q.placement in ("gpu", "sequential") and machine.gpus == 0:
        c.problem(f"quantization.placement {q.placement!r}: no CUDA GPU is visible: use auto or cpu")
    elif q.placement == "gpu" and memory.placement not in ("gpu", None):
        c.problem(f"quantization.placement 'gpu': the whole model does not fit on {machine.gpus} GPU(s) of "
                  f"{machine.gpu_bytes / 1e9:.1f} GB ({'; '.join(memory.lines()[:1])}): use auto or sequential")
    c.notes.append("memory plan: " + "; ".join(memory.lines()))
    return memory, mp.settings_for(q, memory, machine)


# --- stores, tracking, disk ---------------------------------------------------------------------

def _tracking(c: _Checks) -> None:
    uri = settings().tracking_uri
    if credentials_in_url(uri):
        c.problem(f"QUANTFLOW_MLFLOW_TRACKING_URI {strip_userinfo(uri)!r} carries credentials in the URL (they would be "
                  "printed and recorded with it): remove them and set MLFLOW_TRACKING_USERNAME and "
                  "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead")
        return
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(safe_uri(uri).rstrip("/") + "/health", timeout=5):  # no credentials sent
            return
    except urllib.error.HTTPError as e:
        if e.code < 500:
            return  # it answers; a proxy may not route /health
        reason = f"HTTP {e.code}"
    except Exception as e:  # noqa: BLE001
        reason = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
    c.problem(f"MLflow tracking server {safe_uri(uri)} (QUANTFLOW_MLFLOW_TRACKING_URI) does not answer ({reason}): "
              "start it (`quantflow server up`), or unset the variable to track in a local SQLite store")


def _existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _disk(c: _Checks, base: _Base | None, checkpoint: int | None) -> None:
    if base is None:
        return
    ckpt = checkpoint or base.weights_bytes
    if not ckpt:
        return
    home = _existing(settings().home)
    need = {"checkpoint": ckpt}
    if base.dir is None and gguf_path(c.spec.base.source) is not None:  # GGUF converted to bf16 once
        params = sum(p.numel() for p in base.skeleton.parameters()) if base.skeleton is not None else 0
        if params:
            need["bf16 conversion of the GGUF"] = params * 2
    elif base.to_download_bytes:
        need["Hub download"] = base.to_download_bytes  # lands in the HF cache: counted here when on the same disk
    for i, s in enumerate(c.spec.stores):
        if s.kind == "local":
            root = _existing(Path(s.uri) if s.uri else settings().home / "published")
            if root.stat().st_dev == home.stat().st_dev:
                need[f"stores[{i}] copy"] = ckpt
            else:
                _disk_on(c, root, {f"stores[{i}] copy": ckpt})
    _disk_on(c, home, need, "set QUANTFLOW_HOME to a larger disk")


def _disk_on(c: _Checks, where: Path, need: dict[str, int], hint: str = "free some space") -> None:
    total = int(sum(need.values()) * 1.1) + 64 * MiB
    free = shutil.disk_usage(where).free
    if free < total:
        parts = ", ".join(f"{k} ~{v / GiB:.2f} GiB" for k, v in need.items())
        c.problem(f"not enough free disk under {where}: ~{total / GiB:.2f} GiB needed ({parts}, plus 10%), "
                  f"{free / GiB:.2f} GiB free: {hint}")


# --- all together -------------------------------------------------------------------------------

def preflight(spec: VariantSpec | dict) -> Plan:
    """Every check, all problems at once: a Plan, or PreflightError listing what to change."""
    if not isinstance(spec, VariantSpec):
        try:
            spec = VariantSpec.model_validate(spec)
        except ValidationError as e:
            raise PreflightError(validation_problems(e)) from None
    c = _Checks(spec)
    home = home_problems()
    for problem in home:
        c.problem(problem)
    scheme = c.guard(f"scheme {spec.scheme.value!r}", _scheme, c)
    modifiers = c.guard(f"scheme {spec.scheme.value!r}", _modifiers, c, scheme) if scheme else None
    base = c.guard(f"base.source {spec.base.source!r}", _base_model, c)
    checkpoint = None
    if scheme and modifiers and base is not None and base.skeleton is not None:
        checkpoint = c.guard(f"scheme {scheme.name!r} against {base.name}", _recipe_vs_model, c, scheme, modifiers, base)
    if scheme is not None and scheme.needs_calibration:
        c.guard("calibration", _calibration, c, base)
    memory, quantization = None, CPU
    if scheme is not None and base is not None and base.config is not None:
        memory, quantization = c.guard("quantization", _memory, c, scheme, base) or (None, CPU)
    suite = c.guard(f"evaluation.suite {spec.evaluation.suite!r}", _suite, c)
    engine = c.guard("evaluation.engine", _engine, c, scheme, suite, base)
    serving = c.guard("evaluation.serving", _serving, c, engine, base)
    reference = c.guard("evaluation.reference_baseline", _reference, c, suite, engine, base)
    name = spec.variant_name or (f"{base.name}-{scheme.suffix}" if base is not None and scheme is not None else None)
    if name is not None and not spec.variant_name:
        try:
            check_variant_name(name)
        except ValueError as e:
            c.problem(f"variant_name: the default name, {e}: set variant_name")
            name = None
    c.add("stores", stores.problems, spec.stores, name)
    if not home:  # the default tracking store lives under it
        c.guard("tracking", _tracking, c)
    c.guard("disk", _disk, c, base, checkpoint)
    if c.problems:
        raise PreflightError(c.problems)
    return Plan(scheme=scheme, suite=suite, suite_digest=suite_digest(suite), engine=engine, name=name,
                checkpoint_bytes=checkpoint, notes=c.notes, serving=bool(serving), reference=reference,
                quantization=quantization, memory=memory)
