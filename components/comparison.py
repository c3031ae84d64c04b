"""The variants of one base model side by side, read back from MLflow (the system of record)."""
from __future__ import annotations

from pathlib import Path

from components.gate import GateVerdict
from components.recovery import RecoveryTable
from components.settings import settings


def variants(base_name: str) -> tuple[list[str], list[dict]]:
    """(task names, one row per variant run: name, scheme, gate, recovery per task with its interval and verdict,
    average with its interval and what it covers)."""
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
        m, tags = run.data.metrics, run.data.tags
        recovery = {k.removesuffix(".recovery"): v for k, v in m.items() if k.endswith(".recovery")}
        tasks += [t for t in recovery if t not in tasks]
        rows.append({"name": tags.get("quantflow.variant", run.info.run_name), "scheme": tags.get("quantflow.scheme", "?"),
                     "gate": tags.get("quantflow.gate", "?"), "recovery": recovery,
                     "interval": {t: (m.get(f"{t}.recovery_ci_low"), m.get(f"{t}.recovery_ci_high")) for t in recovery},
                     "verdict": {t: tags.get(f"quantflow.verdict.{t}") for t in recovery},
                     "average": m.get("average_recovery"),
                     "average_interval": (m.get("average_recovery_ci_low"), m.get("average_recovery_ci_high")),
                     "average_covers": tags.get("quantflow.average_covers"), "run_id": run.info.run_id})
    return tasks, rows


def _cell(x: float | None, bounds: tuple | None = None, verdict: str | None = None) -> str:
    text = "N/A" if x is None else f"{x:.2f}%"
    if bounds and bounds[0] is not None and bounds[1] is not None:
        text += f" [{bounds[0]:.2f}, {bounds[1]:.2f}]"
    return f"{text} {verdict}" if verdict else text


def markdown(tasks: list[str], rows: list[dict]) -> str:
    """One row per variant: each recovery with its interval and verdict, the average saying what it covers."""
    lines = ["| Variant | Scheme | " + " | ".join(tasks) + " | Average | Gate |", "|---" * (len(tasks) + 4) + "|"]
    for r in rows:
        cells = [_cell(r["recovery"].get(t), r.get("interval", {}).get(t), r.get("verdict", {}).get(t)) for t in tasks]
        covers = f" ({r['average_covers']})" if r.get("average_covers") else ""
        lines.append(f"| {r['name']} | {r['scheme']} | " + " | ".join(cells)
                     + f" | {_cell(r['average'], r.get('average_interval'))}{covers} | {r['gate']} |")
    return "\n".join(lines)


def chart_row(name: str, table: RecoveryTable, gate: GateVerdict) -> dict:
    """One variant as `chart` (and `markdown`) take it: recovery per task with its interval, average, gate."""
    return {"name": name, "gate": gate.state.value, "average": table.average_recovery,
            "average_interval": (table.average_ci_low, table.average_ci_high), "average_covers": table.average_covers,
            "recovery": {r.task: r.recovery for r in table.rows if r.recovery is not None},
            "interval": {r.task: (r.ci_low, r.ci_high) for r in table.rows if r.recovery is not None},
            "verdict": {t.task: t.state.value for t in gate.tasks if t.state.value != "N/A"}}


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
        bounds = [r.get("interval", {}).get(t) for t in tasks] + [r.get("average_interval")]
        err = [[max(v - b[0], 0) if b and b[0] is not None else 0 for v, b in zip(values, bounds, strict=True)],
               [max(b[1] - v, 0) if b and b[1] is not None else 0 for v, b in zip(values, bounds, strict=True)]]
        ax.bar([x + i * width for x in range(len(labels))], values, width, yerr=err, capsize=2,
               label=f"{r['name']} ({r['gate']})")
    ax.axhline(100, color="black", linewidth=0.8)
    ax.set_xticks([x + width * (len(rows) - 1) / 2 for x in range(len(labels))], labels)
    ax.set_ylabel("recovery (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
