"""The CLI commands a person types that talk to the Prefect server."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from servers import prefect_api

ROOT = Path(__file__).resolve().parents[1]
QUANTFLOW = str(Path(sys.executable).parent / "quantflow")


def quantflow(*args: str, env: dict | None = None, timeout: float = 240, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([QUANTFLOW, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_deploy_then_status(tmp_path):
    """As a person runs them: separate processes (an in-process CliRunner would leave Prefect's log handler bound to
    its closed streams). `deploy` works from any directory and gives one worker instruction, its own."""
    result = quantflow("deploy", "--concurrency-limit", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "prefect worker start" not in result.stdout + result.stderr, result.stdout
    assert (result.stdout + result.stderr).count("quantflow worker --pool quantflow-local") == 1, result.stdout
    with prefect_api() as api:
        assert api.get("/work_pools/quantflow-local").json()["concurrency_limit"] == 3  # one variant per GPU
        result = quantflow("deploy")  # unset: no limit (a redeploy lifts an old one)
        assert result.returncode == 0, result.stdout + result.stderr
        assert api.get("/work_pools/quantflow-local").json()["concurrency_limit"] is None
        for flow, name in (("quantize-variant", "quantize-variant"), ("sweep", "sweep")):
            assert api.get(f"/deployments/name/{flow}/{name}").status_code == 200
        deployment = api.get("/deployments/name/quantize-variant/quantize-variant").json()["id"]
        # created cancelled: a worker of another test must not pick it up
        for _ in range(5):  # the SQLite-backed test server can answer 5xx while another writer holds the database
            resp = api.post(f"/deployments/{deployment}/create_flow_run",
                            json={"parameters": {}, "state": {"type": "CANCELLED", "name": "Cancelled"}})
            if resp.status_code < 500:
                break
            time.sleep(1)
        assert resp.status_code == 201, resp.text
        run = resp.json()
        # The form and the API refuse what the spec refuses (the deployment enforces the parameter schema): an
        # unknown field, credentials in a URL; nothing is stored.
        secret = "qf-" + os.urandom(6).hex()
        for bad in ({"evaluation": {"limt": 5}},
                    {"stores": [{"kind": "s3", "uri": "s3://b/p", "endpoint_url": f"http://K:{secret}@127.0.0.1:9"}]}):
            resp = api.post(f"/deployments/{deployment}/create_flow_run",
                            json={"parameters": {"spec": bad}, "state": {"type": "CANCELLED", "name": "Cancelled"}})
            assert resp.status_code in (409, 422), resp.text
        runs = api.post("/flow_runs/filter", json={"deployments": {"id": {"any_": [deployment]}}}).json()
        assert all(secret not in json.dumps(r["parameters"]) and "limt" not in json.dumps(r["parameters"]) for r in runs)
    result = quantflow("status", "--limit", "50")
    assert result.returncode == 0, result.stdout + result.stderr
    assert run["name"] in result.stdout and "quantize-variant" in result.stdout and "Cancelled" in result.stdout


# --- what a person sees when something is wrong: one line per problem, printed once, exit 1 ----------------------


def lines(result: subprocess.CompletedProcess) -> list[str]:
    return [x for x in (result.stdout + result.stderr).splitlines() if x.strip()]


def test_spec_file_problems_are_one_line(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("- scheme: w8a8-int8\n")
    r = quantflow("run", "--spec", str(spec))
    assert r.returncode == 1 and lines(r) == [f"spec file {spec}: holds a list, not a mapping of spec fields "
                                              "(`quantflow spec` prints one)"], r.stdout + r.stderr
    spec.write_text("evaluation:\n  limt: 5\n")
    r = quantflow("run", "--spec", str(spec))
    assert r.returncode == 1 and [x.strip() for x in lines(r)] == [
        "invalid spec (1 problem):", "- evaluation: unknown field 'limt': did you mean 'limit'?"], r.stdout + r.stderr
    spec.write_text("calibraton:\n  num_samples: 4\n")
    r = quantflow("run", "--spec", str(spec), "--limit", "2")
    assert r.returncode == 1 and "- spec: unknown field 'calibraton': did you mean one of 'calibration'" in r.stderr


def test_credentials_in_a_url_are_refused_before_anything_runs(tmp_path):
    secret = "qf-" + os.urandom(6).hex()
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"stores:\n- kind: s3\n  uri: s3://b/p\n  endpoint_url: http://KEY:{secret}@127.0.0.1:9\n")
    r = quantflow("run", "--spec", str(spec))
    out = r.stdout + r.stderr
    assert r.returncode == 1 and secret not in out and "Traceback" not in out, out
    assert "stores.0: endpoint_url 'http://***@127.0.0.1:9' carries credentials in the URL" in out
    assert "AwsCredentials block" in out and len(lines(r)) == 2


def test_preflight_failure_is_printed_once_without_traceback(tmp_path):
    missing = tmp_path / "no-such-model"
    r = quantflow("run", "--model", str(missing), "--engine", "hf", "--limit", "1", "--no-serving")
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert out.count("no such directory or file") == 1 and "Traceback" not in out, out
    assert "preflight found 1 problem, nothing was started:" in out
    assert len(lines(r)) <= 8, out  # Prefect's few start-up lines, then the problem once

    verbose = quantflow("--verbose", "run", "--model", str(missing), "--engine", "hf", "--limit", "1", "--no-serving")
    assert verbose.returncode == 1 and "Traceback" in verbose.stdout + verbose.stderr


def test_dead_prefect_api_and_unusable_home_are_one_line(tmp_path):
    from components.local_stack import free_port

    port = free_port()
    r = quantflow("run", "--engine", "hf", env={"PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}, timeout=60)
    assert r.returncode == 1 and lines(r)[0] == "preflight found 1 problem, nothing was started:", r.stdout + r.stderr
    assert len(lines(r)) == 2 and lines(r)[1].startswith(f"  - Prefect API http://127.0.0.1:{port}/api (PREFECT_API_URL) "
                                                         "does not answer")

    (tmp_path / "file").write_text("x")
    r = quantflow("run", "--engine", "hf", env={"QUANTFLOW_HOME": str(tmp_path / "file" / "home")}, timeout=60)
    assert r.returncode == 1 and len(lines(r)) == 2, r.stdout + r.stderr
    assert "QUANTFLOW_HOME" in lines(r)[1] and "is a file" in lines(r)[1]


def test_compare_unknown_base_is_one_line():
    r = quantflow("compare", "no-such-base-model", timeout=120)
    assert r.returncode == 1 and lines(r) == [lines(r)[0]] and "no MLflow experiment quantflow/no-such-base-model" \
        in lines(r)[0], r.stdout + r.stderr


# --- Ctrl-C and SIGTERM that cannot be swallowed; nothing outlives a killed run ---------------------------------

SWALLOWED = textwrap.dedent('''
    import sys, time, weakref
    import flows.cli as cli

    cli.SIGNAL_EXIT_S = 600  # the exit deadline must not be what ends it
    marker = sys.argv[1]

    class Work:
        pass

    def finalizer():  # a weakref callback: an exception raised in it is printed ("Exception ignored in") and dropped
        open(marker, "w").close()
        deadline = time.time() + 5
        while time.time() < deadline:  # Python bytecode: the signal handler runs in here
            pass

    with cli._stoppable(cli._Console()):
        work = Work()
        weakref.finalize(work, finalizer)
        del work
        for i in range(600):  # the work the signal must stop
            print("working", i, flush=True)
            time.sleep(0.1)
''')


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_landing_in_a_finalizer_still_stops_the_command(tmp_path, sig):
    """The signal arrives while the main thread runs a weakref callback, where a KeyboardInterrupt raised by the
    handler is swallowed: the command still stops (130/143, without waiting for the exit deadline), and says so in
    one line with nothing after it (no "Exception ignored" traceback, no more work output)."""
    marker = tmp_path / "in-finalizer"
    proc = subprocess.Popen([sys.executable, "-c", SWALLOWED, str(marker)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
            time.sleep(0.05)
        os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)  # Ctrl-C reaches the group
        try:
            out, _ = proc.communicate(timeout=60)  # the work would go on for a minute
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("the stop was lost: the work went on\n" + proc.communicate()[0][-3000:])
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, out[-3000:]
    before, said, after = out.partition(f"Stopped by {signal.Signals(sig).name} during ")
    assert said and "rerun the same command to resume" in after and "Stopped by" not in before, out[-3000:]
    assert after.strip().count("\n") == 0 and "Exception ignored" not in out, out[-3000:]


TIED = textwrap.dedent('''
    import sys, time
    from pathlib import Path

    from prefect import flow, get_client

    import flows.cli as cli

    sentinel = Path(sys.argv[1])

    @flow(name="qf-drill-killed")
    def hang():
        from prefect.runtime import flow_run
        sentinel.write_text(str(flow_run.get_id()))
        time.sleep(600)

    with cli._flow_run() as tracked:  # as `quantflow run` does: a temporary server, a ledger
        if sys.argv[2] == "hang":
            tracked(hang)()
        else:  # the next command: what the killed one left RUNNING is marked on the way in
            with get_client(sync_client=True) as client:
                print("state:", client.read_flow_run(sentinel.read_text()).state.type.value, flush=True)
''')


def test_a_killed_run_leaves_no_server_and_the_next_run_marks_its_flow_run_crashed(tmp_path):
    """SIGKILL of a command's process group while its flow runs: the temporary Prefect server (in a session of its
    own, so the kill does not reach it) goes with it within seconds, and the next command marks the flow run the
    killed one left RUNNING in the database as CRASHED, saying so once."""
    import psutil

    sentinel = tmp_path / "flow-run-id"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=str(ROOT), QUANTFLOW_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"))
    proc = subprocess.Popen([sys.executable, "-c", TIED, str(sentinel), "hang"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not sentinel.exists():
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
            time.sleep(0.2)
        server = psutil.Process(proc.pid).children(recursive=True)
        assert any("server" in " ".join(p.cmdline()) for p in server), [p.cmdline() for p in server]
        assert all(os.getpgid(p.pid) != proc.pid for p in server), "the server is outside the command's group"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _, alive = psutil.wait_procs(server, timeout=30)
    assert not alive, ["the server outlived its command:", *[" ".join(p.cmdline()[:6]) for p in alive]]

    nxt = subprocess.run([sys.executable, "-c", TIED, str(sentinel), "next"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    out = nxt.stdout + nxt.stderr
    assert nxt.returncode == 0 and "state: CRASHED" in out, out[-3000:]
    marked = [x for x in out.splitlines() if "was left Running by a quantflow process that is gone" in x]
    assert len(marked) == 1 and sentinel.read_text() in marked[0] and "marked Crashed" in marked[0], out[-3000:]
    assert not list((tmp_path / "home" / "runs").iterdir()), "ledgers are removed once handled"


def test_hub_retries_are_said_once(capsys, caplog):
    """huggingface_hub's two lines per retry (through two handlers: 26 lines for one unreachable Hub) become one."""
    import logging

    from flows.cli import _HubRetries

    logger = logging.getLogger("huggingface_hub.utils._http")
    once = _HubRetries()
    logger.addFilter(once)
    try:
        for i in range(5):  # as huggingface_hub.utils._http.http_backoff logs them
            logger.warning("'[Errno 111] Connection refused' thrown while requesting HEAD http://127.0.0.1:9/o/m/config.json")
            logger.warning(f"Retrying in {2 ** i}s [Retry {i + 1}/5].")
        logger.warning("another warning from the same module")
    finally:
        logger.removeFilter(once)
    err = capsys.readouterr().err
    assert err.count("thrown while requesting") == 1 and "further retries not shown" in err and "Retry 1/5" not in err
    assert [r.getMessage() for r in caplog.records] == ["another warning from the same module"]  # the rest passes


def test_a_run_on_the_temporary_server_links_nothing_that_dies(tmp_path):
    """With no standing Prefect server, `quantflow run` reports to a temporary one that stops with the run: Prefect
    gets no UI address, so neither its "View at" line nor the MLflow run's flow-run tag points at a dead page."""
    code = ("from flows import cli\nfrom prefect.settings import get_current_settings\n"
            "from prefect.utilities.urls import url_for\n"
            "with cli._stoppable(cli._Console()) as stop, cli._prefect_api(stop):\n"
            "    print('api', get_current_settings().api.url)\n"
            "    print('link', url_for('flow-run', obj_id='123e4567-e89b-12d3-a456-426614174000'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    env.update(QUANTFLOW_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect-home"))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "api http://127.0.0.1:" in r.stdout and "link None" in r.stdout, r.stdout + r.stderr
