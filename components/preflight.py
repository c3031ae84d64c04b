"""Preflight: check a VariantSpec against everything it names, before any heavy work, and report every problem at once.

`preflight(spec)` reads only what is cheap to read: config.json (the model skeleton is built on the meta device, no
weights), tokenizer files, the first rows and the row count of a local calibration file, suite YAML, the evaluation
environment's path, one listing call per S3 store, the Hub token, the MLflow server's /health, free disk. It raises one
`PreflightError` listing every problem, each with what to change. The one thing it writes under QUANTFLOW_HOME is the
memo of a passing recipe-vs-model check (QUANTFLOW_HOME/preflight, `_recipe_vs_model`).

Each component checks what it owns (models.inspect, recipes.check, recipes.modifiers and recipes.model_problems,
calibration.check, stores.problems, settings.home_problems, local_stack.tracking_problems); this module gathers their
problems and builds the Plan. The evaluation checks are still here: they use only components/evaluation's public
functions.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import ValidationError

from components import calibration, models, recipes, stores
from components.evaluation import environment, references, suites
from components.evaluation.command import EngineSettings
from components.evaluation.engine import batch_size, choose_engine, detect_platform
from components.digests import code_digest, digest_obj
from components.evaluation.runner import EvalResult, suite_digest
from components.local_stack import tracking_problems
from components.memory_plan import MemoryPlan, Settings
from components.models import BaseInfo, gguf_path, max_positions
from components.quantize import CPU
from components.recipes import SchemeDef
from components.settings import existing, home_problems, settings
from components.specs import VariantSpec, check_variant_name, did_you_mean, first_line, validation_problems

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
            self.problem(f"{what}: {type(e).__name__}: {first_line(e)}")
            return None

    def found(self, what: str, fn: Callable, *args):
        """Run a component's check that returns (what it found, its problems): record the problems, return the rest."""
        value, problems = self.guard(what, fn, *args) or (None, [])
        for problem in problems:
            self.problem(problem)
        return value

    def add(self, what: str, fn: Callable, *args) -> None:
        """Run a component's check and record the problems it returns."""
        for problem in self.guard(what, fn, *args) or []:
            self.problem(problem)


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
        c.problem(f"evaluation.suite {name!r}: cannot be read ({type(e).__name__}: {first_line(e)})")
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


def _engine(c: _Checks, scheme: SchemeDef | None, suite: suites.Suite | None, base: BaseInfo | None) -> EngineSettings | None:
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
        for missing in environment.problems():
            c.problem(f"evaluation.engine: vLLM evaluates this scheme here: {missing}, or use evaluation.engine: hf")
        limit = max_positions(base.config) if base is not None and base.config is not None else None
        if suite is not None and limit:
            longest = max([t.max_model_len or suite.max_model_len for t in suite.tasks])
            if longest > limit:
                c.problem(f"evaluation.suite {suite.name!r}: vLLM would run with max_model_len {longest}, above "
                          f"{base.name}'s max_position_embeddings {limit} (vLLM refuses it): use engine hf or a suite "
                          f"with max_model_len <= {limit}")
    return EngineSettings(engine=engine_name, platform=platform, tensor_parallel_size=ev.tensor_parallel_size,
                          batch_size=batch_size(ev.batch_size, engine_name, platform), limit=ev.limit, seed=ev.seed,
                          gpu_memory_utilization=ev.gpu_memory_utilization if engine_name == "vllm" else None)


def _reference(c: _Checks, suite: suites.Suite | None, engine: EngineSettings | None, base: BaseInfo | None) -> EvalResult | None:
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


def _serving(c: _Checks, engine: EngineSettings | None, base: BaseInfo | None) -> bool:
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
        c.problem(f"evaluation.serving.prompts: {path} is not JSONL (one JSON object a line): {first_line(e)}")
        return False
    if not rows or bad:
        c.problem(f"evaluation.serving.prompts: {path} needs a string `prompt` on every line"
                  + (f" (missing on lines {bad[:5]})" if bad else " (the file is empty)"))
        return False
    limit = max_positions(base.config) if base is not None and base.config is not None else None
    if limit and sv.max_model_len > limit:
        c.problem(f"evaluation.serving.max_model_len {sv.max_model_len} is above {base.name}'s "
                  f"max_position_embeddings {limit} (vLLM refuses it)")
        return False
    return True


def _memory(c: _Checks, scheme: SchemeDef, base: BaseInfo) -> tuple[MemoryPlan | None, Settings]:
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


# --- the recipe against the model, remembered while nothing it depends on changes ------------------------------

def _recipe_vs_model(scheme: SchemeDef, base: BaseInfo) -> tuple[int | None, list[str]]:
    """recipes.modifiers, then recipes.model_problems: the estimated checkpoint size and every problem. A clean result
    is remembered under QUANTFLOW_HOME/preflight, keyed by the scheme's content, the base's name and config, the code
    of the check and of this memo, and the installed llm-compressor, compressed-tensors and transformers: a rerun of an
    unchanged variant then neither imports llm-compressor nor parses the recipe, and a change to any of those is
    checked again. A failing check is not remembered: its messages always describe the files as they are now. (The memo
    lives here, not in components/recipes, whose code is part of every checkpoint's cache key.)"""
    memo = settings().home.resolve() / "preflight" / f"{_memo_key(scheme, base)}.json"
    try:
        return int(json.loads(memo.read_text())["checkpoint_bytes"]), []
    except (OSError, ValueError, KeyError, TypeError):
        pass
    mods, problems = recipes.modifiers(scheme)
    if mods is None:
        return None, problems
    checkpoint, problems = recipes.model_problems(scheme, mods, base)
    if not problems:
        _remember(memo, checkpoint)
    return checkpoint, problems


def _memo_key(scheme: SchemeDef, base: BaseInfo) -> str:
    return digest_obj({"scheme": scheme.model_dump(mode="json"), "base": base.name, "config": base.config.to_dict(),
                       "code": code_digest(("components.recipes", "components.preflight"),
                                           ("llmcompressor", "compressed-tensors", "transformers"))})


def _remember(memo: Path, checkpoint: int) -> None:
    """Written whole (a temporary file, then a rename), so a concurrent preflight reads all of it or nothing; a home
    that cannot be written is home_problems' finding, not this check's."""
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f"{memo.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps({"checkpoint_bytes": checkpoint}))
        os.replace(tmp, memo)
    except OSError:
        pass


# --- disk: every copy the run writes, against the free space where it lands ------------------------

def _disk(c: _Checks, base: BaseInfo | None, checkpoint: int | None) -> None:
    if base is None:
        return
    ckpt = checkpoint or base.weights_bytes
    if not ckpt:
        return
    home = existing(settings().home)
    need = {"checkpoint": ckpt}
    if base.dir is None and gguf_path(c.spec.base.source) is not None:  # GGUF converted to bf16 once
        params = sum(p.numel() for p in base.skeleton.parameters()) if base.skeleton is not None else 0
        if params:
            need["bf16 conversion of the GGUF"] = params * 2
    elif base.to_download_bytes:
        need["Hub download"] = base.to_download_bytes  # lands in the HF cache: counted here when on the same disk
    for i, s in enumerate(c.spec.stores):
        if s.kind == "local":
            root = existing(Path(s.uri).expanduser() if s.uri else settings().home / "published")
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
    scheme = c.found(f"scheme {spec.scheme.value!r}", recipes.check, spec.scheme.value)
    base = c.found(f"base.source {spec.base.source!r}", models.inspect, spec.base.source, spec.base.revision,
                   spec.calibration.apply_chat_template)
    checkpoint = None
    if scheme and base is not None and base.skeleton is not None:
        checkpoint = c.found(f"scheme {scheme.name!r} against {base.name}", _recipe_vs_model, scheme, base)
    elif scheme:
        c.found(f"scheme {scheme.name!r}", recipes.modifiers, scheme)
    if scheme is not None and scheme.needs_calibration:
        c.notes += c.found("calibration", calibration.check, spec.calibration, base) or []
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
        c.add("tracking", tracking_problems)
    c.guard("disk", _disk, c, base, checkpoint)
    if c.problems:
        raise PreflightError(c.problems)
    return Plan(scheme=scheme, suite=suite, suite_digest=suite_digest(suite), engine=engine, name=name,
                checkpoint_bytes=checkpoint, notes=c.notes, serving=bool(serving), reference=reference,
                quantization=quantization, memory=memory)
