"""Process-wide settings from `QUANTFLOW_*` environment variables."""
from __future__ import annotations

import json
import os
import sys
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from components.messages import Checked


def _default_eval_python() -> Path:
    # The set-up command puts the evaluation environment next to the main one.
    return Path(sys.prefix).parent / ".venv-eval" / "bin" / "python"


class Stack(BaseModel):
    """The local stack `quantflow server up` started: while it runs, every quantflow command uses it."""

    prefect_api_url: str
    mlflow_url: str
    pids: list[int]

    def alive(self) -> bool:
        for pid in self.pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                pass
        return True


class Settings(BaseSettings):
    """Where quantflow keeps its data and finds its other environment."""

    model_config = SettingsConfigDict(env_prefix="QUANTFLOW_")

    home: Path = Field(default=Path(".quantflow"),
                       description="Data dir: models, calibration sets, checkpoints, eval results, MLflow store.")
    eval_python: Path = Field(default_factory=_default_eval_python,
                              description="Python of the evaluation environment (vLLM + lm-eval).")
    mlflow_tracking_uri: str | None = Field(default=None, description="MLflow server; default: a SQLite store under home.")
    artifact_store: str | None = Field(default=None, description="s3://bucket/prefix where each step's artifact is "
                                       "also kept, for other homes (pods) to fetch; default: none, home only.")

    def path(self, *parts: str) -> Path:
        p = self.home.resolve().joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def stack_file(self) -> Path:
        return self.home.resolve() / "stack" / "stack.json"

    def stack(self) -> Stack | None:
        """The running local stack under this home, if any (a file left by a stack that died counts as none)."""
        try:
            stack = Stack.model_validate(json.loads(self.stack_file.read_text()))
        except (OSError, ValueError):
            return None
        return stack if stack.alive() else None

    @property
    def tracking_uri(self) -> str:
        """QUANTFLOW_MLFLOW_TRACKING_URI, else the running stack's MLflow server, else a SQLite store under home."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        stack = self.stack()
        return stack.mlflow_url if stack else f"sqlite:///{self.path() / 'mlflow.db'}"


@lru_cache
def settings() -> Settings:
    return Settings()


# lm_eval splits --model_args on ',': a checkpoint path holding one reaches lm_eval as two broken arguments.
UNSAFE_PATH_CHARS = {",": "a comma", "\n": "a newline", "\r": "a carriage return"}


def path_chars_problem(path: Path) -> str | None:
    """Why lm_eval cannot be given `path` (it is passed inside --model_args), with the fix; None if it can."""
    found = [name for ch, name in UNSAFE_PATH_CHARS.items() if ch in str(path)]
    if not found:
        return None
    return (f"holds {' and '.join(found)}, which lm_eval's --model_args (pretrained=<path>,...) cannot carry: "
            "move or link it to a path without one")


def existing(path: Path) -> Path:
    """The nearest part of `path` that exists (itself or an ancestor): where it would be created, and on which disk."""
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_home() -> Checked[None]:
    """QUANTFLOW_HOME usable: a directory (or creatable as one), writable, with a path lm_eval can be given; checked
    before a run, since every artifact lands under it. No value."""
    home = settings().home.expanduser()
    what = f"QUANTFLOW_HOME {str(home)!r}"
    try:
        resolved = home.resolve()
    except OSError as e:
        return Checked(problems=[f"{what}: cannot be resolved ({e.strerror}): set QUANTFLOW_HOME to a writable directory"])
    problems = []
    nearest = existing(resolved)
    if nearest == resolved and not resolved.is_dir():
        problems.append(f"{what} exists and is not a directory: set QUANTFLOW_HOME to a directory")
    elif not nearest.is_dir():
        problems.append(f"{what} cannot be created: {nearest} is a file: set QUANTFLOW_HOME to a directory")
    elif not os.access(nearest, os.W_OK | os.X_OK):
        problems.append(f"{what}: {nearest} is not writable by this user: set QUANTFLOW_HOME to a writable "
                        "directory, or fix its permissions")
    chars = path_chars_problem(resolved)
    if chars:
        problems.append(f"{what} {chars} (checkpoints live under it)")
    return Checked(problems=problems)
