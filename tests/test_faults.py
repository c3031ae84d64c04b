"""Fault drills on the tiny model (hf engine, 2 docs per task): each breaks one thing in the middle of a real run,
then checks that nothing is lost, nothing half-done is published or recorded, and that a rerun finishes from the cache.

  a. the quantization process is killed (SIGKILL) while writing its checkpoint
  b. the S3 server dies during the upload
  c. the MLflow server goes down after preflight
  d. the evaluation process crashes (SIGKILL), once and then twice
  f. the flow-run process is terminated (SIGTERM) or killed (SIGKILL) as a dying worker or pod would leave it
  g. `quantflow run` stopped by Ctrl-C (SIGINT to its process group) or SIGTERM: out in seconds, one line, no child
     left, the temporary Prefect server outside the group, the flow run recorded; the rerun resumes from the cache
     (the cheap drills beside them, a signal landing in a finalizer and a SIGKILLed command: tests/test_cli.py)
(e. Hub 429/5xx retried with backoff, 401 not retried: tests/test_store_hub.py.)

They need the session's Prefect and MLflow servers (the default; not with QUANTFLOW_TEST_SERVERS=0).
"""
from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from prefect_states import task_states
from servers import ensure_bucket, seaweed_s3, use_only_these_aws_credentials

from components.local_stack import stop
from components.settings import settings
from components.specs import VariantSpec
from components.stores.base import MANIFEST

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.skipif(not os.environ.get("PREFECT_API_URL") or not os.environ.get("QUANTFLOW_MLFLOW_TRACKING_URI"),
                       reason="needs the session's Prefect and MLflow servers (QUANTFLOW_TEST_SERVERS=1)"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def drill_spec(tiny: Path, tmp: Path, name: str, calib_seed: int = 42, eval_seed: int = 1234, stores=None,
               source: str | None = None) -> VariantSpec:
    return VariantSpec.model_validate({
        "base": {"source": source or str(tiny)}, "scheme": "w8a8-int8", "variant_name": name,
        "calibration": {"num_samples": 8, "max_seq_length": 64, "seed": calib_seed},
        "evaluation": {"engine": "hf", "limit": 2, "seed": eval_seed},
        "stores": stores or [{"kind": "local", "uri": str(tmp / "published")}]})


def flow_run_state(flow_run_id) -> str:
    import anyio
    from prefect import get_client

    async def go():
        async with get_client() as client:
            return (await client.read_flow_run(flow_run_id)).state

    return anyio.run(go)


def task_run_history(flow_run_id, task: str) -> list[list[str]]:
    """State names each run of `task` went through, in order (e.g. Pending, Running, Retrying, Running, Completed)."""
    import anyio
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def go():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            out = []
            for r in sorted(runs, key=lambda r: r.expected_start_time or r.created):
                if r.task_key.rsplit("-", 1)[0] == task:
                    states = await client.read_task_run_states(r.id)
                    out.append([s.name for s in sorted(states, key=lambda s: s.timestamp)])
            return out

    return anyio.run(go)


# --- a flow run in its own process, stopped at a chosen point --------------------------------------------------

HANG = textwrap.dedent('''
    import json, os, sys, time
    from pathlib import Path

    sentinel = Path(os.environ["QF_DRILL_SENTINEL"])

    def hang(what):
        from prefect.runtime import flow_run
        sentinel.write_text(json.dumps({"flow_run_id": str(flow_run.get_id()), "what": str(what), "pid": os.getpid()}))
        time.sleep(600)

    import transformers
    real_save = transformers.PreTrainedModel.save_pretrained

    def save_then_hang(self, path, *a, **k):  # the .partial-<id> checkpoint is on disk, not renamed yet
        real_save(self, path, *a, **k)
        if os.environ["QF_DRILL_HANG"] == "save_pretrained" and ".partial-" in Path(path).name:
            hang(path)

    transformers.PreTrainedModel.save_pretrained = save_then_hang

    import flows.quantize_variant as qv
    from components.specs import VariantSpec

    if os.environ["QF_DRILL_HANG"] == "resolve":
        qv.resolve = lambda *a, **k: hang("resolve")
    qv.quantize_variant(VariantSpec.model_validate_json(os.environ["QF_DRILL_SPEC"]))
''')


def start_flow_process(spec: VariantSpec, tmp: Path, hang_at: str, env: dict | None = None):
    sentinel = tmp / f"sentinel-{hang_at}.json"
    log = open(tmp / f"flow-{hang_at}.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", HANG], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "QF_DRILL_SENTINEL": str(sentinel),
                                 "QF_DRILL_HANG": hang_at, "QF_DRILL_SPEC": spec.model_dump_json(), **(env or {})})
    deadline = time.time() + 300
    while not sentinel.exists():
        assert proc.poll() is None, (tmp / f"flow-{hang_at}.log").read_text()[-3000:]
        assert time.time() < deadline, "the flow process never reached the drill point"
        time.sleep(0.2)
    time.sleep(0.2)
    return proc, json.loads(sentinel.read_text())


def kill(proc: subprocess.Popen, sig: int) -> None:
    os.killpg(proc.pid, sig)
    proc.wait(60)


def wait_flow_state(flow_run_id, types: set[str], timeout: float) -> str:
    deadline = time.time() + timeout
    while True:
        state = flow_run_state(flow_run_id)
        if state.type.value in types or time.time() > deadline:
            return state.type.value
        time.sleep(1)


# --- a. quantization killed mid-way ------------------------------------------------------------------------------

def test_a_quantization_killed_then_rerun_reuses_base_and_calibration(tiny_model, data_root, tmp_path):
    from flows.quantize_variant import quantize_variant

    spec = drill_spec(tiny_model, tmp_path, "drill-a", calib_seed=1001)
    proc, where = start_flow_process(spec, tmp_path, "save_pretrained")
    kill(proc, signal.SIGKILL)  # no handler runs: as the OOM killer or a lost machine would do it
    partial = Path(where["what"])
    assert ".partial-" in partial.name and partial.is_dir() and any(partial.glob("*.safetensors"))
    final = partial.with_name(partial.name.split(".partial-")[0])
    assert not final.exists(), "only ever a whole checkpoint under its final name"
    assert not (tmp_path / "published").exists(), "nothing published"
    killed = task_states(where["flow_run_id"], final=False)
    assert killed["build_calibration"] == ["Completed"] and killed["quantize_checkpoint"] == ["Running"], killed
    assert flow_run_state(where["flow_run_id"]).type.value == "RUNNING", "SIGKILL: nobody reports (see drill f)"

    state = quantize_variant(spec, return_state=True)
    outcome = state.result()
    states = task_states(state.state_details.flow_run_id)
    assert states["resolve_base"] == ["Cached"] and states["build_calibration"] == ["Cached"], states
    assert states["quantize_checkpoint"] == ["Completed"], states
    assert Path(outcome.checkpoint) == final and not partial.exists()
    assert (final / "recipe.yaml").exists() and (final / "tokenizer.json").exists()
    published = Path(outcome.published[0].uri.removeprefix("file://"))
    m = json.loads((published / MANIFEST).read_text())
    on_disk = sorted(p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file())
    assert sorted(f["path"] for f in m["files"]) == on_disk, "the whole checkpoint, with its card"


# --- b. S3 server dies during the upload -------------------------------------------------------------------------

def _aws_env(monkeypatch, tmp_path, s3) -> None:
    use_only_these_aws_credentials(monkeypatch, s3, tmp_path)


def test_b_s3_dies_during_upload_then_rerun_sends_only_what_is_missing(tiny_model, tmp_path, monkeypatch):
    import boto3
    import mlflow

    from components.stores import s3 as s3mod
    from flows.quantize_variant import quantize_variant
    from servers import _wait_s3

    restarted = None
    with seaweed_s3(tmp_path / "weed", buckets=("qf-drill",)) as s3:
        try:
            ensure_bucket(s3, "qf-drill")
            _aws_env(monkeypatch, tmp_path, s3)
            writes: list[str] = []
            died = []
            real_init = s3mod.S3Store.__init__

            def init(self, *a, **k):
                real_init(self, *a, **k)

                def record(params, model, **kw):
                    if model.name in ("PutObject", "CreateMultipartUpload"):
                        writes.append(params["Key"])

                def die_after_first_file(http_response, model, **kw):
                    if not died and http_response is not None and http_response.status_code == 200:
                        died.append(True)
                        os.killpg(s3.process.pid, signal.SIGKILL)  # the server dies mid-upload
                        s3.process.wait()

                self.client.meta.events.register("before-parameter-build.s3", record)
                if not died:
                    self.client.meta.events.register("after-call.s3.PutObject", die_after_first_file)

            monkeypatch.setattr(s3mod.S3Store, "__init__", init)
            store = {"kind": "s3", "uri": "s3://qf-drill/checkpoints", "endpoint_url": s3.endpoint_url}
            spec = drill_spec(tiny_model, tmp_path, "drill-b", stores=[store])
            state = quantize_variant(spec, return_state=True)
            assert state.is_failed()
            with pytest.raises(Exception, match=f"bucket 'qf-drill' at {s3.endpoint_url}"):
                state.result()
            first = task_states(state.state_details.flow_run_id)
            assert first["publish"] == ["Failed"] and "track" not in first, first
            assert died and writes, "the server died after the first file"
            client = mlflow.MlflowClient(settings().tracking_uri)
            assert client.search_model_versions("name = 'drill-b'") == [], "nothing recorded as published"
            experiments = [e.experiment_id for e in client.search_experiments()]
            assert not client.search_runs(experiments, "attributes.run_name = 'drill-b'"), "no MLflow run"

            # The server comes back on the same data dir and ports.
            log = tmp_path / "weed-restart.log"
            restarted = subprocess.Popen(s3.process.args, cwd=tmp_path / "weed", stdout=open(log, "w"),
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            _wait_s3(s3.endpoint_url, s3.access_key, s3.secret_key, restarted, log, 60)
            cli = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1", aws_access_key_id=s3.access_key,
                               aws_secret_access_key=s3.secret_key)  # not the default session: it caches old keys
            keys = {o["Key"] for o in cli.list_objects_v2(Bucket="qf-drill").get("Contents", [])}
            root = "checkpoints/drill-b/"
            assert keys and root + MANIFEST not in keys, ("no manifest after the failed run", keys)
            heads = {k: cli.head_object(Bucket="qf-drill", Key=k) for k in keys}
            there = {k: (h.get("Metadata", {}).get("sha256"), h["ContentLength"]) for k, h in heads.items()}

            writes.clear()
            again = quantize_variant(spec, return_state=True)
            outcome = again.result()
            states = task_states(again.state_details.flow_run_id)
            for name in ("resolve_base", "build_calibration", "quantize_checkpoint", "evaluate"):
                assert set(states[name]) == {"Cached"}, (name, states[name])
            assert outcome.published[0].uri == "s3://qf-drill/checkpoints/drill-b/"
            m = json.loads(cli.get_object(Bucket="qf-drill", Key=root + MANIFEST)["Body"].read())
            verified = {root + f["path"] for f in m["files"] if there.get(root + f["path"]) == (f["sha256"], f["size"])}
            assert verified, "at least the first file arrived whole before the server died"
            assert not verified & set(writes), "verified files are not sent again"
            assert sorted(writes) == sorted({root + f["path"] for f in m["files"]} - verified | {root + MANIFEST})
            assert writes[-1] == root + MANIFEST, "the manifest last"
            assert {root + f["path"] for f in m["files"]} | {root + MANIFEST} == \
                {o["Key"] for o in cli.list_objects_v2(Bucket="qf-drill")["Contents"]}
            [version] = client.search_model_versions("name = 'drill-b'")
            assert version.tags["quantflow.uri.s3"] == "s3://qf-drill/checkpoints/drill-b/"
        finally:
            if restarted is not None:
                stop(restarted)


# --- c. MLflow server down ---------------------------------------------------------------------------------------

def test_c_mlflow_down_keeps_the_work_and_rerun_records_once(tiny_model, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from components.local_stack import free_port, mlflow_server
    from flows import quantize_variant as qv

    home = tmp_path / "mlflow"
    home.mkdir()
    port = free_port()
    server, uri = mlflow_server(home, port=port)
    try:
        monkeypatch.setenv("QUANTFLOW_MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # fail in seconds, not after minutes of backoff
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        settings.cache_clear()
        real_preflight = qv.preflight

        def preflight_then_mlflow_dies(spec):
            plan = real_preflight(spec)  # the server answered /health here
            stop(server)
            return plan

        monkeypatch.setattr(qv, "preflight", preflight_then_mlflow_dies)
        spec = drill_spec(tiny_model, tmp_path, "drill-c")
        state = qv.quantize_variant(spec, return_state=True)
        assert state.is_failed()
        with pytest.raises(Exception) as ei:
            state.result()
        msg = str(ei.value)
        assert type(ei.value).__name__ == "TrackingError" and f"MLflow tracking at {uri} could not record 'drill-c'" in msg
        assert "kept (cached)" in msg
        first = task_states(state.state_details.flow_run_id)
        assert first["publish"] == ["Completed"] and first["track"] == ["Failed"], first
        assert first["quantize_checkpoint"][0] in ("Completed", "Cached") and len(first["evaluate"]) == 2

        monkeypatch.setattr(qv, "preflight", real_preflight)
        server, _ = mlflow_server(home, port=port)  # back, same store
        again = qv.quantize_variant(spec, return_state=True)
        outcome = again.result()
        states = task_states(again.state_details.flow_run_id)
        for name in ("resolve_base", "build_calibration", "quantize_checkpoint", "evaluate"):
            assert set(states[name]) == {"Cached"}, (name, states[name])
        client = MlflowClient(uri)
        run = client.get_run(outcome.mlflow_run_id)
        record = run.data.tags["quantflow.record"]
        runs = client.search_runs([run.info.experiment_id], f"tags.`quantflow.record` = '{record}'")
        assert [r.info.run_id for r in runs] == [outcome.mlflow_run_id] and runs[0].info.status == "FINISHED"
        [version] = client.search_model_versions("name = 'drill-c'")
        assert version.run_id == outcome.mlflow_run_id

        # Registration cut short after the run was recorded: the next rerun completes it, still one run, one version.
        client.delete_model_version("drill-c", version.version)
        third = qv.quantize_variant(spec, return_state=True).result()
        assert third.mlflow_run_id == outcome.mlflow_run_id
        assert len(client.search_runs([run.info.experiment_id], f"tags.`quantflow.record` = '{record}'")) == 1
        [version] = client.search_model_versions("name = 'drill-c'")
        assert version.run_id == outcome.mlflow_run_id
    finally:
        stop(server)
        settings.cache_clear()


# --- d. the evaluation process crashes ---------------------------------------------------------------------------

def _crashing_python(tmp: Path, fails: int) -> Path:
    """An interpreter that is SIGKILLed on its first `fails` starts, then runs lm_eval for real."""
    script = tmp / "crashing-python"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        n=$(( $(cat {tmp}/count 2>/dev/null || echo 0) + 1 )); echo $n > {tmp}/count; echo "$$ $n" >> {tmp}/calls
        if [ $n -le {fails} ]; then kill -9 $$; fi
        exec {sys.executable} "$@"
        """))
    script.chmod(0o755)
    (tmp / "count").unlink(missing_ok=True)
    (tmp / "calls").unlink(missing_ok=True)
    return script


def test_d_eval_crash_is_retried_in_a_fresh_process_and_never_cached(tiny_model, data_root, tmp_path, monkeypatch):
    from components.digests import digest_dir
    from components.evaluation import environment
    from components.preflight import preflight
    from flows.cache import evaluate_key
    from flows.quantize_variant import evaluate, quantize_variant

    # Once: the base evaluation's first process dies, the task's retry runs a new one, the flow completes.
    script = _crashing_python(tmp_path, fails=1)
    monkeypatch.setattr(environment, "python_for", lambda engine: str(script))
    spec = drill_spec(tiny_model, tmp_path, "drill-d", eval_seed=2001)  # engine settings no other test uses
    state = quantize_variant(spec, return_state=True)
    assert state.is_completed()
    pids = [line.split()[0] for line in (tmp_path / "calls").read_text().splitlines()]
    assert len(pids) == 3 and len(set(pids)) == 3, "base: crashed + retried, variant: one process each"
    [base_history, _] = task_run_history(state.state_details.flow_run_id, "evaluate")
    assert "Retrying" in base_history and base_history[-1] == "Completed", base_history

    # Twice (retries spent): the task fails, the flow fails, and nothing is cached under the baseline's key.
    spec2 = drill_spec(tiny_model, tmp_path, "drill-d", eval_seed=2002)
    script = _crashing_python(tmp_path, fails=2)
    state = quantize_variant(spec2, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"lm_eval exited with -9"):
        state.result()
    assert task_states(state.state_details.flow_run_id)["evaluate"] == ["Failed"]
    plan = preflight(spec2)
    base_key = evaluate_key(evaluate, {"model_digest": digest_dir(tiny_model), "suite_digest": plan.suite_digest,
                                       "engine": plan.engine})
    results = Path(os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"])
    assert not (results / base_key).exists(), "a failed evaluation leaves no cached result"
    assert any(p.name.startswith("evaluate-") for p in results.iterdir())

    # The same spec once the crashes stop: the baseline is evaluated again (not served from a cache), then completes.
    script = _crashing_python(tmp_path, fails=0)
    state = quantize_variant(spec2, return_state=True)
    assert state.is_completed()
    assert task_states(state.state_details.flow_run_id)["evaluate"] == ["Completed", "Completed"]
    assert (results / base_key).exists()


# --- f. the flow-run process terminated or killed --------------------------------------------------------------

def test_f_terminated_flow_process_ends_crashed(tiny_model, tmp_path):
    """SIGTERM (a worker, Docker or Kubernetes stopping the run): Prefect's engine reports CRASHED on the way out."""
    copy = tmp_path / "tiny-f"
    copy.mkdir()
    for p in tiny_model.iterdir():
        (copy / p.name).symlink_to(p)
    (copy / "drill-f.txt").write_text("a base of its own: keyed by content, it must not come from another's cache")
    spec = drill_spec(tiny_model, tmp_path, "drill-f", source=str(copy))
    proc, where = start_flow_process(spec, tmp_path, "resolve")
    assert flow_run_state(where["flow_run_id"]).type.value == "RUNNING"
    kill(proc, signal.SIGTERM)
    assert wait_flow_state(where["flow_run_id"], {"CRASHED"}, 30) == "CRASHED"


def test_f_killed_flow_process_is_marked_crashed_by_the_heartbeat_automation(tiny_model, tmp_path):
    """SIGKILL mid-quantization (a worker's machine or pod gone): nobody reports, the run would stay RUNNING forever.
    With heartbeats (PREFECT_FLOWS_HEARTBEAT_FREQUENCY) and the shipped zombie automation the server marks it CRASHED;
    the rerun completes, with the base model and calibration set from cache."""
    import anyio
    from prefect import get_client

    from components.automations import zombie_automation

    copy = tmp_path / "tiny-f2"
    copy.mkdir()
    for p in tiny_model.iterdir():
        (copy / p.name).symlink_to(p)
    # A calibration seed no other test uses: the quantization must not come from another drill's cache.
    spec = drill_spec(tiny_model, tmp_path, "drill-f2", calib_seed=1006, source=str(copy))
    proc, where = start_flow_process(spec, tmp_path, "save_pretrained", env={"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"})
    run_id = where["flow_run_id"]
    # The shipped automation (components/automations.py), scoped to this flow run: the session's other runs beat
    # every 180 s (the default) and must not be touched; 45 s (1.5 heartbeats) keeps the drill short.
    automation = zombie_automation(30, within=45, match={"prefect.resource.id": f"prefect.flow-run.{run_id}"},
                                   name=f"crash-zombie-{run_id}")

    async def create():
        async with get_client() as client:
            return await client.create_automation(automation)

    async def delete(aid):
        async with get_client() as client:
            await client.delete_automation(aid)

    async def heartbeats_since(since) -> int:
        from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

        async with get_client() as client:
            page = await client.read_events(EventFilter(
                occurred=EventOccurredFilter(since=since), event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
                resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"])), limit=10)  # the server caps 50
            return page.total

    armed_since = datetime.datetime.now(datetime.timezone.utc)
    automation_id = anyio.run(create)
    try:
        deadline = time.time() + 90  # a heartbeat after the automation exists arms it (one every 30 s)
        while not anyio.run(heartbeats_since, armed_since):
            assert time.time() < deadline, "no heartbeat from the flow-run process"
            time.sleep(1)
        time.sleep(2)
        assert flow_run_state(run_id).type.value == "RUNNING"
        kill(proc, signal.SIGKILL)
        assert wait_flow_state(run_id, {"CRASHED"}, 150) == "CRASHED"
    finally:
        anyio.run(delete, automation_id)

    from flows.quantize_variant import quantize_variant

    state = quantize_variant(spec, return_state=True)
    assert state.is_completed()
    states = task_states(state.state_details.flow_run_id)
    assert states["resolve_base"] == ["Cached"] and states["build_calibration"] == ["Cached"], states


# --- g. Ctrl-C or SIGTERM on `quantflow run` ---------------------------------------------------------------------

def _cli_run(tiny: Path, tmp: Path, name: str, seed: int) -> tuple[subprocess.Popen, list[str], list[str], dict]:
    """`quantflow run` on the tiny model as a terminal starts it: its own process group, no PREFECT_API_URL (so it
    starts its temporary Prefect server); stdout+stderr collected line by line in a thread."""
    import threading

    copy = tmp / f"tiny-{name}"
    if not copy.exists():
        copy.mkdir()
        for p in tiny.iterdir():
            (copy / p.name).symlink_to(p)
    spec = tmp / f"{name}.yaml"
    spec.write_text(json.dumps({
        "base": {"source": str(copy)}, "scheme": "w8a8-int8", "variant_name": name,
        "calibration": {"num_samples": 8, "max_seq_length": 64, "seed": seed},
        "evaluation": {"engine": "hf", "limit": 2, "serving": {"enabled": False}},
        "stores": [{"kind": "local", "uri": str(tmp / "published")}]}))
    # Nor Prefect's results folder: quantflow keeps Prefect's results (the task cache) under its own home
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_RESULTS_LOCAL_STORAGE_PATH", "PREFECT_LOCAL_STORAGE_PATH")}
    env["PREFECT_HOME"] = str(tmp / "prefect-home")
    env["QUANTFLOW_HOME"] = str(tmp / "home")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "quantflow"), "run", "--spec", str(spec)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    return proc, out, [str(spec)], env


def _wait_line(proc: subprocess.Popen, out: list[str], pattern: str, timeout: float = 400) -> None:
    import re

    deadline = time.time() + timeout
    while not any(re.search(pattern, line) for line in list(out)):
        assert proc.poll() is None, "".join(out)[-4000:]
        assert time.time() < deadline, f"no line matching {pattern!r}:\n" + "".join(out)[-4000:]
        time.sleep(0.2)


def _stop_and_check(proc, out, sig: int, to_group: bool, home: Path) -> str:
    """Send the signal while a heavy step runs; the run is out within 10 s, says where it stopped in one line,
    printed nothing after it, left no child process (the temporary server was in another group), and recorded its
    flow run's end through the API (its ledger is gone only then: components/orphans.py)."""
    import psutil

    children = psutil.Process(proc.pid).children(recursive=True)
    servers = [c for c in children if "server" in " ".join(c.cmdline())]
    assert servers and all(os.getpgid(c.pid) != proc.pid for c in servers), "temporary server outside the run's group"
    seen = len(out)
    start = time.time()
    if to_group:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    proc.wait(15)
    took = time.time() - start
    time.sleep(1)
    after = "".join(out[seen:])
    assert took < 10, f"took {took:.1f} s:\n{after}"
    assert proc.returncode == 128 + sig, (proc.returncode, after)
    stopped = [line for line in after.splitlines() if line.startswith("Stopped by")]
    assert len(stopped) == 1 and f"Stopped by {signal.Signals(sig).name} during step " in stopped[0], after
    assert "rerun the same command to resume" in stopped[0]
    assert after.split(stopped[0], 1)[1].strip() == "", after
    left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not left, [" ".join(c.cmdline()[:5]) for c in left]
    assert not list((home / "runs").glob("*.json")), "the stop recorded the flow run's end"
    return stopped[0]


def test_g_ctrl_c_stops_the_run_in_seconds_and_the_rerun_resumes(tiny_model, tmp_path):
    proc, out, args, env = _cli_run(tiny_model, tmp_path, "drill-g", seed=1007)
    try:
        _wait_line(proc, out, r"Task run 'build calibration set' - Finished in state Completed")
        time.sleep(1)  # into quantization (or evaluation)
        line = _stop_and_check(proc, out, signal.SIGINT, to_group=True, home=tmp_path / "home")
        print(line)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    rerun = subprocess.run([str(Path(sys.executable).parent / "quantflow"), "run", "--spec", *args], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    text = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, text[-4000:]
    import re

    for step in ("resolve base model", "build calibration set"):
        assert re.search(rf"Task run '{step}' - Finished in state Cached", text), (step, text[-4000:])
    # ... from the results kept under QUANTFLOW_HOME, not Prefect's own folder (which every home would share)
    kept = {p.name.split("-")[0] for p in (tmp_path / "home" / "prefect-results").iterdir()}
    assert {"base", "calibration"} <= kept and not (tmp_path / "prefect-home" / "storage").exists(), kept
    assert "Published (local)" in text and "Traceback" not in text and "by a quantflow process that is gone" not in text
    # A readable log: no bytecode from dataset fingerprinting, the recovery table once (the command prints it).
    assert "LOAD_DEREF" not in text and "COPY_FREE_VARS" not in text, text[-4000:]
    assert text.count("| Benchmark |") == 1, text[-4000:]
    print(f"rerun: {len(text.splitlines())} lines")


def test_g_sigterm_stops_the_run_in_seconds(tiny_model, tmp_path):
    proc, out, _, _ = _cli_run(tiny_model, tmp_path, "drill-g2", seed=1008)
    try:
        _wait_line(proc, out, r"Task run 'build calibration set' - Finished in state Completed")
        time.sleep(1)
        print(_stop_and_check(proc, out, signal.SIGTERM, to_group=False, home=tmp_path / "home"))  # as a supervisor does
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_g_the_exit_deadline_starts_when_the_signal_arrives():
    """A Python handler that does not hand the signal back in time (Prefect's, waiting on a slow API) cannot hold the
    run: the clock started by the signal's arrival calls give_up after SIGNAL_EXIT_S."""
    from flows.cli import SIGNAL_EXIT_S

    script = textwrap.dedent("""
        import os, signal, sys, time
        from flows.cli import _signal_clock
        signal.signal(signal.SIGTERM, lambda *a: time.sleep(120))  # a handler that never hands back in time
        _signal_clock(lambda signum: os._exit(100 + signum))
        print("ready", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        start = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(SIGNAL_EXIT_S + 10)
        took = time.time() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 100 + signal.SIGTERM, proc.stdout.read()
    assert SIGNAL_EXIT_S - 1 < took < SIGNAL_EXIT_S + 3, took
