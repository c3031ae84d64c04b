"""What a flow run's page in Prefect shows first: the recovery table, where the variant went, links into MLflow."""
from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from components import tracking
from components.card.render import accuracy_table, gate_markdown, serving_table
from components.outcomes import VariantRecord


def recovery_markdown(r: VariantRecord) -> str:
    """The recovery table under the two names, its columns headed `base` and `variant`: headed by the full model
    names it was 1208 px wide, and Prefect's artifact pane (868 px at a 1440 px window) hid the verdict."""
    markdown = (f"**base** `{r.base.name}` · **variant** `{r.name}`\n\n"
                + accuracy_table(r.table, "base", "variant", r.gate) + "\n\n" + gate_markdown(r.gate))
    if r.speed:
        markdown += "\n\n" + serving_table(r.speed, "base", "variant")
    return markdown


def variant(r: VariantRecord, mlflow_run: str) -> None:
    """The variant's artifacts (its MLflow links when tracking goes to a server), and the same summary in its log."""
    markdown = recovery_markdown(r)
    url = tracking.run_url(mlflow_run)
    if url:
        create_link_artifact(key="mlflow-run", link=url, link_text=f"MLflow run of {r.name}",
                             description=f"{r.name} in MLflow: metrics with intervals, card, recipe, lm-eval outputs")
    comparison(r.base.name)
    where = [f"- card: `{r.card}`"] + [f"- {p.store}: {p.uri}" + (f" (revision `{p.revision}`)" if p.revision else "")
                                       for p in r.published]
    create_markdown_artifact(key="published", markdown="\n".join(where), description=f"Where {r.name} was published")
    create_markdown_artifact(key="recovery-table", markdown=markdown, description=f"{r.name}: recovery vs {r.base.name}")
    charts = tracking.experiment_url(r.base.name, charts=True)
    get_run_logger().info("Recovery of %s (%s engine):\n%s\nCard: %s\nMLflow run: %s%s", r.name,
                          r.variant_eval.settings.engine, markdown, r.card, url or mlflow_run,
                          f"\nMLflow charts: {charts}" if charts else "")


def comparison(base_name: str) -> None:
    """The `mlflow-comparison` link: every variant of the base in one table, headline columns first."""
    if url := tracking.experiment_url(base_name):
        create_link_artifact(key="mlflow-comparison", link=url, link_text=f"Variants of {base_name} in MLflow",
                             description=f"The variants of {base_name} side by side in MLflow: average recovery with "
                                         "its interval, gate, checkpoint size, serving speed")
