"""Evaluation suites: one YAML file each in suites/, each task with its exact lm-eval settings."""
from __future__ import annotations

import difflib
import functools
import importlib.util
import re
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, PrivateAttr

SUITES = Path(__file__).parent / "suites"


class SuiteTask(BaseModel):
    """One lm-eval task, the settings it runs with, and the number that goes in the card."""

    task: str = Field(description="lm-eval task (or group) name")
    label: str = Field(description="row name in the card's table")
    metric: str = Field(description="lm-eval metric key, e.g. acc, acc_norm, exact_match")
    filter: str = "none"
    higher_is_better: bool = True
    num_fewshot: int | None = None
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    add_bos_token: bool | None = None
    max_model_len: int | None = None
    max_gen_toks: int | None = None
    extra_model_args: dict[str, str | int | float | bool] = Field(default_factory=dict)
    card_task: str | None = Field(None, description="the task name the seed card ran, when this is its upstream twin")
    note: str | None = None
    scorer: Literal["humaneval_sandbox"] | None = Field(
        None, description="who computes `metric`: None for lm-eval itself; 'humaneval_sandbox' when lm-eval only "
        "generates (run with --log_samples) and components/evaluation/sandbox.py executes and scores the samples")

    @property
    def result_key(self) -> str:
        return f"{self.metric},{self.filter}"

    def command_group(self, suite_max_model_len: int) -> tuple:
        """Tasks sharing this key run in one lm_eval process."""
        return (self.num_fewshot, self.apply_chat_template, self.fewshot_as_multiturn, self.add_bos_token,
                self.max_model_len or suite_max_model_len, self.max_gen_toks, tuple(sorted(self.extra_model_args.items())))


class Suite(BaseModel):
    name: str
    description: str
    include_path: str | None = Field(None, description="task YAML folder, relative to the suite file")
    max_model_len: int = 4096
    tasks: list[SuiteTask] = Field(min_length=1)
    _file: Path | None = PrivateAttr(None)

    @property
    def include_dir(self) -> Path | None:
        if self.include_path is None:
            return None
        base = self._file.parent if self._file else SUITES
        return (base / self.include_path).resolve()

    def groups(self) -> list[list[SuiteTask]]:
        """Tasks grouped by identical settings, in suite order."""
        out: dict[tuple, list[SuiteTask]] = {}
        for t in self.tasks:
            out.setdefault(t.command_group(self.max_model_len), []).append(t)
        return list(out.values())


def names() -> list[str]:
    return sorted(p.stem for p in SUITES.glob("*.yaml"))


def load(name_or_path: str) -> Suite:
    """A suite by name (suites/<name>.yaml) or by path to a YAML file."""
    path = Path(name_or_path)
    if not path.is_file():
        path = SUITES / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown eval suite {name_or_path!r}: choose one of {', '.join(names())} or give a YAML path")
    suite = Suite.model_validate(yaml.safe_load(path.read_text()))
    suite._file = path.resolve()
    return suite


# ---------------------------------------------------------------------------------------------
# Validation against the installed lm-eval task tree (and the suite's include_path), without
# importing lm_eval: TaskManager() takes ~7 s to index ~14k YAML files; a line scan for the
# top-level `task:` / `group:` / `tag:` keys takes well under that, and only the few files a
# suite names (with their includes and group members) are then parsed.
# ---------------------------------------------------------------------------------------------

class SuiteError(ValueError):
    """A suite that lm-eval would reject, or would run differently from what the suite says."""


# lm-eval's result keys are "<metric>,<filter>": neither part may be empty or hold a comma or whitespace
# (real names include "pass@1", "0_accuracy", "strict-match", "maj@64", "acc_definició").
_METRIC_RE = re.compile(r"^[^\s,]+$")
_FILTER_RE = _METRIC_RE
_TOP_KEY_RE = re.compile(r"""^(["']?)(task|group|tag|include)\1[ \t]*:[ \t]*(.*?)[ \t]*$""")
_LIST_ITEM_RE = re.compile(r"""^[ \t]*-[ \t]*(["']?)([^"'#\s]+)\1""")
# lm-eval's metrics for a task without metric_list (lm_eval.api.registry.DEFAULT_METRIC_REGISTRY)
_DEFAULT_METRICS = {
    "loglikelihood": ["perplexity", "acc"],
    "loglikelihood_rolling": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
    "multiple_choice": ["acc", "acc_norm"],
    "generate_until": ["exact_match"],
}


class _Function(str):
    """A `!function module.name` reference, kept unresolved."""


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    pass


_Loader.add_constructor("!function", lambda loader, node: _Function(loader.construct_scalar(node)))


def lm_eval_tasks_dir() -> Path | None:
    """The installed lm_eval/tasks folder, found without importing lm_eval."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    tasks = Path(next(iter(spec.submodule_search_locations))) / "tasks"
    return tasks if tasks.is_dir() else None


@dataclass
class TaskIndex:
    """Names lm-eval would know: tasks and groups (each with the YAML defining it) and tags."""

    tasks: dict[str, Path] = dc_field(default_factory=dict)
    groups: dict[str, Path] = dc_field(default_factory=dict)
    tags: dict[str, list[str]] = dc_field(default_factory=dict)

    def kind(self, name: str) -> str | None:
        for kind, table in (("task", self.tasks), ("group", self.groups), ("tag", self.tags)):
            if name in table:
                return kind
        return None

    def names(self) -> set[str]:
        return set(self.tasks) | set(self.groups) | set(self.tags)

    def merged(self, other: "TaskIndex") -> "TaskIndex":
        """`other` overrides this one, as lm-eval's --include_path overrides its own tasks."""
        tags = {k: list(v) for k, v in self.tags.items()}
        for k, v in other.tags.items():
            tags.setdefault(k, []).extend(v)
        return TaskIndex({**self.tasks, **other.tasks}, {**self.groups, **other.groups}, tags)


def _scan_keys(text: str) -> tuple[str | None, str | None, list[str], str | None]:
    """(task, group, tags, include) from the top-level keys of one YAML file, by line scan."""
    task = group = include = None
    tags: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _TOP_KEY_RE.match(line)
        if not m:
            continue
        key, value = m.group(2), m.group(3).split(" #")[0].strip().strip("'\"")
        if key == "tag":
            if value.startswith("["):
                tags += [v.strip().strip("'\"") for v in value.strip("[]").split(",") if v.strip()]
            elif value:
                tags.append(value)
            else:
                for nxt in lines[i + 1:]:
                    if not nxt.strip() or nxt.lstrip().startswith("#"):
                        continue
                    item = _LIST_ITEM_RE.match(nxt)
                    if not item:
                        break
                    tags.append(item.group(2))
        elif key == "group" and value:
            group = value
        elif key == "task" and value and not value.startswith("["):
            task = value
        elif key == "include" and value and not value.startswith("["):
            include = value
    return task, group, tags, include


def _inherited_tags(path: Path, include: str | None, depth: int = 0) -> list[str]:
    """Tags a task inherits from the template it includes (when it sets none itself)."""
    if not include or depth > 8:
        return []
    target = (path.parent / include).resolve()
    try:
        _, _, tags, nxt = _scan_keys(target.read_text(errors="replace"))
    except OSError:
        return []
    return tags or _inherited_tags(target, nxt, depth + 1)


@functools.lru_cache(maxsize=8)
def scan_tasks(root: str) -> TaskIndex:
    """Index every *.yaml under root (as lm-eval does: sorted, first definition of a name wins)."""
    index = TaskIndex()
    base = Path(root)
    for path in sorted(base.rglob("*.yaml"), key=lambda p: p.as_posix()):
        if "__pycache__" in path.parts or ".ipynb_checkpoints" in path.parts:
            continue
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        task, group, tags, include = _scan_keys(text)
        if group is not None:  # lm-eval: a config with `group:` is a group, whatever else it has
            index.groups.setdefault(group, path)
        elif task is not None:
            if task in index.tasks:
                continue
            index.tasks[task] = path
            for tag in tags or _inherited_tags(path, include):
                index.tags.setdefault(tag, []).append(task)
    return index


def task_index(include_dir: Path | None = None) -> TaskIndex:
    """The installed lm-eval tasks, overridden by the suite's own task folder."""
    installed = lm_eval_tasks_dir()
    index = scan_tasks(str(installed)) if installed else TaskIndex()
    if include_dir is not None and Path(include_dir).is_dir():
        index = index.merged(scan_tasks(str(Path(include_dir).resolve())))
    return index


@functools.lru_cache(maxsize=4096)
def _load_yaml(path: Path) -> dict:
    """One task/group YAML with its `include:`s merged in (the including file wins), functions unresolved."""
    cfg = yaml.load(path.read_text(), Loader=_Loader) or {}
    includes = cfg.pop("include", None)
    if not includes:
        return cfg
    merged: dict = {}
    for inc in [includes] if isinstance(includes, str) else includes:
        inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        merged.update(_load_yaml(inc_path.resolve()))
    merged.update(cfg)
    return merged


def _inline(cfg: dict, where: Path) -> dict:
    includes = cfg.get("include")
    if not includes:
        return cfg
    merged: dict = {}
    for inc in [includes] if isinstance(includes, str) else includes:
        merged.update(_load_yaml((where.parent / inc).resolve()))
    merged.update({k: v for k, v in cfg.items() if k != "include"})
    return merged


def _leaves(name: str, index: TaskIndex, seen: frozenset = frozenset()) -> list[tuple[str, dict]]:
    """(task name, config) of every task a task, group or tag name runs."""
    if name in seen:
        return []
    seen = seen | {name}
    kind = index.kind(name)
    if kind == "task":
        return [(name, _load_yaml(index.tasks[name]))]
    if kind == "tag":
        return [leaf for t in index.tags[name] for leaf in _leaves(t, index, seen)]
    if kind == "group":
        path = index.groups[name]
        return _members(_load_yaml(path), path, index, seen)
    return []


def _members(group_cfg: dict, path: Path, index: TaskIndex, seen: frozenset) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    members = group_cfg.get("task") or []
    for m in [members] if isinstance(members, str) else members:
        if isinstance(m, str):
            out += _leaves(m, index, seen)
        elif isinstance(m, dict) and "group" in m:
            out += _members(_inline(m, path), path, index, seen)
        elif isinstance(m, dict) and isinstance(m.get("task"), str):
            base = _load_yaml(index.tasks[m["task"]]) if m["task"] in index.tasks else {}
            out.append((m["task"], {**base, **_inline(m, path)}))
    return out


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _task_result_keys(cfg: dict) -> tuple[set[str], set[str], bool]:
    """(metrics, filters, open): the result keys one task reports; open when a metric is a !function."""
    metric_list = cfg.get("metric_list")
    if metric_list:
        names = [m.get("metric") for m in metric_list if isinstance(m, dict)]
    else:
        names = _DEFAULT_METRICS.get(cfg.get("output_type", "generate_until"), [])
    open_ = any(isinstance(n, _Function) or not isinstance(n, str) for n in names)
    metrics = {n for n in names if isinstance(n, str) and not isinstance(n, _Function)}
    filter_list = cfg.get("filter_list")
    filters = {f.get("name", "none") for f in filter_list if isinstance(f, dict)} if filter_list else {"none"}
    return metrics, filters, open_


def _group_result_keys(cfg: dict) -> set[str]:
    keys = set()
    for agg in cfg.get("aggregate_metric_list") or []:
        if isinstance(agg, dict) and isinstance(agg.get("metric"), str):
            for f in _as_list(agg.get("filter_list")) or ["none"]:
                keys.add(f"{agg['metric']},{f}")
    return keys


def _fewshot_problem(t: SuiteTask, leaf: str, cfg: dict) -> str | None:
    """Why this task's num_fewshot contradicts what its lm-eval config allows, or None."""
    pinned = cfg.get("num_fewshot")
    if t.num_fewshot is not None and pinned is not None and t.num_fewshot != pinned:
        if pinned == 0:
            return (f"{leaf} pins num_fewshot: 0 in its YAML; lm-eval ignores --num_fewshot {t.num_fewshot} "
                    f"for it (\"Manual configuration will be ignored\")")
        return f"{leaf} is defined as a {pinned}-shot task in its YAML, the suite asks for {t.num_fewshot}"
    shots = t.num_fewshot if t.num_fewshot is not None else (pinned or 0)
    if shots <= 0:
        return None
    fewshot_config = cfg.get("fewshot_config") or {}
    if cfg.get("fewshot_split") or fewshot_config.get("split"):
        return None
    samples = fewshot_config.get("samples")
    if isinstance(samples, list):
        if len(samples) < shots:
            return (f"{leaf} ships only {len(samples)} few-shot examples (fewshot_config.samples), "
                    f"the suite asks for {shots}")
        return None
    if samples is not None:  # a !function: its length is unknown until run
        return None
    if cfg.get("training_split") or cfg.get("validation_split"):
        return None
    return (f"{leaf} has no few-shot source (no fewshot_split, fewshot_config.samples, training_split or "
            f"validation_split): {shots}-shot would draw its examples from the test split")


def problems(suite: Suite, index: TaskIndex | None = None) -> list[str]:
    """Everything in the suite that lm-eval would reject or run differently from what the suite says."""
    index = index or task_index(suite.include_dir)
    out: list[str] = []
    seen_tasks: set[str] = set()
    for t in suite.tasks:
        where = f"{t.task!r} ({t.label})"
        if t.task in seen_tasks:
            out.append(f"{where}: listed twice; scores are keyed by task name")
        seen_tasks.add(t.task)
        if not _METRIC_RE.match(t.metric):
            out.append(f"{where}: metric {t.metric!r} is not a metric name (lm-eval keys are "
                       f"'<metric>,<filter>': give metric and filter separately)")
        elif t.metric.endswith("_stderr"):
            out.append(f"{where}: metric {t.metric!r} is the stderr of {t.metric[:-7]!r}, not a score")
        if not _FILTER_RE.match(t.filter):
            out.append(f"{where}: filter {t.filter!r} is not a filter name")
        if t.fewshot_as_multiturn and not t.apply_chat_template:
            out.append(f"{where}: fewshot_as_multiturn needs apply_chat_template (lm-eval refuses the pair)")
        kind = index.kind(t.task)
        if kind is None:
            close = difflib.get_close_matches(t.task, index.names(), n=3, cutoff=0.75)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            installed = ("the installed lm_eval/tasks" if lm_eval_tasks_dir()
                         else "lm_eval/tasks (lm_eval is not installed)")
            out.append(f"{where}: unknown lm-eval task: not in {installed}"
                       f"{' nor in ' + str(suite.include_dir) if suite.include_dir else ''}{hint}")
            continue
        if kind == "tag":
            out.append(f"{where}: is a tag (of {len(index.tags[t.task])} tasks), lm-eval reports no score under "
                       f"it: name one of {sorted(index.tags[t.task])[:6]}")
            continue
        leaves = _leaves(t.task, index)
        if t.scorer is None and _METRIC_RE.match(t.metric) and _FILTER_RE.match(t.filter) \
                and not t.metric.endswith("_stderr"):
            if kind == "group":
                keys = _group_result_keys(_load_yaml(index.groups[t.task]))
                if not keys:
                    out.append(f"{where}: group has no aggregate_metric_list, lm-eval reports no score for it")
                elif t.result_key not in keys:
                    out.append(f"{where}: group reports {sorted(keys)}, not {t.result_key!r}")
            else:
                metrics, filters, open_ = _task_result_keys(leaves[0][1])
                if t.metric not in metrics and not open_:
                    out.append(f"{where}: task reports metrics {sorted(metrics)}, not {t.metric!r}")
                if t.filter not in filters:
                    out.append(f"{where}: task has filters {sorted(filters)}, not {t.filter!r}")
        fewshot = [(leaf, p) for leaf, cfg in leaves if (p := _fewshot_problem(t, leaf, cfg))]
        if fewshot:
            more = f" (and {len(fewshot) - 1} more of its {len(leaves)} subtasks)" if len(fewshot) > 1 else ""
            out.append(f"{where}: num_fewshot {t.num_fewshot}: {fewshot[0][1]}{more}")
    return out


def validate(suite: Suite, index: TaskIndex | None = None) -> Suite:
    """The suite if lm-eval would run it as written, else SuiteError listing every problem."""
    found = problems(suite, index)
    if found:
        raise SuiteError(f"eval suite {suite.name!r}:\n  - " + "\n  - ".join(found))
    return suite
