"""Evaluation suites: one YAML file each in suites/, each task with its exact lm-eval settings."""
from __future__ import annotations

from pathlib import Path

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
