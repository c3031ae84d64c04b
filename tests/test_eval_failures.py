"""An engine subprocess that fails (lm-eval, vLLM's server or benchmark) is reported with its log's last lines, and its
log outlives the step's temporary folder, named in the error (it was deleted with that folder before)."""
from __future__ import annotations

import sys

from components import artifacts
from components.evaluation import environment
from components.settings import settings


def test_a_failed_subprocess_keeps_its_log_and_shows_its_tail(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTFLOW_HOME", str(tmp_path / "home"))
    settings.cache_clear()
    try:
        out = tmp_path / "home" / "evals" / "f00d"
        with artifacts.locked(out):
            tmp = artifacts.workdir(out)  # what the evaluate step writes in, removed when it fails
            tmp.mkdir()
            log = tmp / "run0.log"
            script = "import sys\nfor i in range(40): print(f'line {i}')\nsys.exit('ValueError: config and weights differ')"
            rc = environment.run([sys.executable, "-u", "-c", script], log, {})
            try:
                error = environment.failed(f"lm_eval exited with {rc}", log)
            finally:
                artifacts.remove(tmp)
        home = tmp_path / "home"
    finally:
        settings.cache_clear()
    text = str(error)
    first, *tail = text.splitlines()
    [kept] = (home / "logs" / "failed").glob("*-f00d-*-run0.log")
    assert first == f"lm_eval exited with 1 (log: {kept}); its last lines:", first
    assert tail == [f"line {i}" for i in range(26, 40)] + ["ValueError: config and weights differ"], tail
    assert kept.read_text().splitlines()[0] == "line 0", "the whole log is kept"
    assert not tmp.exists()


def test_the_command_line_prints_the_whole_error():
    """The terminal gets the log's path and its tail, not just the first line and a pointer to --verbose."""
    from components.evaluation.environment import EvaluationError
    from flows.cli import _error_lines

    text = "lm_eval exited with 1 (log: /x/run0.log); its last lines:\nline 1\nValueError: shapes differ\n"
    assert _error_lines(EvaluationError(text)) == text
