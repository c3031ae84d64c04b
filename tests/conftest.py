"""Session set-up: offline Hugging Face, a private data dir, real Prefect and MLflow servers on 127.0.0.1.

Servers start in pytest_configure, before any test module imports prefect or mlflow, so both
read their API URLs from the environment as users' processes do.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from components.local_stack import mlflow_server, prefect_server, stop

_procs = []
ROOT = Path(tempfile.mkdtemp(prefix="quantflow-tests-"))


def pytest_configure(config):
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["QUANTFLOW_HOME"] = str(ROOT / "home")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(ROOT / "home" / "prefect-results")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_LOGGING_TO_API_BATCH_INTERVAL"] = "0.3"
    (ROOT / "prefect").mkdir()
    (ROOT / "mlflow").mkdir()
    if os.environ.get("QUANTFLOW_TEST_SERVERS", "1") == "1":
        proc, url = prefect_server(ROOT / "prefect", ui=True)  # tests/test_ui.py drives its dashboard
        _procs.append(proc)
        os.environ["PREFECT_API_URL"] = url
        proc, url = mlflow_server(ROOT / "mlflow")
        _procs.append(proc)
        os.environ["QUANTFLOW_MLFLOW_TRACKING_URI"] = url


def pytest_unconfigure(config):
    for proc in reversed(_procs):
        stop(proc)
    if os.environ.get("QUANTFLOW_KEEP_TEST_DATA") != "1":  # set it to look at a session's data afterwards
        shutil.rmtree(ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def data_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def embedded_base():
    """The embedded default converted to bf16 safetensors (once per session, ~40 s)."""
    from components.models import EMBEDDED_DEFAULT, resolve

    return resolve(EMBEDDED_DEFAULT)


@pytest.fixture(scope="session")
def tiny_model(embedded_base) -> Path:
    from tiny import make_tiny_llama

    return make_tiny_llama(ROOT / "tiny-llama", embedded_base.path)
