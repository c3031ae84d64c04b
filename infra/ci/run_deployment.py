"""Run a quantflow deployment, wait for it, and print its recovery table (for .github/workflows/quantize.yml).

    python infra/ci/run_deployment.py --deployment quantize-variant/quantize-variant \
        --base-model HuggingFaceTB/SmolLM2-135M-Instruct --scheme w8a8-int8 --suite smoke

Reads PREFECT_API_URL (and PREFECT_API_KEY for Prefect Cloud) from the environment. With --timeout the wait ends
there and the flow run goes on on its work pool (a 70B GPTQ run outlasts any hosted CI job): the summary says it is
still running, with its link, and the exit status is 0; a run that ended in any state but Completed exits 1. The
run's `spec` parameter is the deployment's own `spec` defaults with the given fields laid over them (a run's parameters
replace the deployment's top-level ones, so without this a GPU deployment's `engine: vllm` would be dropped). The markdown
artifacts the flow publishes (`recovery-table`, `sweep-recovery`) are printed and, under GitHub Actions,
appended to $GITHUB_STEP_SUMMARY. Exit status 0 only when the flow run ends Completed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

ARTIFACT_KEYS = ("recovery-table", "sweep-recovery")


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` laid on `base`, nested mappings merged key by key (neither argument is changed)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def spec_overrides(base_model: str | None = None, scheme: str | None = None, suite: str | None = None,
                   spec_json: str | None = None) -> dict[str, Any]:
    """The VariantSpec fields a caller set; empty values mean 'the deployment's default'."""
    spec: dict[str, Any] = json.loads(spec_json) if spec_json else {}
    if not isinstance(spec, dict):
        raise ValueError("--spec-json must be a JSON object (VariantSpec fields)")
    if base_model:
        spec = merge(spec, {"base": {"source": base_model}})
    if scheme:
        spec = merge(spec, {"scheme": scheme})
    if suite:
        spec = merge(spec, {"evaluation": {"suite": suite}})
    return spec


def summary(deployment: str, flow_run_name: str, state: str, url: str | None, tables: dict[str, str],
            spec: dict[str, Any], waited: float | None = None) -> str:
    """Markdown for the job summary: what ran, how it ended (or that it goes on after `waited` seconds), then each
    recovery table."""
    lines = [f"## {deployment}: `{flow_run_name}` {state}", ""]
    if waited is not None:
        lines += [f"Still running after {waited:.0f} s: this job stopped waiting, the flow run goes on on its work pool "
                  "and publishes its recovery table there.", ""]
    if url:
        lines += [f"Flow run: {url}", ""]
    lines += ["<details><summary>spec</summary>", "", "```json", json.dumps(spec, indent=2), "```", "", "</details>", ""]
    if not tables:
        lines.append("_No recovery table: the flow run ended before publishing one._")
    for key, markdown in tables.items():
        lines += [f"### {key}", "", markdown.strip(), ""]
    return "\n".join(lines) + "\n"


def recovery_tables(client, flow_run_id) -> dict[str, str]:
    """The flow run's own markdown artifacts named in ARTIFACT_KEYS, by key."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=list(ARTIFACT_KEYS))))
    return {a.key: a.data for a in artifacts if isinstance(a.data, str)}


def _ui_url(flow_run_id) -> str | None:
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}" if base else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--deployment", default="quantize-variant/quantize-variant", help="flow-name/deployment-name")
    p.add_argument("--base-model", default=os.environ.get("QF_BASE_MODEL"), help="spec.base.source")
    p.add_argument("--scheme", default=os.environ.get("QF_SCHEME"), help="spec.scheme")
    p.add_argument("--suite", default=os.environ.get("QF_SUITE"), help="spec.evaluation.suite")
    p.add_argument("--spec-json", default=os.environ.get("QF_SPEC_JSON"), help="more spec fields as a JSON object")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait; the flow run goes on after (default: until it ends)")
    p.add_argument("--summary-file", default=os.environ.get("GITHUB_STEP_SUMMARY"), help="append the summary here")
    args = p.parse_args(argv)

    from prefect import get_client
    from prefect.deployments import run_deployment

    overrides = spec_overrides(args.base_model, args.scheme, args.suite, args.spec_json)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(args.deployment)
        spec = merge((deployment.parameters or {}).get("spec") or {}, overrides)
    tags = ["github-actions", f"gh-run-{os.environ['GITHUB_RUN_ID']}"] if os.environ.get("GITHUB_RUN_ID") else None
    print(f"Running {args.deployment} with spec {json.dumps(spec)}", flush=True)
    flow_run = run_deployment(name=args.deployment, parameters={"spec": spec}, timeout=args.timeout, tags=tags,
                              as_subflow=False)
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run.id)
        tables = recovery_tables(client, flow_run.id)
    state = flow_run.state.name if flow_run.state else "Unknown"
    going_on = not (flow_run.state and flow_run.state.is_final())
    text = summary(args.deployment, flow_run.name, state, _ui_url(flow_run.id), tables, spec,
                   waited=float(args.timeout) if going_on else None)
    print(text)
    if args.summary_file:
        with open(args.summary_file, "a") as f:
            f.write(text)
    if going_on:
        print(f"Flow run {flow_run.name} is still {state} after {float(args.timeout):.0f} s: it goes on on its work pool",
              file=sys.stderr)
        return 0
    if not flow_run.state.is_completed():
        print(f"Flow run {flow_run.name} ended {state}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
