"""The names lm-eval knows (tasks, groups, tags) and the configs behind them, read without lm-eval.

Preflight validates a suite before any work. lm-eval's own index (lm_eval.tasks.TaskManager, 0.4.13) YAML-parses every
one of the ~14k files under lm_eval/tasks, includes followed, when it is built: ~8 s on a 2-CPU machine. A suite needs
only the names and the few configs it uses: a line scan of each file's top-level `task:` / `group:` / `tag:` /
`include:` keys indexes the names (each file read once, ~1 s there, cached per process), and only the files a suite
names are then parsed, with `!function` left unresolved (resolving it imports the task's Python). lm_eval is located
with importlib.util.find_spec, never imported.

The index of an installed lm-eval's task folder is also kept on disk (`$QUANTFLOW_HOME/task-index/<key>.json`), keyed by
the sha256 of that lm-eval's RECORD (every installed file's hash, beside the folder in its site-packages), the folder's
path and this module's source: the same lm-eval is not scanned again in the next process. A folder without a RECORD
listing its files (a source checkout, an editable install) is scanned every time; a memo that cannot be read is a miss.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
from collections import ChainMap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path

import yaml

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


class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """lm-eval task YAML: safe, in C where available, `!function` kept unresolved."""


Loader.add_constructor("!function", lambda loader, node: _Function(loader.construct_scalar(node)))


def lm_eval_tasks_dir() -> Path | None:
    """The installed lm_eval/tasks folder, found without importing lm_eval."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    tasks = Path(next(iter(spec.submodule_search_locations))) / "tasks"
    return tasks if tasks.is_dir() else None


class _Under(Mapping[str, Path]):
    """name -> `root`/relative path, each Path made when asked for: a remembered index names ~13,000 files, and a
    suite looks up a handful (making them all cost a quarter of a cached rerun's preflight)."""

    def __init__(self, root: str, relative: dict[str, str]):
        self._root, self._relative = root, relative

    def __getitem__(self, name: str) -> Path:
        return Path(self._root, self._relative[name])

    def __contains__(self, name: object) -> bool:
        return name in self._relative

    def __iter__(self) -> Iterator[str]:
        return iter(self._relative)

    def __len__(self) -> int:
        return len(self._relative)


@dataclass
class TaskIndex:
    """Names lm-eval would know: tasks and groups (each with the YAML defining it) and tags."""

    tasks: Mapping[str, Path] = dc_field(default_factory=dict)
    groups: Mapping[str, Path] = dc_field(default_factory=dict)
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
        return TaskIndex(ChainMap(other.tasks, self.tasks), ChainMap(other.groups, self.groups), tags)


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


Keys = tuple[str | None, str | None, list[str], str | None]


def _keys_of(path: str, seen: dict[str, Keys | None]) -> Keys | None:
    """_scan_keys of one file, read once per scan (templates are included by many tasks); None if unreadable."""
    if path not in seen:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                seen[path] = _scan_keys(f.read())
        except OSError:
            seen[path] = None
    return seen[path]


def _inherited_tags(path: str, include: str | None, seen: dict[str, Keys | None], depth: int = 0) -> list[str]:
    """Tags a task inherits from the template it includes (when it sets none itself)."""
    if not include or depth > 8:
        return []
    target = os.path.normpath(os.path.join(os.path.dirname(path), include))  # as lm-eval joins it, no stat
    keys = _keys_of(target, seen)
    if keys is None:
        return []
    _, _, tags, nxt = keys
    return tags or _inherited_tags(target, nxt, seen, depth + 1)


def _yaml_files(root: str) -> list[str]:
    """Every *.yaml under root, sorted by path (as Path.rglob sorted by as_posix), caches and checkpoints skipped."""
    found = []
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in ("__pycache__", ".ipynb_checkpoints")]
        found += [os.path.join(d, f) for f in files if f.endswith(".yaml")]
    return sorted(found)


@functools.lru_cache(maxsize=8)
def scan_tasks(root: str) -> TaskIndex:
    """Index every *.yaml under root (as lm-eval does: sorted, first definition of a name wins)."""
    index = TaskIndex()
    seen: dict[str, Keys | None] = {}
    for path in _yaml_files(root):
        keys = _keys_of(path, seen)
        if keys is None:
            continue
        task, group, tags, include = keys
        if group is not None:  # lm-eval: a config with `group:` is a group, whatever else it has
            index.groups.setdefault(group, Path(path))
        elif task is not None:
            if task in index.tasks:
                continue
            index.tasks[task] = Path(path)
            for tag in tags or _inherited_tags(path, include, seen):
                index.tags.setdefault(tag, []).append(task)
    return index


def _record_key(root: Path) -> str | None:
    """The memo key of an installed lm_eval/tasks folder: its distribution's RECORD (listing the task files), the
    folder and this module's source; None when no such RECORD is beside it."""
    from components.digests import code_digest

    records = list(root.parent.parent.glob("lm_eval-*.dist-info/RECORD"))
    if root.name != "tasks" or root.parent.name != "lm_eval" or len(records) != 1:
        return None
    try:
        record = records[0].read_bytes()
    except OSError:
        return None
    if b"lm_eval/tasks/" not in record:
        return None
    h = hashlib.sha256(record)
    h.update(b"\0" + str(root).encode() + b"\0" + code_digest((__name__,)).encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=8)
def installed_tasks(root: str) -> TaskIndex:
    """scan_tasks of an installed lm-eval's task folder, through the on-disk memo (module docstring)."""
    from components.artifacts import write_memo
    from components.settings import settings

    key = _record_key(Path(root))
    if key is None:
        return scan_tasks(root)
    memo = settings().home.expanduser().resolve() / "task-index" / f"{key}.json"
    try:
        doc = json.loads(memo.read_bytes())
        if doc["key"] == key:
            return TaskIndex(_Under(root, doc["tasks"]), _Under(root, doc["groups"]),
                             {k: list(v) for k, v in doc["tags"].items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    index = scan_tasks(root)
    doc = {"key": key, "tasks": {k: os.path.relpath(v, root) for k, v in index.tasks.items()},
           "groups": {k: os.path.relpath(v, root) for k, v in index.groups.items()}, "tags": index.tags}
    write_memo(memo, json.dumps(doc))
    return index


def load(include_dir: Path | None = None, installed: Path | None = None) -> TaskIndex:
    """The installed lm-eval tasks (`installed`: another environment's lm_eval/tasks folder; default this one's),
    overridden by the suite's own task folder."""
    installed = installed or lm_eval_tasks_dir()
    index = installed_tasks(str(installed)) if installed else TaskIndex()
    if include_dir is not None and Path(include_dir).is_dir():
        index = index.merged(scan_tasks(str(Path(include_dir).resolve())))
    return index


@functools.lru_cache(maxsize=4096)
def load_yaml(path: Path) -> dict:
    """One task/group YAML with its `include:`s merged in (the including file wins), functions unresolved."""
    cfg = yaml.load(path.read_text(), Loader=Loader) or {}
    includes = cfg.pop("include", None)
    if not includes:
        return cfg
    merged: dict = {}
    for inc in [includes] if isinstance(includes, str) else includes:
        inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        merged.update(load_yaml(inc_path.resolve()))
    merged.update(cfg)
    return merged


def _inline(cfg: dict, where: Path) -> dict:
    includes = cfg.get("include")
    if not includes:
        return cfg
    merged: dict = {}
    for inc in [includes] if isinstance(includes, str) else includes:
        merged.update(load_yaml((where.parent / inc).resolve()))
    merged.update({k: v for k, v in cfg.items() if k != "include"})
    return merged


def leaves(name: str, index: TaskIndex, seen: frozenset = frozenset()) -> list[tuple[str, dict]]:
    """(task name, config) of every task a task, group or tag name runs."""
    if name in seen:
        return []
    seen = seen | {name}
    kind = index.kind(name)
    if kind == "task":
        return [(name, load_yaml(index.tasks[name]))]
    if kind == "tag":
        return [leaf for t in index.tags[name] for leaf in leaves(t, index, seen)]
    if kind == "group":
        path = index.groups[name]
        return _members(load_yaml(path), path, index, seen)
    return []


def _members(group_cfg: dict, path: Path, index: TaskIndex, seen: frozenset) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    members = group_cfg.get("task") or []
    for m in [members] if isinstance(members, str) else members:
        if isinstance(m, str):
            out += leaves(m, index, seen)
        elif isinstance(m, dict) and "group" in m:
            out += _members(_inline(m, path), path, index, seen)
        elif isinstance(m, dict) and isinstance(m.get("task"), str):
            base = load_yaml(index.tasks[m["task"]]) if m["task"] in index.tasks else {}
            out.append((m["task"], {**base, **_inline(m, path)}))
    return out

def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def result_keys(cfg: dict) -> tuple[set[str], set[str], bool]:
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


def group_result_keys(cfg: dict) -> set[str]:
    keys = set()
    for agg in cfg.get("aggregate_metric_list") or []:
        if isinstance(agg, dict) and isinstance(agg.get("metric"), str):
            for f in _as_list(agg.get("filter_list")) or ["none"]:
                keys.add(f"{agg['metric']},{f}")
    return keys


