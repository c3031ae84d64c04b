"""Run-to-run spread of the default demo: quantize the same base + calibration in fresh processes and fresh folders,
evaluate the same checkpoint in fresh processes, and compare checkpoint sha256 per file and scores.

    .venv/bin/python benchmarks/determinism.py --label after --quantize 2 --evaluate 3

Writes benchmarks/results/determinism-<label>.json. Uses a scratch QUANTFLOW_HOME (default /tmp/qf-determinism),
HF_HUB_OFFLINE=1, the embedded default model, the default spec's calibration and the `smoke` suite on vLLM-CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prepare() -> dict:
    """Base model and calibration set, as the flow builds them (cached in QUANTFLOW_HOME)."""
    from transformers import AutoTokenizer

    from components import calibration
    from components.models import EMBEDDED_DEFAULT, resolve
    from components.settings import settings
    from components.specs import VariantSpec

    spec = VariantSpec()
    base = resolve(EMBEDDED_DEFAULT)
    ds, description = calibration.build(spec.calibration, AutoTokenizer.from_pretrained(base.path))
    calib = calibration.save(ds, description, spec.calibration, settings().path("calibration"))
    return {"base": base.path, "calibration": calib.path, "num_samples": calib.num_samples,
            "max_seq_length": calib.max_seq_length, "scheme": spec.scheme}


def quantize_once(ctx: dict, out: str) -> None:
    from components import recipes
    from components.quantize import quantize

    quantize(ctx["base"], recipes.load(ctx["scheme"]), ctx["calibration"], Path(out), ctx["num_samples"],
             ctx["max_seq_length"])


def evaluate_once(model: str, out: str) -> None:
    from components.evaluation import suites
    from components.evaluation.command import EngineSettings
    from components.evaluation.runner import run_suite
    from components.specs import VariantSpec

    seed = VariantSpec().evaluation.seed
    s = EngineSettings(engine="vllm", platform="cpu", batch_size="auto", seed=seed)
    res = run_suite(model, suites.load("smoke"), s, Path(out), log=lambda m: None)
    Path(out, "scores.json").write_text(json.dumps({k: v.value for k, v in res.scores.items()}))


def file_digests(folder: Path) -> dict[str, str]:
    from components.digests import sha256_file

    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


def child(*args: str) -> float:
    start = time.time()
    subprocess.run([sys.executable, __file__, *args], check=True, cwd=ROOT)
    return round(time.time() - start, 1)


def spread(values: list[float]) -> dict:
    return {"values": values, "min": min(values), "max": max(values), "range": max(values) - min(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True)
    ap.add_argument("--quantize", type=int, default=2, help="fresh quantizations of the same base + calibration")
    ap.add_argument("--evaluate", type=int, default=3, help="fresh evaluations of the same checkpoint")
    ap.add_argument("--evaluate-model", default="variant",
                    help="base, variant (the first checkpoint quantized here) or a checkpoint folder")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        ctx = json.loads(Path(a.child[1]).read_text())
        quantize_once(ctx, a.child[2]) if a.child[0] == "quantize" else evaluate_once(a.child[2], a.child[3])
        return
    home = Path(os.environ.setdefault("QUANTFLOW_HOME", "/tmp/qf-determinism"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = home / "determinism" / a.label
    work.mkdir(parents=True, exist_ok=True)
    ctx = prepare()
    ctx_file = work / "ctx.json"
    ctx_file.write_text(json.dumps(ctx))
    report: dict = {"label": a.label, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                    "scheme": ctx["scheme"], "suite": "smoke", "quantize": [], "evaluate": []}
    ckpts = []
    for i in range(a.quantize):
        out = work / f"ckpt{i}"
        wall = child("--label", a.label, "--child", "quantize", str(ctx_file), str(out))
        ckpts.append(out)
        report["quantize"].append({"wall_s": wall, "files": file_digests(out)})
    if ckpts:
        first = report["quantize"][0]["files"]
        report["checkpoint_files_differing"] = sorted(
            {f for q in report["quantize"][1:] for f, d in q["files"].items() if first.get(f) != d})
    model = {"base": ctx["base"], "variant": str(ckpts[0]) if ckpts else None}.get(a.evaluate_model, a.evaluate_model)
    report["evaluated"] = a.evaluate_model if a.evaluate_model in ("base", "variant") else Path(model).name
    for i in range(a.evaluate):
        out = work / f"eval{i}"
        wall = child("--label", a.label, "--child", "evaluate", str(ctx_file), model, str(out))
        report["evaluate"].append({"wall_s": wall, "scores": json.loads((out / "scores.json").read_text())})
    if report["evaluate"]:
        tasks = report["evaluate"][0]["scores"]
        report["score_spread"] = {t: spread([e["scores"][t] for e in report["evaluate"]]) for t in tasks}
    dest = ROOT / "benchmarks" / "results" / f"determinism-{a.label}.json"
    dest.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report.get(k) for k in ("checkpoint_files_differing", "score_spread")}, indent=2))


if __name__ == "__main__":
    main()
