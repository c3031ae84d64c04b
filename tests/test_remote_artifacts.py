"""Artifacts that outlive the pod: homes ("pods", each its own QUANTFLOW_HOME) sharing the session's Prefect server and
result storage and one SeaweedFS artifact store (QUANTFLOW_ARTIFACT_STORE).

Home A computes; home B's cache hits read copies fetched from the store and checked; with the store damaged (an object
deleted, a manifest removed, a file truncated), home C recomputes exactly the damaged steps and fetches the others.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from components import artifacts, remote
from components.digests import sha256_file
from components.evaluation.serving import ServingResult
from components.settings import settings
from components.specs import VariantSpec
from servers import ensure_bucket, prefect_api, seaweed_s3, use_only_these_aws_credentials
from tiny import tiny_spec

BUCKET = "quantflow-artifacts"
PREFIX = "pods"
STEPS = {"build calibration set": "calibration", "quantize w8a8-int8": "checkpoints", "evaluate base": "evals",
         "evaluate variant": "evals"}


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """SeaweedFS as the artifact store; the AWS environment holds its keys and endpoint only."""
    with seaweed_s3(tmp_path / "weed") as server:
        ensure_bucket(server, BUCKET)
        use_only_these_aws_credentials(monkeypatch, server, tmp_path)
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
        monkeypatch.setenv("QUANTFLOW_ARTIFACT_STORE", f"s3://{BUCKET}/{PREFIX}")
        try:
            yield server
        finally:
            settings.cache_clear()  # the homes below were read into it; the session's home comes back with the env


def _home(monkeypatch, home: Path) -> None:
    monkeypatch.setenv("QUANTFLOW_HOME", str(home))
    settings.cache_clear()


def _admin(s3):
    import boto3

    return boto3.client("s3", endpoint_url=s3.endpoint_url, aws_access_key_id=s3.access_key,
                        aws_secret_access_key=s3.secret_key, region_name="us-east-1")


def _run_in(home: Path, spec: dict, monkeypatch) -> tuple[str, float]:
    """The flow run's id and its seconds, run with `home` as QUANTFLOW_HOME (a pod of its own)."""
    from flows.quantize_variant import quantize_variant

    _home(monkeypatch, home)
    start = time.time()
    state = quantize_variant(VariantSpec.model_validate(spec), return_state=True)
    state.result()
    return str(state.state_details.flow_run_id), time.time() - start


def _read(flow_run_id: str) -> list[tuple[str, str, bool]]:
    import anyio
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def go():
        async with get_client() as client:
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    return sorted((r.name, r.state.name, r.state.is_final()) for r in anyio.run(go))


def states(flow_run_id: str, settle_s: float = 60) -> dict[str, list[str]]:
    """Task-run name ("evaluate base") -> its runs' states, once two reads agree and every run is final: a hit whose
    artifact failed its check shows as Cached, then Completed (recomputed)."""
    deadline, runs = time.time() + settle_s, _read(flow_run_id)
    while time.time() < deadline:
        time.sleep(1)
        again = _read(flow_run_id)
        if again == runs and all(done for _, _, done in runs):
            break
        runs = again
    out: dict[str, list[str]] = {}
    for name, state, _ in runs:
        out.setdefault(name, []).append(state)
    return out


def logs(flow_run_id: str, marker: str, n: int, settle_s: float = 30) -> list[str]:
    """The flow run's log messages holding `marker`, once at least `n` reached the server (logs are sent in batches)."""
    deadline, found = time.time() + settle_s, []
    with prefect_api() as api:
        while True:
            page, found = None, []
            while page != []:
                page = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200,
                                                      "offset": len(found)}).json()
                found += page
            found = [e["message"] for e in found if marker in e["message"]]
            if len(found) >= n or time.time() > deadline:
                return found
            time.sleep(1)


def artifacts_of(home: Path, checkpoint_name: str) -> dict[str, Path]:
    """Step run name -> its folder under `home` (the base's evaluation is the one whose commands name no checkpoint)."""
    evals = {p for p in (home / "evals").iterdir() if p.is_dir()}
    variant = [p for p in evals if str(home / "checkpoints") in str(artifacts.read_stamp(p).result["commands"])]
    [checkpoint] = [p for p in (home / "checkpoints").iterdir() if p.is_dir() and p.name.startswith(checkpoint_name)]
    [calib] = [p for p in (home / "calibration").iterdir() if p.is_dir()]
    return {"build calibration set": calib, "quantize w8a8-int8": checkpoint, "evaluate variant": variant[0],
            "evaluate base": (evals - set(variant)).pop()}


def files_of(folder: Path) -> dict[str, str]:
    """sha256 per file (the card excepted: each home writes its own into the checkpoint)."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in folder.rglob("*")
            if p.is_file() and p.name != "README.md"}


def test_a_second_pod_reads_fetched_copies_and_a_damaged_store_means_recompute(tiny_model, data_root, s3, monkeypatch):
    spec = tiny_spec(tiny_model, calibration__seed=29, evaluation__seed=29)  # keys of its own: home A computes
    homes = {h: data_root / f"pod-{h}" for h in "ABC"}
    timeline = []

    run_a, seconds = _run_in(homes["A"], spec, monkeypatch)
    a = states(run_a)
    assert all(a[step] == ["Completed"] for step in STEPS), a
    timeline.append(f"A {seconds:.0f} s: computed {', '.join(STEPS)}")
    made = artifacts_of(homes["A"], "tiny-llama")
    for step, folder in made.items():  # uploaded as made, committed by their manifests
        key = f"{PREFIX}/{STEPS[step]}/{folder.name}/quantflow-manifest.json"
        assert _admin(s3).head_object(Bucket=BUCKET, Key=key)["ContentLength"] > 0, step

    run_b, seconds = _run_in(homes["B"], spec, monkeypatch)
    b = states(run_b)
    for step in ("resolve base model", *STEPS):
        assert b[step] == ["Cached"], (step, b)
    fetched = logs(run_b, "artifact store: fetched", len(STEPS))
    assert len(fetched) == len(STEPS), fetched
    timeline.append(f"B {seconds:.0f} s: Cached and fetched {', '.join(STEPS)}")
    for step, folder in made.items():  # byte-identical copies, in B's own folders
        copy = homes["B"] / STEPS[step] / folder.name
        assert files_of(copy) == files_of(folder), step
        assert any(f"{STEPS[step]}/{folder.name} " in line for line in fetched), (step, fetched)

    # Damage the store: the calibration set's data file deleted, the checkpoint's manifest removed (as an upload that
    # never finished leaves it), the base evaluation's results file truncated.
    admin = _admin(s3)
    root = {step: f"{PREFIX}/{STEPS[step]}/{folder.name}/" for step, folder in made.items()}
    [arrow] = [k for k in _keys(admin, root["build calibration set"]) if k.endswith(".arrow")]
    admin.delete_object(Bucket=BUCKET, Key=arrow)
    admin.delete_object(Bucket=BUCKET, Key=root["quantize w8a8-int8"] + "quantflow-manifest.json")
    [results] = [k for k in _keys(admin, root["evaluate base"]) if Path(k).name.startswith("results_")]
    body = admin.get_object(Bucket=BUCKET, Key=results)["Body"].read()
    admin.put_object(Bucket=BUCKET, Key=results, Body=body[: len(body) // 2])

    run_c, seconds = _run_in(homes["C"], spec, monkeypatch)
    c = states(run_c)
    damaged = ("build calibration set", "quantize w8a8-int8", "evaluate base")
    for step in damaged:
        assert sorted(c[step]) == ["Cached", "Completed"], (step, c)  # the hit, refused, then the step again
    assert c["evaluate variant"] == ["Cached"], c
    fetched = logs(run_c, "artifact store: fetched", 1)
    assert len(fetched) == 1 and made["evaluate variant"].name in fetched[0], fetched
    refused = logs(run_c, "not fetched", len(damaged))
    assert len(refused) == len(damaged), refused
    timeline.append(f"C {seconds:.0f} s: recomputed {', '.join(damaged)}; fetched evaluate variant")
    for step in damaged:  # each recomputed artifact uploaded again: the store whole for the next pod
        assert admin.head_object(Bucket=BUCKET, Key=root[step] + "quantflow-manifest.json"), step
    print("\ntimeline: " + "; ".join(timeline))


def _keys(admin, prefix: str) -> list[str]:
    return [o["Key"] for o in admin.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]


def test_a_folder_made_in_one_home_is_fetched_whole_in_another_or_not_at_all(s3, tmp_path, monkeypatch, caplog):
    """One step's folder (a serving benchmark's, stamped as measure_serving stamps it) uploaded from home A, fetched in
    home B; a second upload sends nothing; a damaged object or a missing manifest is refused, never installed."""
    log = logging.getLogger("test_remote")
    _home(monkeypatch, tmp_path / "a")
    out = settings().path("serving") / "serving-0123"
    (out / "bench").mkdir(parents=True)
    (out / "server.log").write_text("INFO started\n")
    (out / "bench" / "result.json").write_text('{"output_throughput": 12.5}')
    made = ServingResult(output_tok_s=12.5, total_tok_s=20, requests_s=1, ttft_median_ms=5, ttft_p99_ms=9,
                         tpot_median_ms=1, completed=8, failed=0, engine_peak_mb=300, weights_gib=None,
                         checkpoint_mb=1.5, commands=[["vllm", "serve"]], wall_s=3, output_dir=str(out))
    artifacts.stamp(out, made)
    remote.upload(made, log)
    admin, root = _admin(s3), f"{PREFIX}/serving/serving-0123/"
    sent = {k: admin.head_object(Bucket=BUCKET, Key=k)["LastModified"] for k in _keys(admin, root)}
    assert sorted(Path(k).name for k in sent) == ["quantflow-manifest.json", "result.json", "server.log"]
    time.sleep(1.1)
    remote.upload(made, log)  # the same folder again: nothing sent
    assert {k: admin.head_object(Bucket=BUCKET, Key=k)["LastModified"] for k in _keys(admin, root)} == sent

    _home(monkeypatch, tmp_path / "b")
    here = remote.localized(made)
    assert here.output_dir == str(tmp_path / "b" / "serving" / "serving-0123") and here.artifact_problems()
    assert remote.fetch(here, log)
    assert not here.artifact_problems() and files_of(Path(here.output_dir)) == files_of(out)
    assert not list(Path(here.output_dir).parent.glob("*.partial-*"))

    # Damaged in the store, absent here: refused with the reason, nothing installed; the same without the manifest.
    _home(monkeypatch, tmp_path / "c")
    admin.put_object(Bucket=BUCKET, Key=root + "bench/result.json", Body=b'{"output_throughput": 99}')
    with caplog.at_level(logging.WARNING, logger="test_remote"):
        assert not remote.fetch(made, log)
    assert "checksum mismatch for bench/result.json" in caplog.text
    admin.delete_object(Bucket=BUCKET, Key=root + "quantflow-manifest.json")
    assert not remote.fetch(made, log)
    assert "no committed copy" in caplog.text
    assert not (tmp_path / "c" / "serving" / "serving-0123").exists()
    assert not list((tmp_path / "c" / "serving").glob("*.partial-*"))


def test_the_artifact_store_check(monkeypatch, tmp_path):
    """Unset: nothing checked. Credentials in the URI: refused, not printed. An endpoint that does not answer: said."""
    monkeypatch.delenv("QUANTFLOW_ARTIFACT_STORE", raising=False)
    settings.cache_clear()
    try:
        assert remote.check().problems == [] and remote.store() is None
        monkeypatch.setenv("QUANTFLOW_ARTIFACT_STORE", "s3://AKIAXXXX:sEcReTvAlUe@quantflow-artifacts/pods")
        settings.cache_clear()
        [problem] = remote.check().problems
        assert "carries credentials in the URL" in problem and "sEcReTvAlUe" not in problem
        monkeypatch.setenv("QUANTFLOW_ARTIFACT_STORE", "s3://quantflow-artifacts/pods")
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
        settings.cache_clear()
        [problem] = remote.check().problems
        assert problem.startswith("QUANTFLOW_ARTIFACT_STORE (s3://quantflow-artifacts/pods): ") and "reach" in problem
    finally:
        settings.cache_clear()
