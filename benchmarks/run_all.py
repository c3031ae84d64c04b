"""Benchmarks (run by hand, never in tests): overhead, cache, sweep dedup, engines, upload, memory.

    .venv/bin/python benchmarks/run_all.py [--sections overhead,cache,sweep,engines,upload,memory] [--repeats 1]

Each section writes benchmarks/results/<section>.json; docs/benchmarks.md is rewritten from all of them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests"))

SPEC = ["--num-samples", "16", "--max-seq-length", "512"]
SCHEMES = ["w8a8-int8", "fp8-dynamic"]


def sh(argv: list[str], env: dict | None = None, cwd: Path = ROOT) -> tuple[float, str]:
    t = time.time()
    proc = subprocess.run(argv, cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{argv} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.time() - t, proc.stdout + proc.stderr


def peak_rss_mb(output: str) -> float:
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", output).group(1)) / 1024


def base_dir() -> Path:
    """The embedded default converted once; every section starts from the same local directory."""
    from components.models import EMBEDDED_DEFAULT, resolve

    return Path(resolve(EMBEDDED_DEFAULT).path)


# The reference job is quantize + evaluate, as the bare scripts do it: no serving benchmark in these runs.
def quantflow_run(home: Path, base: Path, scheme: str) -> float:
    wall, _ = sh([str(BIN / "quantflow"), "run", "--model", str(base), "--scheme", scheme, *SPEC, "--no-serving"],
                 env={"QUANTFLOW_HOME": str(home)})
    return wall


def bare_run(base: Path, scheme: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        wall, _ = sh([str(BIN / "python"), "benchmarks/bare_reference.py", str(base), scheme, f"{tmp}/ckpt",
                      "--samples", "16", "--seq", "512"])
    return wall


# The data dir of the last quantflow w8a8-int8 run of the overhead section: the cache section reruns it.
FINISHED: dict[str, Path] = {}


def overhead(base: Path, repeats: int) -> dict:
    """`quantflow run` vs the same work as bare scripts, fresh data dirs (nothing cached); the order alternates
    (bare first, then quantflow first) from one pair to the next so that drift in machine load cancels."""
    rows, pair = {}, 0
    for scheme in SCHEMES:
        qf, bare = [], []
        for _ in range(repeats):
            home = Path(tempfile.mkdtemp(prefix="qf-bench-run-"))
            if pair % 2 == 0:
                bare.append(bare_run(base, scheme))
                qf.append(quantflow_run(home, base, scheme))
            else:
                qf.append(quantflow_run(home, base, scheme))
                bare.append(bare_run(base, scheme))
            pair += 1
            if scheme == "w8a8-int8":
                FINISHED.update({"home": home, "wall_s": qf[-1]})
            else:
                shutil.rmtree(home, ignore_errors=True)
        rows[scheme] = {"quantflow_s": qf, "bare_s": bare, "median_ratio": statistics.median(q / b for q, b in zip(qf, bare, strict=True))}
    return {"target": "<= 1.03", "repeats": repeats, "schemes": rows}


def cache(base: Path) -> dict:
    """A finished variant run again in the same data dir (the overhead section's last w8a8-int8 run, if there is one)."""
    if not FINISHED:
        home = Path(tempfile.mkdtemp(prefix="qf-bench-run-"))
        FINISHED.update({"home": home, "wall_s": quantflow_run(home, base, "w8a8-int8")})
    again = quantflow_run(FINISHED["home"], base, "w8a8-int8")
    shutil.rmtree(FINISHED["home"], ignore_errors=True)
    return {"target": "<= 0.02", "first_s": FINISHED["wall_s"], "cached_s": again, "ratio": again / FINISHED["wall_s"]}


def sweep(base: Path, separate: dict | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        args = [a for s in SCHEMES for a in ("--scheme", s)]
        wall, _ = sh([str(BIN / "quantflow"), "sweep", "--model", str(base), *args, "--no-serving"],
                     env={"QUANTFLOW_HOME": str(home)})
        evals = len(list((home / "evals").iterdir()))
        calibrations = len([p for p in (home / "calibration").iterdir() if not p.name.endswith(".partial")])
    out = {"variants": len(SCHEMES), "sweep_s": wall, "evaluations": evals, "base_evaluations": evals - len(SCHEMES),
           "calibration_builds": calibrations, "schemes": SCHEMES}
    if separate:
        out["separate_runs_s"] = sum(statistics.median(v["quantflow_s"]) for v in separate["schemes"].values())
        out["ratio_to_separate"] = wall / out["separate_runs_s"]
    return out


def lm_eval_timed(engine: str, model: Path, out: Path) -> dict:
    """One smoke-suite lm_eval run under /usr/bin/time: wall (engine start included), peak RSS, and generated
    tokens/s on the generative task (qf_arith: tokens of the logged completions / wall)."""
    from transformers import AutoTokenizer

    python = str(ROOT / ".venv-eval" / "bin" / "python") if engine == "vllm" else str(BIN / "python")
    tasks = ROOT / "components" / "evaluation" / "tasks"
    margs = f"pretrained={model},dtype=auto," + ("max_model_len=2048,enforce_eager=True" if engine == "vllm" else "max_length=2048")
    argv = ["/usr/bin/time", "-v", python, "-m", "lm_eval", "--model", engine, "--model_args", margs,
            "--tasks", "qf_facts,qf_arith,qf_prose", "--include_path", str(tasks), "--log_samples", "--seed", "1234",
            "--batch_size", "auto" if engine == "vllm" else "4", "--output_path", str(out)]
    if engine == "hf":
        argv += ["--device", "cpu"]
    wall, text = sh(argv, env={"VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": ""}, cwd=tasks)
    tok = AutoTokenizer.from_pretrained(str(model))
    completions = [r for f in out.rglob("samples_qf_arith_*.jsonl") for line in f.open()
                   for r in json.loads(line)["resps"][0]]
    generated = sum(len(tok(c, add_special_tokens=False)["input_ids"]) for c in completions)
    results = json.loads(max(out.rglob("results_*.json"), key=lambda p: p.stat().st_mtime).read_text())["results"]
    return {"wall_s": wall, "peak_rss_mb": peak_rss_mb(text), "generated_tokens": generated,
            "generated_tok_per_wall_s": generated / wall,
            "scores": {t: next(v for k, v in r.items() if isinstance(v, float) and "stderr" not in k) for t, r in results.items()}}


def engines(base: Path) -> dict:
    """vLLM (vllm-cpu) vs hf on the same suite and model; walls include each engine's start."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("vllm", "hf"):
            out[engine] = lm_eval_timed(engine, base, Path(tmp) / engine)
    out["hf_over_vllm"] = out["hf"]["wall_s"] / out["vllm"]["wall_s"]
    return out


def upload(base: Path) -> dict:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from servers import seaweed_s3

    from components.stores.s3 import S3Store

    files = [p for p in base.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    with seaweed_s3(buckets=("bench",)) as s3:
        env = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}
        os.environ.update(env)
        client = boto3.client("s3", endpoint_url=s3.endpoint_url)
        cfg = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=16 << 20, max_concurrency=8)
        t = time.time()
        for p in files:
            client.upload_file(str(p), "bench", f"raw/{p.relative_to(base)}", Config=cfg)
        raw = time.time() - t
        store = S3Store("bench", "qf", endpoint_url=s3.endpoint_url)
        t = time.time()
        store.put(base, "ckpt", {"bench": True})
        ours = time.time() - t
        t = time.time()
        store.put(base, "ckpt", {"bench": True})
        again = time.time() - t
    mb = size / 2**20
    return {"bytes": size, "raw_boto3_s": raw, "store_s": ours, "store_rerun_s": again,
            "raw_MBps": mb / raw, "store_MBps": mb / ours, "store_over_raw": ours / raw}


def memory(base: Path, engines_result: dict | None) -> dict:
    """Peak RSS of quantization (its own process) per model and calibration size; evaluation's from the engines section."""
    from tiny import make_tiny_llama

    out = {"quantize": [], "evaluate": []}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = make_tiny_llama(Path(tmp) / "tiny", str(base))
        for name, model in (("tiny", tiny), ("SmolLM2-135M", base)):
            for samples, seq in ((8, 128), (32, 512)):
                code = ("import sys; from pathlib import Path; from components import recipes; "
                        "from components.calibration import build, save; from components.specs import CalibrationSpec; "
                        "from components.quantize import quantize; from transformers import AutoTokenizer; "
                        f"spec = CalibrationSpec(num_samples={samples}, max_seq_length={seq}); "
                        f"ds, d = build(spec, AutoTokenizer.from_pretrained('{model}')); c = save(ds, d, spec, Path('{tmp}')); "
                        f"quantize('{model}', recipes.load('w8a8-int8'), c.path, Path('{tmp}/q'), {samples}, {seq})")
                wall, text = sh(["/usr/bin/time", "-v", str(BIN / "python"), "-c", code])
                out["quantize"].append({"model": name, "samples": samples, "seq": seq, "wall_s": wall, "peak_rss_mb": peak_rss_mb(text)})
    for engine, r in (engines_result or {}).items():
        if isinstance(r, dict):
            out["evaluate"].append({"model": "SmolLM2-135M", "engine": engine, "wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"]})
    return out


def machine() -> dict:
    import importlib.metadata as md

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(),
            "versions": {p: md.version(p) for p in ("prefect", "mlflow", "llmcompressor", "lm_eval", "transformers", "torch")}}


def write_doc() -> None:
    parts = ["# Benchmarks", "", "Run by hand: `.venv/bin/python benchmarks/run_all.py` (all sections) or `--sections a,b`. "
             "Each section's raw numbers are in `benchmarks/results/<section>.json`; this page is rewritten from them.", ""]
    total = RESULTS / "run_all.json"
    if total.exists():
        t = json.loads(total.read_text())
        parts += [f"Last run: `benchmarks/run_all.py --sections {t['sections']} --repeats {t['repeats']}` ({t['date']}): "
                  f"**{t['total_wall_s'] / 60:.1f} min** in all.", ""]
    for f in sorted(p for p in RESULTS.glob("*.json") if p != total):
        r = json.loads(f.read_text())
        parts += [f"## {f.stem}", "", f"- machine: {r['machine']['cores']} cores, {r['machine']['mem_gb']} GiB, "
                  f"Python {r['machine']['python']}; {', '.join(f'{k} {v}' for k, v in r['machine']['versions'].items())}",
                  f"- command: `{r['command']}` ({r['date']})", "", "```json", json.dumps(r["result"], indent=2), "```", ""]
    notes = ROOT / "benchmarks" / "notes.md"  # hand-written reading of the numbers: targets missed, why, what would close them
    if notes.exists():
        parts += [notes.read_text()]
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", default="overhead,cache,sweep,engines,upload,memory")  # memory after engines
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    home = Path(tempfile.mkdtemp(prefix="qf-bench-"))
    os.environ["QUANTFLOW_HOME"] = str(home)
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = base_dir()
    # One standing Prefect server for every quantflow run, as users run it (`quantflow server up`, deployments):
    # no run pays for starting a temporary one.
    from components.local_stack import prefect_server, stop

    (home / "prefect").mkdir()
    server, os.environ["PREFECT_API_URL"] = prefect_server(home / "prefect")
    done: dict = {}
    start = time.time()
    try:
        for section in a.sections.split(","):
            done[section] = run_section(section, base, a.repeats, done)
    finally:
        stop(server)
    (RESULTS / "run_all.json").write_text(json.dumps({"sections": a.sections, "repeats": a.repeats,
                                                     "total_wall_s": time.time() - start, "machine": machine(),
                                                     "date": time.strftime("%Y-%m-%d %H:%M")}, indent=2))
    write_doc()
    shutil.rmtree(home, ignore_errors=True)


def prior(section: str, done: dict) -> dict | None:
    """A section's result from this run, else from the last one on disk."""
    path = RESULTS / f"{section}.json"
    return done.get(section) or (json.loads(path.read_text())["result"] if path.exists() else None)


def run_section(section: str, base: Path, repeats: int, done: dict) -> dict:
    t = time.time()
    if section == "overhead":
        result = overhead(base, repeats)
    elif section == "sweep":
        result = sweep(base, prior("overhead", done))
    elif section == "memory":
        result = memory(base, prior("engines", done))
    else:
        result = globals()[section](base)
    record = {"result": result, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "command": f"benchmarks/run_all.py --sections {section}" + (f" --repeats {repeats}" if section == "overhead" else ""),
              "section_wall_s": time.time() - t}
    (RESULTS / f"{section}.json").write_text(json.dumps(record, indent=2))
    print(section, json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
