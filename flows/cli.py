"""`quantflow`: the one command line for everything a person types."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
import yaml

app = typer.Typer(help="Quantize LLMs with llm-compressor, evaluate them with lm-eval, publish them with their cards.",
                  no_args_is_help=True)


def _prefect_defaults() -> None:
    """Keep Prefect's results (the task cache) beside quantflow's data unless told otherwise."""
    from components.settings import settings

    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(settings().path("prefect-results")))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network at run time


def _with(data: dict, overrides: dict) -> dict:
    """`data` with dotted-key overrides (None: not given) applied."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return data


def _spec(spec_file: Optional[Path], overrides: dict):
    from components.specs import VariantSpec

    return VariantSpec.model_validate(_with(yaml.safe_load(spec_file.read_text()) if spec_file else {}, overrides))


@app.command()
def run(
    spec_file: Optional[Path] = typer.Option(None, "--spec", help="VariantSpec as YAML or JSON; flags override it."),
    model: Optional[str] = typer.Option(None, help="Base model: Hub id, local dir, GGUF file or pkg:<package>/<file>."),
    scheme: Optional[str] = typer.Option(None, help="Scheme name (see `quantflow schemes`)."),
    suite: Optional[str] = typer.Option(None, help="Eval suite (see `quantflow suites`)."),
    engine: Optional[str] = typer.Option(None, help="auto | vllm | hf"),
    dataset: Optional[str] = typer.Option(None, help="Calibration dataset: Hub id or local file."),
    num_samples: Optional[int] = typer.Option(None, help="Calibration samples."),
    max_seq_length: Optional[int] = typer.Option(None, help="Calibration sequence length."),
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N docs of each task."),
    serving: Optional[bool] = typer.Option(None, "--serving/--no-serving",
                                           help="Measure serving speed of base and variant with vLLM (default: on)."),
) -> None:
    """Run one variant end to end (quantize, evaluate base and variant, card, publish, track)."""
    _prefect_defaults()
    spec = _spec(spec_file, {"base.source": model, "scheme": scheme, "evaluation.suite": suite, "evaluation.engine": engine,
                             "calibration.dataset": dataset, "calibration.num_samples": num_samples,
                             "calibration.max_seq_length": max_seq_length, "evaluation.limit": limit,
                             "evaluation.serving.enabled": serving})
    from flows.quantize_variant import quantize_variant

    outcome = quantize_variant(spec)
    from components.card.render import accuracy_table, gate_markdown, serving_table
    from components.settings import settings

    typer.echo("\n" + accuracy_table(outcome.table, "base", outcome.name) + "\n\n" + gate_markdown(outcome.gate))
    if outcome.speed:
        typer.echo("\n" + serving_table(outcome.speed, "base", outcome.name))
    typer.echo(f"\nEngine: {outcome.engine}\nCard: {outcome.card}\nCheckpoint: {outcome.checkpoint}")
    for p in outcome.published:
        typer.echo(f"Published ({p.store}): {p.uri}")
    typer.echo(f"MLflow run: {outcome.mlflow_run_id}  (browse: mlflow ui --backend-store-uri {settings().tracking_uri})")


@app.command()
def sweep(
    schemes: list[str] = typer.Option(["w8a8-int8", "fp8-dynamic"], "--scheme", help="Repeat for each variant."),
    model: Optional[str] = typer.Option(None, help="Base model (default: the embedded default)."),
    suite: Optional[str] = typer.Option(None, help="Eval suite."),
    engine: Optional[str] = typer.Option(None, help="auto | vllm | hf"),
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N docs of each task."),
    serving: Optional[bool] = typer.Option(None, "--serving/--no-serving", help="Measure serving speed (default: on)."),
) -> None:
    """Several schemes of one base model; calibration and the baseline evaluation are computed once."""
    _prefect_defaults()
    from flows.sweep import SweepSpec, comparison, sweep as sweep_flow

    data = _with({"schemes": schemes}, {"base.source": model, "evaluation.suite": suite, "evaluation.engine": engine,
                                        "evaluation.limit": limit, "evaluation.serving.enabled": serving})
    outcomes = sweep_flow(SweepSpec.model_validate(data))
    typer.echo("\n" + comparison(outcomes))
    for o in outcomes:
        typer.echo(f"{o.name}: gate {'passed' if o.gate.passed else 'FAILED'}, card {o.card}")


@app.command()
def compare(base: str = typer.Argument(..., help="Base model name, e.g. SmolLM2-135M-Instruct."),
            png: Optional[Path] = typer.Option(None, help="Also write a bar chart of recovery per task here.")) -> None:
    """The variants of a base model side by side (recovery per task, gate), from MLflow."""
    from components import comparison

    tasks, rows = comparison.variants(base)
    typer.echo(comparison.markdown(tasks, rows))
    if png:
        typer.echo(f"chart: {comparison.chart(tasks, rows, png)}")


@app.command()
def deploy(prefect_file: Path = typer.Option(Path("infra/prefect.yaml"), help="Deployments to create."),
           pool: str = typer.Option("quantflow-local", help="Process work pool to create if missing.")) -> None:
    """Create the work pool (if missing) and deploy every deployment of the file to PREFECT_API_URL."""
    import subprocess
    import sys

    prefect = str(Path(sys.executable).parent / "prefect")
    for argv in ([prefect, "--no-prompt", "work-pool", "create", pool, "--type", "process", "--overwrite"],
                 [prefect, "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)]):
        if subprocess.run(argv).returncode:
            raise typer.Exit(1)
    _install_automations()
    typer.echo(f"Start a worker: QUANTFLOW_PROJECT_DIR=$PWD {prefect} worker start --pool {pool}")


def _install_automations() -> None:
    from components.automations import ZOMBIE, ensure_zombie_automation

    typer.echo(f"Automation {ZOMBIE}: {ensure_zombie_automation()} (a flow run whose heartbeats stop is marked CRASHED)")


@app.command()
def status(limit: int = typer.Option(10, help="How many recent runs.")) -> None:
    """Recent quantflow flow runs and their states, from the Prefect server."""
    import anyio
    from prefect import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    async def runs():
        async with get_client() as client:
            flows = {f.id: f.name for f in await client.read_flows()}
            return flows, await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=limit)

    flows, found = anyio.run(runs)
    for r in found:
        start = r.start_time.strftime("%Y-%m-%d %H:%M") if r.start_time else "-"
        typer.echo(f"{start}  {flows.get(r.flow_id, '?'):18} {r.name:24} {r.state_name or '-':10} {r.id}")


server = typer.Typer(help="The local stack: Prefect server and MLflow server on 127.0.0.1.")
app.add_typer(server, name="server")


@server.command("up")
def server_up(prefect_port: int = 4200, mlflow_port: int = 5000) -> None:
    """Start Prefect and MLflow servers (data under QUANTFLOW_HOME/stack) until Ctrl-C."""
    import time

    from components.local_stack import mlflow_server, prefect_server, stop
    from components.settings import settings

    procs = []
    try:
        proc, prefect_url = prefect_server(settings().path("stack", "prefect"), prefect_port)
        procs.append(proc)
        proc, mlflow_url = mlflow_server(settings().path("stack", "mlflow"), port=mlflow_port)
        procs.append(proc)
        os.environ["PREFECT_API_URL"] = prefect_url
        _install_automations()
        typer.echo(f"Prefect UI: {prefect_url.removesuffix('/api')}   MLflow UI: {mlflow_url}\nIn another shell:\n"
                   f"  export PREFECT_API_URL={prefect_url} QUANTFLOW_MLFLOW_TRACKING_URI={mlflow_url}")
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        typer.echo("a server exited; see the logs under " + str(settings().path("stack")), err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        for p in reversed(procs):
            stop(p)


@server.command("automations")
def server_automations() -> None:
    """Install (or bring up to date) quantflow's automations on the Prefect server at PREFECT_API_URL."""
    _install_automations()


@app.command()
def schemes() -> None:
    """List the named quantization schemes."""
    from components import recipes

    for name in recipes.names():
        s = recipes.load(name)
        typer.echo(f"{name:12} W:{s.weights:5} A:{s.activations or '16-bit':7} calibration:{'yes' if s.needs_calibration else 'no':3}  vLLM on: {','.join(s.vllm_platforms)}")


@app.command("suites")
def list_suites() -> None:
    """List evaluation suites and their tasks."""
    from components.evaluation import suites

    for name in suites.names():
        s = suites.load(name)
        typer.echo(f"{name}: {s.description}")
        for t in s.tasks:
            typer.echo(f"  - {t.task:40} {t.metric},{t.filter}  fewshot={t.num_fewshot}  {t.label}")


@app.command()
def spec() -> None:
    """Print the default VariantSpec as YAML (a starting point for --spec)."""
    from components.specs import VariantSpec

    typer.echo(yaml.safe_dump(json.loads(VariantSpec().model_dump_json()), sort_keys=False))


if __name__ == "__main__":
    app()
