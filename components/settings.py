"""Process-wide settings from `QUANTFLOW_*` environment variables."""
from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_eval_python() -> Path:
    # The set-up command puts the evaluation environment next to the main one.
    return Path(sys.prefix).parent / ".venv-eval" / "bin" / "python"


class Settings(BaseSettings):
    """Where quantflow keeps its data and finds its other environment."""

    model_config = SettingsConfigDict(env_prefix="QUANTFLOW_")

    home: Path = Field(default=Path(".quantflow"), description="Data dir: models, calibration sets, checkpoints, eval results, MLflow store.")
    eval_python: Path = Field(default_factory=_default_eval_python, description="Python of the evaluation environment (vLLM + lm-eval).")
    mlflow_tracking_uri: str | None = Field(default=None, description="MLflow server; default: a SQLite store under home.")

    def path(self, *parts: str) -> Path:
        p = self.home.resolve().joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.path() / 'mlflow.db'}"


@lru_cache
def settings() -> Settings:
    return Settings()
