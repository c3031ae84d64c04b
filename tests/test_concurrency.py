"""Two identical runs started together on one QUANTFLOW_HOME: both succeed, the checkpoint is made once, both
publish the same manifest, MLflow gets one run and one registered version, and no temporary file is left or published.

Two real processes (each `quantize_variant` in its own Python), the session's Prefect and MLflow servers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prefect_states import task_states
from tiny import tiny_spec

from components.specs import VariantSpec
from components.stores.base import MANIFEST

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not os.environ.get("PREFECT_API_URL") or not os.environ.get("QUANTFLOW_MLFLOW_TRACKING_URI"),
    reason="needs the session's Prefect and MLflow servers (QUANTFLOW_TEST_SERVERS=1)")

RUN = textwrap.dedent('''
    import os, sys
    from pathlib import Path

    import flows.quantize_variant as qv
    from components.specs import VariantSpec

    real = qv.quantize

    def counted(*a, **k):  # counts real quantizations (oneshot runs) across both processes
        with open(os.environ["QF_COUNT"], "a") as f:
            f.write(f"{os.getpid()}\\n")
        return real(*a, **k)

    qv.quantize = counted
    outcome = qv.quantize_variant(VariantSpec.model_validate_json(os.environ["QF_SPEC"]))
    Path(sys.argv[1]).write_text(outcome.model_dump_json())
''')


def test_two_identical_runs_at_once_share_one_checkpoint_and_one_record(tiny_model, tmp_path):
    from mlflow import MlflowClient

    name = "concurrent-twins"
    home = tmp_path / "home"
    spec = VariantSpec.model_validate(tiny_spec(tiny_model, variant_name=name, calibration__seed=3301,
                                                evaluation__seed=3301,
                                                stores=[{"kind": "local", "uri": str(tmp_path / "published")}]))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QUANTFLOW_HOME": str(home), "QF_COUNT": str(tmp_path / "count"),
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "prefect-results"), "QF_SPEC": spec.model_dump_json()}
    procs = []
    for i in (1, 2):
        log = open(tmp_path / f"run{i}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-c", RUN, str(tmp_path / f"outcome{i}.json")], cwd=ROOT, env=env,
                                      stdout=log, stderr=subprocess.STDOUT))
    for i, proc in enumerate(procs, 1):
        assert proc.wait(900) == 0, (tmp_path / f"run{i}.log").read_text()[-4000:]

    first, second = (json.loads((tmp_path / f"outcome{i}.json").read_text()) for i in (1, 2))
    assert len((tmp_path / "count").read_text().split()) == 1, "the checkpoint is quantized once"
    # every step computed by one run; the other waited for it and shows its result as Cached (as the UI does)
    states = [task_states(o["flow_run_id"]) for o in (first, second)]
    for step in ("resolve_base", "build_calibration", "quantize_checkpoint", "evaluate"):
        both = sorted(s for st in states for s in st[step])
        assert both == ["Cached"] * (len(both) // 2) + ["Completed"] * (len(both) // 2), (step, states)
    assert first["checkpoint"] == second["checkpoint"]
    assert first["published"] == second["published"], "the same manifest, the same revision"
    published = tmp_path / "published" / name
    m = json.loads((published / MANIFEST).read_text())
    on_disk = sorted(p.relative_to(published).as_posix() for p in published.rglob("*") if p.is_file())
    assert on_disk == sorted([f["path"] for f in m["files"]] + [MANIFEST]), "nothing stray published"
    assert not (tmp_path / "published" / ".revisions").exists(), "no second revision"
    leftovers = [p for p in home.rglob("*") if ".partial-" in p.name]
    assert not leftovers and not [p for p in (tmp_path / "published").iterdir() if ".partial-" in p.name], leftovers

    assert first["mlflow_run_id"] == second["mlflow_run_id"], "one MLflow run"
    versions = MlflowClient(os.environ["QUANTFLOW_MLFLOW_TRACKING_URI"]).search_model_versions(f"name = '{name}'")
    assert len(versions) == 1 and versions[0].run_id == first["mlflow_run_id"], versions


HOLD = textwrap.dedent('''
    import sys, time
    from flows.cache import LOCKS
    assert LOCKS.acquire_lock("quantize-abc", holder="other")
    print("held", flush=True)
    time.sleep(600)
''')


def test_a_killed_holder_does_not_block_the_next_run(tmp_path, monkeypatch):
    """Prefect's transaction lock (flows.cache.LOCKS): another holder blocks it, and dies without leaving it held."""
    from components.settings import settings
    from flows.cache import LOCKS

    monkeypatch.setenv("QUANTFLOW_HOME", str(tmp_path))
    settings.cache_clear()  # this process's lock folder under the same home as the holder's
    try:
        _hold_and_kill(LOCKS)
    finally:
        settings.cache_clear()  # the next test reads the session's home again (monkeypatch restores the variable)


def _hold_and_kill(LOCKS) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert LOCKS.is_locked("quantize-abc") and not LOCKS.acquire_lock("quantize-abc", "me", acquire_timeout=0.5)
        assert not LOCKS.wait_for_lock("quantize-abc", timeout=0.5)
    finally:
        holder.kill()
        holder.wait()
    assert LOCKS.acquire_lock("quantize-abc", "me", acquire_timeout=10) and LOCKS.is_lock_holder("quantize-abc", "me")
    with pytest.raises(ValueError, match="No lock held"):
        LOCKS.release_lock("quantize-abc", "someone else")
    LOCKS.release_lock("quantize-abc", "me")
    assert not LOCKS.is_locked("quantize-abc")
