"""Serving speed and size beside accuracy: `vllm serve` for one model, `vllm bench serve` against it.

Both are vLLM's own commands, run in the evaluation environment; the card prints the same argv this module runs.
Engine memory is the peak proportional set size (PSS: shared pages counted once) of the server's process tree,
sampled twice a second, and on GPU also vLLM's own "Model loading took X GiB" line.
"""
from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

from pydantic import BaseModel

from components import artifacts
from components.evaluation import environment
from components.evaluation.command import EngineSettings
from components.evaluation.environment import EvaluationError
from components.messages import Checked, first_line
from components.processes import free_port, start, stop, wait_http
from components.specs import ServingSpec

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


class ServingResult(BaseModel):
    output_tok_s: float
    total_tok_s: float
    requests_s: float
    ttft_median_ms: float
    ttft_p99_ms: float
    tpot_median_ms: float
    completed: int
    failed: int
    engine_peak_mb: float
    weights_gib: float | None  # vLLM's "Model loading took X GiB" (GPU); None where vLLM does not say
    checkpoint_mb: float
    commands: list[list[str]]  # [serve argv, bench argv], as the card prints them
    wall_s: float
    output_dir: str = ""  # the server's and the benchmark's logs and results, stamped

    def artifact_problems(self) -> list[str]:
        """How the benchmark's folder differs from its stamp, or the stamp from this result."""
        return artifacts.problems(Path(self.output_dir), self)


def checkpoint_mb(model_dir: str | Path) -> float:
    """Size on disk of the weight files (what a deployment downloads and loads)."""
    return sum(p.stat().st_size for p in Path(model_dir).rglob("*") if p.suffix in WEIGHT_SUFFIXES) / 2**20


def check(spec: ServingSpec, engine: EngineSettings | None, base_name: str | None, max_positions: int | None
          ) -> Checked[bool]:
    """Whether the serving benchmark runs (the value; vLLM only), why it cannot (its prompt file, its length against
    the base model's positions: one line each, with the fix), and a note when it is skipped."""
    if not spec.enabled or engine is None:
        return Checked(False)
    if engine.engine != "vllm":
        return Checked(False, notes=[f"evaluation.serving: not measured: this variant evaluates on {engine.engine} and "
                                     "serving speed is measured with vLLM"])
    path = spec.prompts_path
    if not path.is_file():
        return Checked(False, [f"evaluation.serving.prompts: no file {path}"])
    rows = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    try:
        bad = [i + 1 for i, line in enumerate(rows) if not isinstance(json.loads(line).get("prompt"), str)]
    except (ValueError, AttributeError) as e:
        return Checked(False, [f"evaluation.serving.prompts: {path} is not JSONL (one JSON object a line): {first_line(e)}"])
    if not rows or bad:
        return Checked(False, [f"evaluation.serving.prompts: {path} needs a string `prompt` on every line"
                               + (f" (missing on lines {bad[:5]})" if bad else " (the file is empty)")])
    if max_positions and spec.max_model_len > max_positions:
        return Checked(False, [f"evaluation.serving.max_model_len {spec.max_model_len} is above {base_name}'s "
                               f"max_position_embeddings {max_positions} (vLLM refuses it)"])
    return Checked(True)


def serve_command(model: str, s: EngineSettings, spec: ServingSpec, port: int) -> list[str]:
    argv = ["vllm", "serve", model, "--host", "127.0.0.1", "--port", str(port), "--dtype", "auto",
            "--max-model-len", str(spec.max_model_len), "--tensor-parallel-size", str(s.tensor_parallel_size),
            "--seed", str(spec.seed)]
    if s.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", str(s.gpu_memory_utilization)]
    if s.platform == "cpu":
        argv.append("--enforce-eager")  # as the evaluation: compiling costs ~1 min a start on CPU
    return argv


def bench_command(model: str, spec: ServingSpec, port: int, result_dir: str) -> list[str]:
    return ["vllm", "bench", "serve", "--backend", "vllm", "--base-url", f"http://127.0.0.1:{port}", "--model", model,
            "--dataset-name", "custom", "--dataset-path", str(spec.prompts_path), "--num-prompts", str(spec.num_prompts),
            "--custom-output-len", str(spec.output_len), "--ignore-eos", "--max-concurrency", str(spec.max_concurrency),
            "--temperature", "0", "--seed", str(spec.seed), "--disable-tqdm",
            "--save-result", "--result-dir", result_dir, "--result-filename", "serving.json"]


class _PeakMemory:
    """Samples the memory (PSS) of a process and all its descendants until stopped."""

    def __init__(self, pid: int, every_s: float = 0.5):
        self.pid, self.every_s, self.peak = pid, every_s, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._done.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
                self.peak = max(self.peak, sum(_pss(p) for p in procs))
            except psutil.NoSuchProcess:
                return
            self._done.wait(self.every_s)

    def __enter__(self) -> "_PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def _pss(proc) -> int:
    import psutil

    try:
        return proc.memory_full_info().pss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def measure(model_path: str, s: EngineSettings, spec: ServingSpec, out_dir: Path, log=print) -> ServingResult:
    """Start vLLM's server on the model, run the benchmark client against it, stop the server."""
    if s.engine != "vllm":
        raise EvaluationError(f"serving speed is measured with vLLM, not {s.engine}")
    out_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    serve, bench = serve_command(model_path, s, spec, port), bench_command(model_path, spec, port, str(out_dir))
    python = environment.python_for("vllm")
    env = environment.engine_env(s)
    server_log, bench_log = out_dir / "serve.log", out_dir / "bench.log"
    start_s = time.time()
    log(f"vllm serve ({s.platform}) {model_path}, then vllm bench serve: {spec.num_prompts} prompts, "
        f"concurrency {spec.max_concurrency}, {spec.output_len} output tokens each")
    server = start([python, "-m", "vllm.entrypoints.cli.main", *serve[1:]], server_log, env)
    try:
        with _PeakMemory(server.pid) as memory:
            try:
                wait_http(f"http://127.0.0.1:{port}/health", server, server_log, timeout=900)
            except (RuntimeError, TimeoutError) as e:
                raise environment.failed("vllm serve did not come up", server_log) from e
            rc = environment.run([python, "-m", "vllm.entrypoints.cli.main", *bench[1:]], bench_log, env)
            if rc != 0:
                raise environment.failed(f"vllm bench serve exited with {rc}", bench_log)
    finally:
        stop(server)
    doc = json.loads((out_dir / "serving.json").read_text())
    if doc["completed"] == 0:
        raise environment.failed("vllm bench serve completed no request", bench_log)
    loaded = re.search(r"Model loading took ([\d.]+) ?GiB", server_log.read_text(errors="replace"))
    return ServingResult(
        output_tok_s=doc["output_throughput"], total_tok_s=doc["total_token_throughput"],
        requests_s=doc["request_throughput"], ttft_median_ms=doc["median_ttft_ms"], ttft_p99_ms=doc["p99_ttft_ms"],
        tpot_median_ms=doc["median_tpot_ms"], completed=doc["completed"], failed=doc.get("failed", 0),
        engine_peak_mb=memory.peak / 2**20, weights_gib=float(loaded.group(1)) if loaded else None,
        checkpoint_mb=checkpoint_mb(model_path), commands=[serve, bench], wall_s=round(time.time() - start_s, 1),
        output_dir=str(out_dir))


class ServingRow(BaseModel):
    label: str
    unit: str
    base: float | None
    quant: float | None
    higher_is_better: bool

    @property
    def ratio(self) -> float | None:
        """quantized / base for higher-is-better figures, base / quantized otherwise: above 1 means the variant wins."""
        if self.base is None or self.quant is None or 0 in (self.base, self.quant):
            return None
        return self.quant / self.base if self.higher_is_better else self.base / self.quant


class Speed(BaseModel):
    """Base and variant served alike: the figures a user weighs beside recovery."""

    base: ServingResult
    variant: ServingResult

    def rows(self) -> list[ServingRow]:
        def row(label, unit, field, higher):
            return ServingRow(label=label, unit=unit, base=getattr(self.base, field), quant=getattr(self.variant, field),
                              higher_is_better=higher)

        rows = [row("Output throughput", "tok/s", "output_tok_s", True),
                row("Time to first token (median)", "ms", "ttft_median_ms", False),
                row("Time per output token (median)", "ms", "tpot_median_ms", False),
                row("Checkpoint size (weights)", "MiB", "checkpoint_mb", False),
                row("Engine peak memory (PSS)", "MiB", "engine_peak_mb", False)]
        if self.base.weights_gib is not None and self.variant.weights_gib is not None:
            rows.append(row("Weights in GPU memory", "GiB", "weights_gib", False))
        return rows
