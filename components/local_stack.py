"""The local stack on 127.0.0.1 (Prefect server, MLflow server): started by `quantflow server up` and by the tests."""
from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from components.messages import Checked
from components.processes import free_port, start, stop, wait_http

BIN = Path(sys.executable).parent


def _no_answer(url: str) -> str | None:
    """Why the server at `url` does not answer /health (None: it answers; sent without user info or query)."""
    from components.redaction import safe_uri

    try:
        with urllib.request.urlopen(safe_uri(url).rstrip("/") + "/health", timeout=5):
            return None
    except urllib.error.HTTPError as e:
        if e.code < 500:
            return None  # it answers; auth or a proxy in front of /health is the server's business
        return f"HTTP {e.code}"
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {getattr(e, 'reason', e)}"


def prefect_api_problem(url: str) -> str | None:
    """Whether the Prefect API at `url` answers /health (one line naming it and the fix), before a run starts."""
    from components.redaction import safe_uri

    reason = _no_answer(url)
    if reason is None:
        return None
    return (f"Prefect API {safe_uri(url)} (PREFECT_API_URL) does not answer ({reason}): start it (`quantflow server "
            "up`), or unset PREFECT_API_URL to run with a temporary local server")


def check_tracking() -> Checked[None]:
    """The MLflow tracking server the run records to: no credentials in its URL (they would be printed and recorded),
    and, when it is a server, it answers /health; before a run, not after hours of work. No value."""
    from components.settings import settings
    from components.redaction import credentials_in_url, redact_url, safe_uri

    uri = settings().tracking_uri
    if credentials_in_url(uri):
        return Checked(problems=[f"QUANTFLOW_MLFLOW_TRACKING_URI {redact_url(uri)!r} carries credentials in the URL "
                                 "(they would be printed and recorded with it): remove them and set "
                                 "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead"])
    reason = _no_answer(uri) if uri.startswith(("http://", "https://")) else None
    if reason is None:
        return Checked()
    return Checked(problems=[f"MLflow tracking server {safe_uri(uri)} (QUANTFLOW_MLFLOW_TRACKING_URI) does not answer "
                             f"({reason}): start it (`quantflow server up`), or unset the variable to track in a local "
                             "SQLite store"])


def tethered(argv: list[str], grace: float = 3) -> list[str]:
    """`argv` run under components/tether.py: it dies with this process, however this process dies (SIGKILL too)."""
    return [sys.executable, str(Path(__file__).with_name("tether.py")), str(os.getpid()), str(grace), "--", *argv]


def prefect_server(home: Path, port: int | None = None, log: Path | None = None, ui: bool = False,
                   tied: bool = False, wait: bool = True) -> tuple[subprocess.Popen, str]:
    """`prefect server start` with its data under `home`, in its own session (a terminal's Ctrl-C reaches the
    caller, not the server); stopped again if it does not come up. `ui`: also serve the dashboard, which talks to
    this server's API (Prefect's UI otherwise assumes port 4200). `tied`: the server (and what it spawns) dies with
    this process (a temporary server; `quantflow server up --detach` must outlive it). `wait=False`: return at once;
    `wait_prefect(proc, url, log)` before using it (the caller does something else meanwhile)."""
    port = port or free_port()
    log = log or home / "prefect-server.log"
    url = f"http://127.0.0.1:{port}/api"
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": "",
           "PREFECT_UI_ENABLED": "true" if ui else "false", **({"PREFECT_UI_API_URL": url} if ui else {})}
    argv = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    proc = start(tethered(argv) if tied else argv, log, env)
    if wait:
        wait_prefect(proc, url, log)
    return proc, url


def wait_prefect(proc: subprocess.Popen, url: str, log: Path) -> None:
    """Until the server `prefect_server` started answers; stopped again if it does not."""
    try:
        wait_http(f"{url}/health", proc, log)
    except BaseException:
        stop(proc, grace=3)
        raise


def mlflow_server(home: Path, artifacts: str | None = None, env: dict | None = None,
                  port: int | None = None, log: Path | None = None) -> tuple[subprocess.Popen, str]:
    """An MLflow server on `home`'s store (`mlflow.db`, artifacts in `mlartifacts`), logging to `log`."""
    port = port or free_port()
    log = log or home / "mlflow-server.log"
    argv = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
            "--artifacts-destination", artifacts or str(home / "mlartifacts"), "--serve-artifacts"]
    proc = start(argv, log, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", proc, log)
    return proc, url
