"""The Prefect UI and the MLflow UI as users meet them, in a real browser (Chromium + Playwright).

A process worker serves the session's Prefect server; a variant is launched from the deployment's custom-run form
(scheme picked from its dropdown, fields filled, submitted), runs to completion on the tiny model, and its artifacts
are read on their page; MLflow's experiment page then shows the variants with their recovery. Screenshots are kept
under .test-artifacts/screenshots/.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from browser import choose, form_field, page, select_options, shot
from components import tracking
from components.local_stack import start, stop
from servers import prefect_api

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
SCHEMES = sorted(p.stem for p in (ROOT / "components" / "recipes").glob("*.yaml"))


@pytest.fixture(scope="module")
def api():
    with prefect_api() as client:
        yield client


@pytest.fixture(scope="module")
def ui(api) -> str:
    """The dashboard's address: the session's Prefect server serves it."""
    url = os.environ["PREFECT_API_URL"].removesuffix("/api")
    r = httpx.get(url + "/", timeout=30)
    assert r.status_code == 200 and "<html" in r.text.lower(), f"the Prefect server serves no dashboard: {r.text[:200]}"
    return url


@pytest.fixture(scope="module")
def worker(data_root, api, tmp_path_factory):
    """Deployments from infra/prefect.yaml and a process worker whose project dir is a scratch copy of the layout.

    The deployments set no QUANTFLOW_HOME: runs launched from the form keep their data in the worker's (the session's
    home, not the default .quantflow under the project dir) and record into its MLflow server.
    """
    project = tmp_path_factory.mktemp("ui-project")
    for part in ("flows", "components"):
        (project / part).symlink_to(ROOT / part)
    env = {**os.environ, "PREFECT_HOME": str(project / "prefect-cli")}
    for argv in (["work-pool", "create", "quantflow-local", "--type", "process", "--overwrite"],
                 ["deploy", "--all", "--prefect-file", "infra/prefect.yaml"]):
        proc = subprocess.run([PREFECT, "--no-prompt", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    log = data_root / "ui-worker.log"
    proc = start([PREFECT, "worker", "start", "--pool", "quantflow-local", "--limit", "1"], log,
                 {"QUANTFLOW_PROJECT_DIR": str(project), "PREFECT_WORKER_QUERY_SECONDS": "1"})
    yield project
    stop(proc)


def _deployment(api, flow: str, name: str) -> str:
    r = api.get(f"/deployments/name/{flow}/{name}")
    r.raise_for_status()
    return r.json()["id"]


def _wait(api, run_id: str, log: Path, timeout: float = 900) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = api.get(f"/flow_runs/{run_id}").json()
        if run["state"]["type"] in TERMINAL:
            break
        time.sleep(2)
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{log.read_text()[-4000:]}"
    return run


def test_deployments_page_lists_both_flows(ui, worker):
    with page() as pg:
        pg.goto(f"{ui}/deployments", wait_until="networkidle")
        pg.get_by_text("quantize-variant").first.wait_for()
        pg.get_by_text("sweep").first.wait_for()
        shot(pg, "prefect-deployments")
        assert not pg.errors, pg.errors


def test_variant_launched_from_the_form_runs_and_shows_its_artifacts(ui, api, worker, tiny_model, data_root):
    deployment = _deployment(api, "quantize-variant", "quantize-variant")
    with page(height=1800) as pg:
        pg.goto(f"{ui}/deployments/deployment/{deployment}/run", wait_until="networkidle")
        scheme = form_field(pg, "Scheme")
        assert select_options(pg, scheme) == SCHEMES  # the recipe files, as choices
        choose(pg, scheme, "w8a8-int8")
        form_field(pg, "Base", "Source").locator("textarea").fill(str(tiny_model))
        form_field(pg, "Calibration", "Num Samples").locator("input").fill("8")
        form_field(pg, "Calibration", "Max Seq Length").locator("input").fill("64")
        choose(pg, form_field(pg, "Evaluation", "Engine"), "hf")
        form_field(pg, "Evaluation", "Limit").locator("input").fill("4")  # optional fields: plain inputs, no null tab
        form_field(pg, "Evaluation", "Serving", "Enabled").get_by_role("switch").click()
        form_field(pg, "Variant Name").locator("textarea").fill("tiny-from-the-form")
        # a clean form: no null branches, the auto|true|false field a choice, labels of their own
        assert pg.get_by_text('Property is type "None"').count() == 0
        assert pg.get_by_text("is a const and cannot be changed").count() == 0
        assert select_options(pg, form_field(pg, "Evaluation", "Overlap Base")) == ["auto", "true", "false"]
        for label in ("Calibration Batch Size", "Evaluation Batch Size", "Require GPU", "Relative Tolerance (rtol)"):
            assert form_field(pg, "Quantization" if label.startswith("Calibration") else "Evaluation", label).count(), label
        shot(pg, "prefect-run-form")
        run_name = pg.locator("input[type=text]").first.input_value()  # the form's generated Run Name
        pg.get_by_role("button", name="Submit").click()
        pg.wait_for_url(f"**/deployments/deployment/{deployment}?tab=Runs")  # the UI goes back to the deployment
        [run_id] = [r["id"] for r in api.post("/flow_runs/filter", json={
            "flow_runs": {"name": {"any_": [run_name]}}, "deployments": {"id": {"any_": [deployment]}}}).json()]

        run = _wait(api, run_id, data_root / "ui-worker.log")
        # written into the worker's home (a non-default one), not .quantflow under the project dir
        cards = Path(os.environ["QUANTFLOW_HOME"]).glob("checkpoints/*/README.md")  # folders named by cache key
        assert [c for c in cards if "tiny-from-the-form" in c.read_text()], "no card in the worker's home"
        assert not (worker / ".quantflow").exists(), list((worker / ".quantflow").rglob("*"))[:10]
        spec = run["parameters"]["spec"]  # what the form sent, as typed
        assert spec["base"]["source"] == str(tiny_model) and spec["evaluation"]["engine"] == "hf"
        assert spec["evaluation"]["limit"] == 4 and spec["evaluation"]["serving"]["enabled"] is False
        pg.goto(f"{ui}/runs/flow-run/{run_id}", wait_until="networkidle")
        pg.get_by_text("Completed").first.wait_for()
        shot(pg, "prefect-flow-run")

        artifacts = api.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
        table = next(a for a in artifacts if a["key"] == "recovery-table")
        pg.goto(f"{ui}/artifacts/artifact/{table['id']}", wait_until="networkidle")
        pg.get_by_text("Average").first.wait_for()
        shot(pg, "prefect-recovery-artifact")
        assert not pg.errors, pg.errors


def _pane_fit(pg, header: str) -> dict:
    """Where the rendered table and its `header` column sit: the table's width, the right edge of the header cell, and
    the right edge of the nearest ancestor that clips or scrolls it (else the window)."""
    return pg.evaluate("""header => {
        const th = [...document.querySelectorAll('th')].find(e => e.textContent.trim() === header);
        const table = th.closest('table');
        let pane = table.parentElement;
        while (pane && !['auto', 'scroll', 'hidden'].includes(getComputedStyle(pane).overflowX)) pane = pane.parentElement;
        const right = pane ? pane.getBoundingClientRect().right : window.innerWidth;
        return {table: table.getBoundingClientRect().width, header: th.getBoundingClientRect().right,
                pane: Math.min(right, window.innerWidth), scrolls: pane ? pane.scrollWidth > pane.clientWidth : false};
    }""", header)


def test_recovery_artifact_shows_the_verdict_at_1440(ui, api, tmp_path):
    """The `recovery-table` artifact as a laptop shows it (1440 x 900): the columns headed base / variant (the names
    above the table), so the verdict column is in the pane without scrolling, for the long names of a real base."""
    from records import variant_record

    from components.report import recovery_markdown

    record = variant_record(tmp_path, "Meta-Llama-3.1-8B-Instruct", "Meta-Llama-3.1-8B-Instruct-quantized.w8a8")
    r = api.post("/artifacts/", json={"key": "recovery-table", "type": "markdown", "data": recovery_markdown(record),
                                      "description": f"{record.name}: recovery vs {record.base.name}"})
    assert r.status_code == 201, r.text
    with page(width=1440, height=900) as pg:
        pg.goto(f"{ui}/artifacts/artifact/{r.json()['id']}", wait_until="networkidle")
        pg.get_by_role("columnheader", name="Verdict").first.wait_for()
        fit = _pane_fit(pg, "Verdict")
        shot(pg, "prefect-recovery-artifact-1440")
        print(fit)
        assert fit["header"] <= fit["pane"] and not fit["scrolls"], fit
        assert pg.get_by_text(record.name).first.is_visible()  # the names, above the table
        assert not pg.errors, pg.errors


# MLflow 3.17 opens its assistant panel by itself once per browser on a local server (a flag in the browser's
# localStorage, no server setting): the views are shown as a browser that has seen it once (a returning user) sees them
RETURNING = "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true')"


def _table_rows(pg, names: list[str]) -> dict[str, list[str]]:
    """Each named run's cells as drawn: the table draws the pinned name columns and the value columns as separate rows,
    in the same order (header rows, every run's name row, every run's value row)."""
    rows = pg.get_by_role("row").all_inner_texts()
    pinned = [r for r in rows if r.startswith("Pin run")]
    first = rows.index(pinned[0])
    values = [r for r in rows[first + len(pinned):] if r.strip()]
    assert len(pinned) == len(values), rows
    return {name: next(v for p, v in zip(pinned, values, strict=True) if f"\n{name}\n" in p).split("\n")
            for name in names}


@pytest.fixture(scope="module")
def glance(tmp_path_factory) -> str:
    """Two variants of one base recorded in the session's MLflow (records only, no flow run): its name."""
    import uuid

    from records import variant_record

    from components.digests import FileStamp

    tmp_path = tmp_path_factory.mktemp("glance")
    base = f"Llama-glance-{uuid.uuid4().hex[:6]}"
    weights = lambda size: [FileStamp(path="model.safetensors", size=size, mtime_ns=0, sha256="0" * 64)]  # noqa: E731
    for i, (name, values) in enumerate([("quantized.w8a8", (0.78, 0.27, 21.0)), ("quantized.w4a16", (0.79, 0.3, 20.2))]):
        (tmp_path / name).mkdir()
        record = variant_record(tmp_path / name, base, f"{base}-{name}", values=values, speed=i == 0)
        tracking.log_variant(record.model_copy(update={
            "checkpoint": record.checkpoint.model_copy(update={"files": weights((3 - i) * 2**20)}),
            "base": record.base.model_copy(update={"files": weights(6 * 2**20)})}))
    return base


def test_mlflow_shared_view_compares_variants_at_a_glance(glance):
    """Two variants of one base recorded in the session's MLflow, its link opened with no click: model-training mode,
    the gate in words, the average with its interval as a person reads them (2 decimals), size and compression, each
    task's recovery beside its verdict, every column in view at 1920 x 1080."""
    base = glance
    columns = ["quantflow.gate", "average_recovery", "average_recovery_ci_low", "average_recovery_ci_high",
               "checkpoint_mb", "compression", "qf_facts.verdict", "qf_arith.verdict", "qf_prose.verdict"]
    with page(width=1920, height=1080) as pg:
        pg.add_init_script(RETURNING)
        pg.goto(tracking.experiment_url(base), wait_until="load")
        pg.get_by_text("quantized.w4a16", exact=True).first.wait_for()
        for column in columns:
            header = pg.get_by_role("columnheader", name=column).first
            header.wait_for()
            box = header.bounding_box()
            assert box and box["x"] + box["width"] <= 1920, (column, box)
        assert pg.get_by_text("Model training", exact=True).first.is_visible()
        shot(pg, "mlflow-variants-at-a-glance")
        clipped = pg.evaluate("""() => [...document.querySelectorAll('[role=row] *')].filter(e => !e.children.length
            && e.scrollWidth > e.clientWidth + 1 && e.closest('[role=cell],[role=columnheader]')).map(e => e.textContent)""")
        assert not [c for c in clipped if c.strip() and not c.startswith("quantized.")], clipped  # nothing cut short
        cells = _table_rows(pg, ["quantized.w8a8", "quantized.w4a16"])
        # w8a8: the smoke scores of tests/records.py; w4a16 closer to the base
        assert {"INCONCLUSIVE", "95.45", "90.11", "101.79", "3", "2", "97.50 PASSED", "90.00 INCONCLUSIVE",
                "95.24 PASSED"} <= set(cells["quantized.w8a8"]), cells
        assert {"2", "3", "98.75 PASSED", "99.01 PASSED"} <= set(cells["quantized.w4a16"]), cells
        numbers = [c for c in cells["quantized.w8a8"] + cells["quantized.w4a16"] if re.fullmatch(r"[\d.]+", c)]
        assert numbers and all(re.fullmatch(r"\d+(\.\d{1,2})?", n) for n in numbers), numbers
        assert not pg.errors, pg.errors


def test_mlflow_shared_view_charts_each_variant_in_its_colour(glance):
    """The view's charts, opened by their link with no click at 1440 x 900: the average recovery between its interval's
    bounds (a bar chart each) and size against recovery, all four in view, each variant in its own colour."""
    titles = ["average_recovery_ci_low", "average_recovery", "average_recovery_ci_high", "checkpoint_mb vs. average_recovery"]
    colours = {tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in tracking.PALETTE[:2]}  # w8a8's, w4a16's
    with page(width=1440, height=900) as pg:
        pg.add_init_script(RETURNING)
        pg.goto(tracking.experiment_url(glance, charts=True), wait_until="load")
        section = pg.get_by_test_id("draggable-chart-cards-grid").first  # the first section: ours
        pg.get_by_text("Variants: recovery and size", exact=True).first.wait_for()
        section.locator(".scatterlayer .point").nth(1).wait_for()  # the scatter drawn last
        drawn = section.get_by_test_id("experiment-view-compare-runs-card").evaluate_all("""cards => cards.map(card => ({
            title: card.querySelector('h4').textContent, box: card.getBoundingClientRect().toJSON(),
            fills: [...card.querySelectorAll('.point path, path.point')].map(p => getComputedStyle(p).fill)}))""")
        shot(pg, "mlflow-charts")
        print(drawn)
        assert [c["title"] for c in drawn] == titles, drawn
        for chart in drawn:
            assert chart["box"]["bottom"] <= 900 and chart["box"]["right"] <= 1440, chart  # in view, no scrolling
            fills = {tuple(map(int, re.findall(r"\d+", f)[:3])) for f in chart["fills"]}
            assert len(chart["fills"]) == 2 and fills == colours, chart  # one mark per variant, in its colour
        assert not pg.errors, pg.errors


def test_mlflow_compares_two_variants(ui, api, worker, tiny_model, data_root):
    """A second variant (launched as the Run button does), then the MLflow link the flow gives: the runs table opens
    on the two variants by name with the headline columns (average recovery, its interval, the verdict), no set-up."""
    deployment = _deployment(api, "quantize-variant", "quantize-variant")
    spec = {"base": {"source": str(tiny_model)}, "scheme": "fp8-dynamic",
            "evaluation": {"engine": "hf", "limit": 4, "serving": {"enabled": False}}}
    r = api.post(f"/deployments/{deployment}/create_flow_run", json={"parameters": {"spec": spec}})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    _wait(api, run_id, data_root / "ui-worker.log")

    mlflow_url = os.environ["QUANTFLOW_MLFLOW_TRACKING_URI"]
    experiment = httpx.get(f"{mlflow_url}/api/2.0/mlflow/experiments/get-by-name",
                           params={"experiment_name": f"quantflow/{tiny_model.name}"}, timeout=30).json()["experiment"]
    assert {t["key"]: t["value"] for t in experiment["tags"]}["mlflow.experimentKind"] == "custom_model_development"
    url = tracking.experiment_url(tiny_model.name)
    artifacts = api.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
    [link] = [a["data"] for a in artifacts if a["key"] == "mlflow-comparison"]  # the link on the run's page
    assert link.endswith(f"]({url})"), link
    with page(width=2400, height=1000) as pg:
        pg.add_init_script(RETURNING)
        pg.goto(url, wait_until="load")
        pg.get_by_text("tiny-from-the-form", exact=True).first.wait_for()
        pg.get_by_text("FP8-dynamic", exact=True).first.wait_for()  # named by what sets it apart from its base
        for column in ("average_recovery", "average_recovery_ci_low", "average_recovery_ci_high", "quantflow.gate"):
            pg.get_by_role("columnheader", name=column).first.wait_for()
        shot(pg, "mlflow-two-variants")
        # the table draws the pinned name columns and the value columns as separate rows, in the same order; the
        # experiment may hold other tests' runs of this base, so each of ours is found by its name row
        rows = pg.get_by_role("row").all_inner_texts()
        names = [r for r in rows if r.startswith("Pin run")]
        first = rows.index(names[0])  # header rows, then every run's name row, then every run's value row
        values = [r for r in rows[first + len(names):] if r.strip()]
        assert len(names) == len(values) >= 2, rows
        for variant in ("tiny-from-the-form", "FP8-dynamic"):
            [shown] = [v for n, v in zip(names, values, strict=True) if f"\n{variant}\n" in n]
            # the average and its interval bounds as numbers and the verdict (cells in the page's order, which is not
            # the drawn one)
            cells = shown.split("\n")
            assert sum(bool(re.fullmatch(r"\d+(\.\d+)?", c)) for c in cells) >= 3, (variant, shown)
            assert {"PASSED", "FAILED", "INCONCLUSIVE"} & set(cells), (variant, shown)


def test_a_variant_recorded_before_server_up_is_on_its_dashboard(tmp_path):
    """As `make run` then `quantflow server up`: a variant recorded with no server (the home's SQLite store) is in the
    stack's MLflow once it runs, with its artifacts, and a browser finds it there: one store, nothing copied."""
    import json
    import socket

    quantflow = str(Path(sys.executable).parent / "quantflow")
    home, base = tmp_path / "home", "tiny-before-up"
    env = {k: v for k, v in os.environ.items() if k not in ("QUANTFLOW_MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    env.update(QUANTFLOW_HOME=str(home), PREFECT_HOME=str(tmp_path / "prefect-home"),
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    (tmp_path / "variant").mkdir()
    code = ("import sys\nfrom pathlib import Path\nfrom records import variant_record\nfrom components import tracking\n"
            "from components.settings import settings\nprint(settings().tracking_uri)\n"
            f"print(tracking.log_variant(variant_record(Path({str(tmp_path / 'variant')!r}), {base!r}, '{base}-w8a8')))\n")
    made = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr
    uri, run_id = made.stdout.split()[-2:]
    assert uri == f"sqlite:///{home.resolve() / 'mlflow.db'}", uri  # no server: the home's store

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(str(s.getsockname()[1]))
    up = subprocess.run([quantflow, "server", "up", "--detach"], env={
        **env, "QUANTFLOW_PREFECT_PORT": ports[0], "QUANTFLOW_MLFLOW_PORT": ports[1]},
        capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        stack = json.loads((home / "stack" / "stack.json").read_text())
        mlflow_url = stack["mlflow_url"]
        run = httpx.get(f"{mlflow_url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=30).json()["run"]
        assert run["info"]["run_name"] == "w8a8"
        files = httpx.get(f"{mlflow_url}/api/2.0/mlflow/artifacts/list", params={"run_id": run_id, "path": "card"},
                          timeout=30).json()
        assert [f["path"] for f in files["files"]] == ["card/README.md"], files
        experiment = run["info"]["experiment_id"]
        with page(width=1440, height=900) as pg:
            pg.goto(f"{mlflow_url}/#/experiments/{experiment}/runs?viewStateShareKey=quantflow", wait_until="load")
            pg.get_by_text("w8a8", exact=True).first.wait_for()
            shot(pg, "mlflow-recorded-before-server-up")
    finally:
        subprocess.run([quantflow, "server", "down"], env=env, capture_output=True, text=True, timeout=120)
