"""Benchmarks (run by hand, never in tests): overhead and cache, sweep dedup, engines, upload, memory.

    .venv/bin/python benchmarks/run_all.py [--sections overhead,sweep,engines,upload,memory] [--repeats 3]

Every timed figure is measured `--repeats` times; the raw values go to benchmarks/results/<section>.json (the overhead
section writes overhead.json and cache.json), and docs/benchmarks.md is rewritten from them: per goal, a table of
medians against their targets, then benchmarks/notes.md (the hand-written reading).
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
ALL_SECTIONS = ["overhead", "sweep", "engines", "upload", "memory"]  # memory after engines: it reads their result


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


def overhead(base: Path, repeats: int) -> tuple[dict, dict]:
    """Overhead and cache side by side, so both ratios share the machine's state: per scheme and repeat, `quantflow
    run` in a fresh data dir (nothing cached), the same run again there (all cached), and the same work as bare
    scripts. Bare goes first in every other repeat so that drift in machine load cancels."""
    over, cached = {}, {}
    for i in range(repeats):
        for scheme in SCHEMES:
            o = over.setdefault(scheme, {"quantflow_s": [], "bare_s": []})
            c = cached.setdefault(scheme, {"first_s": [], "cached_s": []})
            if i % 2 == 0:
                o["bare_s"].append(bare_run(base, scheme))
            home = Path(tempfile.mkdtemp(prefix="qf-bench-run-"))
            o["quantflow_s"].append(quantflow_run(home, base, scheme))
            c["first_s"].append(o["quantflow_s"][-1])
            c["cached_s"].append(quantflow_run(home, base, scheme))
            shutil.rmtree(home, ignore_errors=True)
            if i % 2 == 1:
                o["bare_s"].append(bare_run(base, scheme))
    return {"schemes": over}, {"schemes": cached}


def sweep(base: Path, repeats: int, separate: dict | None) -> dict:
    """`quantflow sweep` over SCHEMES in a fresh data dir, and what it built: one base evaluation and one calibration
    set for all variants is the point of a sweep; `separate`: the overhead section's result, to compare with."""
    out = {"variants": len(SCHEMES), "schemes": SCHEMES, "sweep_s": [], "base_evaluations": [], "calibration_builds": []}
    if separate:
        out["separate_runs_s"] = sum(statistics.median(v["quantflow_s"]) for v in separate["schemes"].values())
    args = [a for s in SCHEMES for a in ("--scheme", s)]
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            wall, _ = sh([str(BIN / "quantflow"), "sweep", "--model", str(base), *args, "--no-serving"],
                         env={"QUANTFLOW_HOME": str(home)})
            out["sweep_s"].append(wall)
            out["base_evaluations"].append(len(list((home / "evals").iterdir())) - len(SCHEMES))
            out["calibration_builds"].append(len([p for p in (home / "calibration").iterdir()
                                                  if not p.name.endswith(".partial")]))
    return out


def lm_eval_timed(engine: str, model: Path, out: Path) -> dict:
    """One smoke-suite lm_eval run under /usr/bin/time: wall (engine start included), peak RSS, and generated
    tokens/s on the generative task (qf_arith: tokens of the logged completions / wall)."""
    from transformers import AutoTokenizer

    python = str(ROOT / ".venv-eval" / "bin" / "python") if engine == "vllm" else str(BIN / "python")
    tasks = ROOT / "components" / "evaluation" / "tasks"
    margs = f"pretrained={model},dtype=auto," + (
        "max_model_len=2048,enforce_eager=True" if engine == "vllm" else "max_length=2048")
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
            "scores": {t: next(v for k, v in r.items() if isinstance(v, float) and "stderr" not in k)
                       for t, r in results.items()}}


def engines(base: Path, repeats: int) -> dict:
    """vLLM (vllm-cpu) vs hf on the same suite and model, the order swapped every other repeat; walls include each
    engine's start. Per engine, each figure is a list with one value per repeat."""
    out: dict = {"vllm": {}, "hf": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for engine in ("vllm", "hf") if i % 2 == 0 else ("hf", "vllm"):
                run = lm_eval_timed(engine, base, Path(tmp) / f"{engine}-{i}")
                for k, v in run.items():
                    out[engine].setdefault(k, []).append(v)
    return out


def upload(base: Path, repeats: int) -> dict:
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
        store = S3Store("bench", "qf", endpoint_url=s3.endpoint_url)
        out = {"bytes": size, "raw_boto3_s": [], "store_s": [], "store_rerun_s": []}
        for i in range(repeats):  # fresh keys each repeat: nothing there yet for either side
            t = time.time()
            for p in files:
                client.upload_file(str(p), "bench", f"raw-{i}/{p.relative_to(base)}", Config=cfg)
            out["raw_boto3_s"].append(time.time() - t)
            for key in ("store_s", "store_rerun_s"):  # the second put finds everything there: the re-publish
                t = time.time()
                store.put(base, f"ckpt-{i}", {"bench": True})
                out[key].append(time.time() - t)
    return out


def memory(base: Path, engines_result: dict | None, repeats: int) -> dict:
    """Peak RSS of quantization (its own process) per model and calibration size, one value per repeat; evaluation's
    from the engines section."""
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
                row = {"model": name, "samples": samples, "seq": seq, "wall_s": [], "peak_rss_mb": []}
                for _ in range(repeats):
                    wall, text = sh(["/usr/bin/time", "-v", str(BIN / "python"), "-c", code])
                    row["wall_s"].append(wall)
                    row["peak_rss_mb"].append(peak_rss_mb(text))
                out["quantize"].append(row)
    for engine, r in (engines_result or {}).items():
        if isinstance(r, dict):  # results before 2026-12 also hold the ratio hf_over_vllm here
            out["evaluate"].append({"model": "SmolLM2-135M", "engine": engine, "wall_s": r["wall_s"],
                                    "peak_rss_mb": r["peak_rss_mb"]})
    return out


def machine() -> dict:
    import importlib.metadata as md

    model = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    return {"cpu": model[1].strip() if model else platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(),
            "versions": {p: md.version(p) for p in ("prefect", "mlflow", "llmcompressor", "lm_eval", "transformers", "torch")}}


# Each goal's figures: (label, value, format and unit, target). A value is one measurement or a list with one per
# repeat (results before 2026-12 hold single values); its median is compared with the target (benchmarks/notes.md).
Figure = tuple[str, float | list[float], str, str | None]


def _values(v) -> list[float]:
    return v if isinstance(v, list) else [v]


def _ratios(num, den) -> list[float]:
    return [a / b for a, b in zip(_values(num), _values(den), strict=True)]


def _overhead(r: dict) -> list[Figure]:
    out: list[Figure] = []
    for scheme, v in r["schemes"].items():
        out += [(f"{scheme}: `quantflow run` / bare scripts", _ratios(v["quantflow_s"], v["bare_s"]), ".3f", "<= 1.03"),
                (f"{scheme}: `quantflow run`", v["quantflow_s"], ".1f s", None),
                (f"{scheme}: bare scripts", v["bare_s"], ".1f s", None)]
    return out


def _cache(r: dict) -> list[Figure]:
    out: list[Figure] = []
    for scheme, v in r.get("schemes", {"w8a8-int8": r}).items():  # results before 2026-12: w8a8-int8 only, unnested
        out += [(f"{scheme}: cached rerun / first run", _ratios(v["cached_s"], v["first_s"]), ".3f", "<= 0.02"),
                (f"{scheme}: cached rerun", v["cached_s"], ".1f s", None),
                (f"{scheme}: first run", v["first_s"], ".1f s", None)]
    return out


def _sweep(r: dict) -> list[Figure]:
    out: list[Figure] = [("base evaluations", r["base_evaluations"], "g", "== 1"),
                         ("calibration builds", r["calibration_builds"], "g", "== 1"),
                         (f"`quantflow sweep` ({', '.join(r['schemes'])})", r["sweep_s"], ".1f s", None)]
    if "separate_runs_s" in r:
        out.append(("sweep / the separate runs (overhead medians, summed)",
                    [s / r["separate_runs_s"] for s in _values(r["sweep_s"])], ".2f", None))
    return out


def _engines(r: dict) -> list[Figure]:
    out: list[Figure] = []
    for engine in ("vllm", "hf"):
        e = r[engine]
        out += [(f"{engine}: wall (engine start included)", e["wall_s"], ".1f s", None),
                (f"{engine}: peak RSS", e["peak_rss_mb"], ".0f MB", None),
                (f"{engine}: generated tokens / wall s", e["generated_tok_per_wall_s"], ".2f", None)]
    return out + [("hf wall / vLLM wall", _ratios(r["hf"]["wall_s"], r["vllm"]["wall_s"]), ".2f", None)]


def _upload(r: dict) -> list[Figure]:
    mb = r["bytes"] / 2**20
    return [(f"S3 store / raw boto3 multipart ({mb:.0f} MiB)", _ratios(r["store_s"], r["raw_boto3_s"]), ".2f", "<= 1"),
            ("S3 store", r["store_s"], ".2f s", None), ("raw boto3 multipart", r["raw_boto3_s"], ".2f s", None),
            ("unchanged re-publish", r["store_rerun_s"], ".2f s", None)]


def _memory(r: dict) -> list[Figure]:
    return ([(f"quantize {q['model']}, {q['samples']} x {q['seq']}: peak RSS", q["peak_rss_mb"], ".0f MB", None)
             for q in r["quantize"]]
            + [(f"evaluate {e['model']} on {e['engine']}: peak RSS", e["peak_rss_mb"], ".0f MB", None)
               for e in r["evaluate"]])


def _run_all(r: dict) -> list[Figure]:
    """The run's own wall time; its target (30 min) is for every section once (`--repeats 1`)."""
    every = set(r["sections"].split(",")) >= set(ALL_SECTIONS) and r["repeats"] == 1
    return [(f"sections {r['sections']}, {r['repeats']} repeats", r["total_wall_s"] / 60, ".1f min", "< 30" if every else None)]


GOALS = {  # results file stem: (heading, figures)
    "overhead": ("Orchestration overhead: `quantflow run` vs the same work as bare scripts", _overhead),
    "cache": ("Cached rerun: a finished variant run again in its data dir", _cache),
    "sweep": ("Sweep: one base evaluation and one calibration set for all variants", _sweep),
    "upload": ("Publishing: the S3 store vs raw boto3", _upload),
    "engines": ("Evaluation engines: vLLM-CPU vs hf, smoke suite, SmolLM2-135M", _engines),
    "memory": ("Peak memory (`/usr/bin/time -v`)", _memory),
    "run_all": ("The whole benchmark run", _run_all),
}


def verdict(values: list[float], target: str | None) -> str:
    """A timing meets its target by its median; an exact count (`==`) is a property, so every repeat must meet it."""
    if target is None:
        return "no target"
    op, bound = target.split()
    if op == "==":
        return "met" if all(v == float(bound) for v in values) else "missed"
    median = statistics.median(values)
    return "met" if (median <= float(bound) if op == "<=" else median < float(bound)) else "missed"


def figure_row(label: str, value, fmt: str, target: str | None, where: str) -> str:
    values = _values(value)
    spec, _, unit = fmt.partition(" ")
    text = f"{statistics.median(values):{spec}}" + (f" {unit}" if unit else "")
    if len(values) > 1:
        text += f" (each: {', '.join(f'{x:{spec}}' for x in values)})"
    return f"| {label} | {text} | {target or ''} | {verdict(values, target)} | {where} | {len(values)} |"


def write_doc() -> None:
    """docs/benchmarks.md from benchmarks/results: per goal, every figure's median against its target with the command,
    machine, date and number of repeats that produced it; then the hand-written reading, benchmarks/notes.md."""
    parts = ["# Benchmarks", "", "Run by hand: `.venv/bin/python benchmarks/run_all.py` (all sections) or `--sections a,b`, "
             "`--repeats N` (default 3). Each section's raw values are in `benchmarks/results/<section>.json`; this page is "
             "rewritten from them: a value is the median of its repeats (each repeat's value in brackets); the "
             "verdict compares the median with the target, or every repeat's value for an exact count.", ""]
    for stem, (heading, figures) in GOALS.items():
        path = RESULTS / f"{stem}.json"
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        m = record["machine"]
        # run_all.json is the run's own record: its numbers at the top level, its command rebuilt from its arguments
        result = record.get("result", record)
        schemes = f" --schemes {record['schemes']}" if "schemes" in record else ""
        command = record.get("command") or (f"benchmarks/run_all.py --sections {record['sections']} --repeats "
                                            f"{record['repeats']}{schemes}")
        cpu = f"{m['cpu']}, " if m.get("cpu") and m["cpu"] != "x86_64" else ""
        where = f"`{command}` | {cpu}{m['cores']} cores, {m['mem_gb']} GiB | {record['date']}"
        parts += [f"## {heading}", "", f"Python {m['python']}; {', '.join(f'{k} {v}' for k, v in m['versions'].items())}.", "",
                  "| figure | value | target | verdict | command | machine | date | repeats |",
                  "|---|---|---|---|---|---|---|---|"]
        parts += [figure_row(*f, where) for f in figures(result)] + [""]
    notes = ROOT / "benchmarks" / "notes.md"  # hand-written reading of the numbers: targets missed, why, what would close them
    if notes.exists():
        parts += [notes.read_text()]
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", default=",".join(ALL_SECTIONS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--schemes", default=",".join(SCHEMES), help="schemes of the overhead, cache and sweep sections")
    a = ap.parse_args()
    SCHEMES[:] = a.schemes.split(",")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    home = Path(tempfile.mkdtemp(prefix="qf-bench-"))
    os.environ["QUANTFLOW_HOME"] = str(home)
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = base_dir()
    # One standing Prefect server and one MLflow server for every quantflow run, as users run them (`quantflow server
    # up`, deployments): no run pays for starting a temporary Prefect server or creating an MLflow store.
    from components.local_stack import mlflow_server, prefect_server, stop

    (home / "prefect").mkdir()
    (home / "mlflow").mkdir()
    server, os.environ["PREFECT_API_URL"] = prefect_server(home / "prefect")
    tracking, os.environ["QUANTFLOW_MLFLOW_TRACKING_URI"] = mlflow_server(home / "mlflow")
    done: dict = {}
    start = time.time()
    try:
        for section in a.sections.split(","):
            done[section] = run_section(section, base, a.repeats, done)
    finally:
        stop(server)
        stop(tracking)
    (RESULTS / "run_all.json").write_text(json.dumps({"sections": a.sections, "repeats": a.repeats, "schemes": a.schemes,
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
        result, cached = overhead(base, repeats)
    elif section == "sweep":
        result = sweep(base, repeats, prior("overhead", done))
    elif section == "memory":
        result = memory(base, prior("engines", done), repeats)
    else:
        result = globals()[section](base, repeats)
    record = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "command": f"benchmarks/run_all.py --sections {section} --repeats {repeats} --schemes {','.join(SCHEMES)}",
              "section_wall_s": time.time() - t}
    (RESULTS / f"{section}.json").write_text(json.dumps({"result": result, **record}, indent=2))
    if section == "overhead":  # measured in the same runs; the cache goal reads its own file
        (RESULTS / "cache.json").write_text(json.dumps({"result": cached, **record}, indent=2))
    print(section, json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
