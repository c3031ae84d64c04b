"""The variants of one base model side by side, read back from MLflow (the system of record)."""
from __future__ import annotations

from pathlib import Path

from components.gate import GateVerdict
from components.recovery import RecoveryTable
from components.settings import settings


def variants(base_name: str) -> tuple[list[str], list[dict]]:
    """(task names, one row per variant run: name, scheme, gate, recovery per task, average)."""
    import mlflow

    mlflow.set_tracking_uri(settings().tracking_uri)
    experiment = mlflow.get_experiment_by_name(f"quantflow/{base_name}")
    if experiment is None:
        raise ValueError(f"no MLflow experiment quantflow/{base_name} at {settings().tracking_uri}")
    runs = mlflow.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              output_format="list", order_by=["attributes.start_time ASC"])
    rows, tasks = [], []
    for run in runs:
        if run.data.tags.get("quantflow.role") in ("baseline", "sweep"):
            continue
        recovery = {k.removesuffix(".recovery"): v for k, v in run.data.metrics.items() if k.endswith(".recovery")}
        tasks += [t for t in recovery if t not in tasks]
        rows.append({"name": run.info.run_name, "scheme": run.data.tags.get("quantflow.scheme", "?"),
                     "gate": run.data.tags.get("quantflow.gate", "?"), "recovery": recovery,
                     "average": run.data.metrics.get("average_recovery"), "run_id": run.info.run_id})
    return tasks, rows


def markdown(tasks: list[str], rows: list[dict]) -> str:
    def cell(x):
        return "N/A" if x is None else f"{x:.2f}%"

    lines = ["| Variant | Scheme | " + " | ".join(tasks) + " | Average | Gate |", "|---" * (len(tasks) + 4) + "|"]
    lines += [f"| {r['name']} | {r['scheme']} | " + " | ".join(cell(r["recovery"].get(t)) for t in tasks)
              + f" | {cell(r['average'])} | {r['gate']} |" for r in rows]
    return "\n".join(lines)


def chart_row(name: str, table: RecoveryTable, verdict: GateVerdict) -> dict:
    """One variant as `chart` (and `markdown`) take it: recovery per task, average, gate."""
    return {"name": name, "gate": "passed" if verdict.passed else "failed", "average": table.average_recovery,
            "recovery": {r.task: r.recovery for r in table.rows if r.recovery is not None}}


def chart(tasks: list[str], rows: list[dict], path: Path) -> Path:
    """Grouped bars: recovery per task, one colour per variant, 100% marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = tasks + ["average"]
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 4))
    for i, r in enumerate(rows):
        values = [r["recovery"].get(t) or 0 for t in tasks] + [r["average"] or 0]
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=f"{r['name']} ({r['gate']})")
    ax.axhline(100, color="black", linewidth=0.8)
    ax.set_xticks([x + width * (len(rows) - 1) / 2 for x in range(len(labels))], labels)
    ax.set_ylabel("recovery (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
