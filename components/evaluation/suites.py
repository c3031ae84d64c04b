"""Evaluation suites: one YAML file each in suites/, each task with its exact lm-eval settings."""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, PrivateAttr

from components.digests import digest_dir, sha256_file
from components.evaluation import task_index
from components.evaluation.task_index import TaskIndex
from components.messages import Checked, did_you_mean, first_line, validation_problems

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
        "generates (run with --log_samples) and components/evaluation/humaneval.py scores the samples, executed in sandbox.py")

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
    category: str | None = Field(None, description="the group its rows form in a combined table (a card's Category "
                                 "column, e.g. 'OpenLLM v1', 'Coding'); None: the suite's name")
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
    return _read(path)


def _read(path: Path) -> Suite:
    suite = Suite.model_validate(yaml.safe_load(path.read_text()))
    suite._file = path.resolve()
    return suite


def suite_digest(suite: Suite) -> str:
    """The suite's content: its file's sha256 (else its fields) and its task folder's digest."""
    parts = [sha256_file(suite._file)] if suite._file else [suite.model_dump_json()]
    if suite.include_dir:
        parts.append(digest_dir(suite.include_dir))
    return "-".join(parts)


def load_file(path: str, digest: str) -> Suite:
    """The suite preflight checked, as it travels to evaluation: read from its file (never looked up by its name,
    which a suite of one's own may share with a shipped one), refused if it is gone or its content (or its task
    folder's) is no longer `digest`, the digest its results are cached under."""
    file = Path(path)
    if not file.is_file():
        raise SuiteError(f"eval suite file {file} is gone since preflight: restore it, or rerun")
    suite = _read(file)
    if (now := suite_digest(suite)) != digest:
        raise SuiteError(f"eval suite file {file} (or its task folder) changed since preflight (digest {now[:12]}, "
                         f"{digest[:12]} checked): rerun")
    return suite


class SuiteError(ValueError):
    """A suite that lm-eval would reject, or would run differently from what the suite says."""


# lm-eval's result keys are "<metric>,<filter>": neither part may be empty or hold a comma or whitespace
# (real names include "pass@1", "0_accuracy", "strict-match", "maj@64", "acc_definició").
_METRIC_RE = re.compile(r"^[^\s,]+$")
_FILTER_RE = _METRIC_RE


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
    index = index or task_index.load(suite.include_dir)
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
            installed = ("the installed lm_eval/tasks" if task_index.lm_eval_tasks_dir()
                         else "lm_eval/tasks (lm_eval is not installed)")
            out.append(f"{where}: unknown lm-eval task: not in {installed}"
                       f"{' nor in ' + str(suite.include_dir) if suite.include_dir else ''}{hint}")
            continue
        if kind == "tag":
            out.append(f"{where}: is a tag (of {len(index.tags[t.task])} tasks), lm-eval reports no score under "
                       f"it: name one of {sorted(index.tags[t.task])[:6]}")
            continue
        leaves = task_index.leaves(t.task, index)
        if t.scorer is None and _METRIC_RE.match(t.metric) and _FILTER_RE.match(t.filter) \
                and not t.metric.endswith("_stderr"):
            if kind == "group":
                keys = task_index.group_result_keys(task_index.load_yaml(index.groups[t.task]))
                if not keys:
                    out.append(f"{where}: group has no aggregate_metric_list, lm-eval reports no score for it")
                elif t.result_key not in keys:
                    out.append(f"{where}: group reports {sorted(keys)}, not {t.result_key!r}")
            else:
                metrics, filters, open_ = task_index.result_keys(leaves[0][1])
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


def check(name: str, lm_eval_tasks: Path | None = None) -> Checked[Suite]:
    """The suite `name` names (shipped or a YAML path) and why it cannot run here, one line each with the fix: not
    found, invalid, tasks that the lm-eval running it (its lm_eval/tasks folder: `lm_eval_tasks`, default this
    environment's) does not know, and what its scored tasks need (code-execution opt-in, evalplus)."""
    from pydantic import ValidationError

    try:
        suite = load(name)
    except ValueError as e:
        if isinstance(e, ValidationError):
            return Checked(problems=[f"evaluation.suite {name!r}: not a valid suite file: "
                                     + "; ".join(validation_problems(e))])
        return Checked(problems=[f"evaluation.suite {name!r}: no such suite{did_you_mean(name, names())} (suites: "
                                 f"{', '.join(names())}; or give the path of a suite YAML file)"])
    except Exception as e:  # noqa: BLE001 - YAML errors and unreadable files
        return Checked(problems=[f"evaluation.suite {name!r}: cannot be read ({type(e).__name__}: {first_line(e)})"])
    found = [f"evaluation.suite {suite.name!r}: {p}"
             for p in problems(suite, task_index.load(suite.include_dir, lm_eval_tasks))]
    if found:
        return Checked(problems=found)
    if any(t.scorer for t in suite.tasks):
        from components.evaluation import humaneval, sandbox

        try:
            sandbox.require_opt_in()
        except sandbox.CodeExecutionNotAllowed as e:
            found.append(f"evaluation.suite {suite.name!r}: {e}")
        found += [f"evaluation.suite {suite.name!r}: {p}" for p in humaneval.problems(t.task for t in suite.tasks)]
    return Checked(suite, found)
