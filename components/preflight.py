"""Preflight: check a VariantSpec against everything it names, before any heavy work, and report every problem at once.

`preflight(spec)` reads only what is cheap to read: config.json (the model skeleton is built on the meta device, no
weights), tokenizer files, the first rows and the row count of a local calibration file, suite YAML, the evaluation
environment's path, one listing call per S3 store, the Hub token, the MLflow server's /health, free disk. It raises one
`PreflightError` listing every problem, each with what to change.

The one thing it writes: when it found no problem, the model-side facts (config read by transformers, causal-LM check,
meta-device skeleton's size, llm-compressor's reading of the recipe and its match against the model's modules, the
checkpoint estimate, the GPUs torch counts) go to `$QUANTFLOW_HOME/preflight/<key>.json`, keyed by the content of
everything those checks read (components/preflight_memo.py). A later preflight with the same key takes them from there
without importing torch, transformers or llm-compressor; every other check runs again.

Each component checks what it owns, and every check has one name and one shape: a function `check` (`check_<thing>`
where a module owns several) returning `messages.Checked`, its `value` (what preflight goes on with, None when it cannot
be used), `problems` (one line each with the fix) and `notes`: models.check, recipes.check, recipes.check_recipe,
recipes.check_against_model, calibration.check, stores.check, settings.check_home, local_stack.check_tracking,
suites.check, fit.check, engine.check, serving.check, references.check, remote.check (environment.check inside
engine.check), and in a pod pod_limits.check_memory and check_scratch (its memory limit and scratch volume, where lower
than the node's). A function named `problems` / `*_problems` returns the lines alone (`list[str]`), where no value
comes with them. This module gathers the checks (`_Checks.take`) and builds the Plan.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import ValidationError

from components import calibration, local_stack, models, overlap, pod_limits, preflight_memo, recipes, remote, stores
from components.evaluation import engine as engines
from components.evaluation import environment, fit, references, serving, suites
from components.evaluation.command import EngineSettings
from components.evaluation.runner import EvalResult, suite_digest
from components.memory_plan import MemoryPlan, Settings
from components.models import BaseInfo, gguf_path, max_positions
from components.overlap import Split
from components.quantize import CPU
from components.recipes import SchemeDef
from components.settings import check_home, existing, settings
from components.messages import Checked, first_line, validation_problems
from components.specs import VariantSpec, check_variant_name

GiB = 1 << 30
MiB = 1 << 20


class PreflightError(ValueError):
    """Everything wrong with a spec, found before any heavy work; `problems` lists them one by one."""

    def __init__(self, problems: list[str], unchecked: list[str] = ()):
        self.problems = list(problems)
        self.unchecked = list(unchecked)  # what could not be checked until a problem is fixed
        n = len(self.problems)
        super().__init__(f"preflight found {n} problem{'s' if n != 1 else ''}, nothing was started:\n  - "
                         + "\n  - ".join(self.problems) + "".join(f"\n{u}" for u in self.unchecked))


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
    overlap: Split = field(default_factory=Split)  # the base evaluation beside quantization, and on which GPUs


class _Checks:
    def __init__(self, spec: VariantSpec):
        self.spec = spec
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.unchecked: list[str] = []  # what a problem found here kept from being checked (said with the refusal)

    def problem(self, msg: str) -> None:
        self.problems.append(msg)

    def guard(self, what: str, fn: Callable, *args):
        """Run one check; an unexpected exception becomes a problem naming what could not be checked."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - a check that cannot run is itself a finding
            self.problem(f"{what}: {type(e).__name__}: {first_line(e)}")
            return None

    def take(self, what: str, check: Callable[..., Checked], *args):
        """Run a component's check: record its problems and notes, return its value (None when it could not run)."""
        found = self.guard(what, check, *args) or Checked()
        self.problems += found.problems
        self.notes += found.notes
        return found.value


def _memory(c: _Checks, scheme: SchemeDef, base: BaseInfo, here) -> tuple[MemoryPlan | None, Settings]:
    """The memory plan on this machine (`here`: memory_plan.Machine): refuse with the numbers when nothing fits, else
    the placement to use."""
    from components import memory_plan as mp

    q = c.spec.quantization
    try:
        shape = mp.shape_from_config(base.config_json)
    except (KeyError, TypeError, ValueError) as e:
        c.notes.append(f"quantization: no memory plan for {base.name} (its config has no {e}): llm-compressor's "
                       "defaults unless the spec says otherwise")
        return None, mp.settings_for(q, None, here)
    cal = c.spec.calibration if scheme.needs_calibration else None
    calib = mp.Calibration(num_samples=cal.num_samples if cal else 0, seq_len=cal.max_seq_length if cal else 0,
                           batch_size=q.batch_size)
    # free disk is preflight's own check (_disk), against every copy the run writes
    machine = here.model_copy(update={"disk_free_bytes": float("inf")})
    memory = mp.plan(shape, calib, mp.quantization_of(scheme), machine)
    for problem in memory.problems:
        c.problem(f"quantization: {problem}")
    if q.placement in ("gpu", "sequential") and machine.gpus == 0:
        c.problem(f"quantization.placement {q.placement!r}: no CUDA GPU is visible: use auto or cpu")
    elif q.placement == "gpu" and memory.placement not in ("gpu", None):
        c.problem(f"quantization.placement 'gpu': the whole model does not fit on {machine.gpus} GPU(s) of "
                  f"{machine.gpu_bytes / 1e9:.1f} GB ({'; '.join(memory.lines()[:1])}): use auto or sequential")
    c.notes.append("memory plan: " + "; ".join(memory.lines()))
    c.notes += mp.advice(shape, calib, mp.quantization_of(scheme), memory)
    return memory, mp.settings_for(q, memory, machine)


def _overlap(spec: VariantSpec, memory: MemoryPlan | None, how: Settings, engine: EngineSettings,
             base_evaluated: bool, here) -> Checked[Split]:
    """evaluation.overlap_base on this machine (`here`, as the memory plan saw it; None: counted now) through
    components/overlap.py; a note says what was chosen when it overlaps."""
    from components.memory_plan import machine_now

    split, problems = overlap.resolve(spec.evaluation.overlap_base, memory, how, here or machine_now(Path.cwd()),
                                      overlap.evaluation_gpus(engine), base_evaluated)
    return Checked(split, problems, [split.note()] if split.overlap or split.base_first else [])


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
        if base.params:
            need["bf16 conversion of the GGUF"] = base.params * 2
    elif base.to_download_bytes:  # lands in the HF cache: counted here when on the same disk (not a pod's PVC)
        from huggingface_hub import constants

        if existing(Path(constants.HF_HUB_CACHE)).stat().st_dev == home.stat().st_dev:
            need["Hub download"] = base.to_download_bytes
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
    else:  # the node has room; a pod's scratch volume may have less
        c.take("disk", pod_limits.check_scratch, where, total)


# --- all together -------------------------------------------------------------------------------

def preflight(spec: VariantSpec | dict) -> Plan:
    """Every check, all problems at once: a Plan, or PreflightError listing what to change."""
    if not isinstance(spec, VariantSpec):
        try:
            spec = VariantSpec.model_validate(spec)
        except ValidationError as e:
            raise PreflightError(validation_problems(e)) from None
    c = _Checks(spec)
    home = check_home().problems
    c.problems += home
    scheme = c.take(f"scheme {spec.scheme.value!r}", recipes.check, spec.scheme.value)
    memo = preflight_memo.Memo(scheme) if scheme is not None else None  # the model-side facts, by content
    base = c.take(f"base.source {spec.base.source!r}", models.check, spec.base.source, spec.base.revision,
                  spec.calibration.apply_chat_template, memo.known if memo else None)
    checkpoint = None
    if memo is not None and memo.facts is not None:  # every check below passed for exactly these inputs
        checkpoint = memo.facts.checkpoint_bytes
    elif scheme is not None and base is None:  # refused already: llm-compressor (seconds to import) waits for a base
        c.unchecked.append(f"not checked until the base model can be read: the recipe of scheme {scheme.name!r} as "
                           "llm-compressor reads it, against the model's modules")
    elif scheme is not None:
        modifiers = c.take(f"scheme {scheme.name!r}", recipes.check_recipe, scheme)
        if modifiers and base.skeleton is not None:
            checkpoint = c.take(f"scheme {scheme.name!r} against {base.name}", recipes.check_against_model, scheme,
                                modifiers, base)
    if scheme is not None and scheme.needs_calibration:
        c.take("calibration", calibration.check, spec.calibration, base)
    memory, quantization, here = None, CPU, None
    if scheme is not None and base is not None and base.config_json is not None:
        here = c.guard("quantization", memo.machine, Path.cwd())
        if here is not None:
            memory, quantization = c.guard("quantization", _memory, c, scheme, base, here) or (None, CPU)
            c.take("quantization", pod_limits.check_memory, memory, here.host_bytes)  # in a pod: its memory limit
    ev = spec.evaluation
    base_name = base.name if base is not None else None
    positions = max_positions(base.config_json) if base is not None and base.config_json is not None else None
    platform, gpus = memo.platform() if memo is not None else (None, None)
    planned = engines.planned(ev, scheme, platform)  # the suite is checked against the lm-eval that will run it
    tasks = c.guard("evaluation.engine", environment.lm_eval_tasks, planned) if planned else None
    suite = c.take(f"evaluation.suite {ev.suite!r}", suites.check, ev.suite, tasks)
    ev = c.take("evaluation.tensor_parallel_size", fit.check, ev, base.config_json if base is not None else None,
                scheme, suite, here, platform, planned) or fit.concrete(ev)  # base and variant fit vLLM's GPUs
    engine = c.take("evaluation.engine", engines.check, ev, scheme, suite, base_name, positions, platform, gpus)
    measured = c.take("evaluation.serving", serving.check, ev.serving, engine, base_name, positions)
    reference = None
    if ev.reference_baseline and suite is not None and engine is not None:
        reference = c.take("evaluation.reference_baseline", references.check, ev.reference_baseline, suite, engine,
                           base_name)
    split = Split()
    if engine is not None:
        split = c.take("evaluation.overlap_base", _overlap, spec, memory, quantization, engine,
                       reference is None, here) or Split()
    name = spec.variant_name or (f"{base.name}-{scheme.suffix}" if base is not None and scheme is not None else None)
    if name is not None and not spec.variant_name:
        try:
            check_variant_name(name)
        except ValueError as e:
            c.problem(f"variant_name: the default name, {e}: set variant_name")
            name = None
    c.take("stores", stores.check, spec.stores, name)
    c.take("artifact store", remote.check)
    if not home:  # the default tracking store lives under it
        c.take("tracking", local_stack.check_tracking)
    c.guard("disk", _disk, c, base, checkpoint)
    if c.problems:
        raise PreflightError(c.problems, c.unchecked)
    if memo is not None and base is not None:
        memo.remember(base.config_json, base.params, checkpoint)
    return Plan(scheme=scheme, suite=suite, suite_digest=suite_digest(suite), engine=engine, name=name,
                checkpoint_bytes=checkpoint, notes=c.notes, serving=bool(measured), reference=reference,
                quantization=quantization, memory=memory, overlap=split)
