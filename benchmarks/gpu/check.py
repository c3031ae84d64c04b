"""GPU checks of the 70B plan, run on a lent GPU machine as it comes (see README.md); `--cpu` runs tiny shapes here.

Each check builds its own random-init model with Llama-3.1-70B's shapes (hidden 8192, MLP 28672, 64/8 heads, vocab
128256) but few decoder layers, and a word-level tokenizer, in-process; calibration is random token ids. Results go to
`<out>/<check>.json`, rewritten after every case; past the deadline (6.5 minutes from the start by default) what is
left is recorded as skipped.

- G1 plan vs reality on the path a 70B takes: the memory plan's placement for the 80-layer model at the seed card's
  calibration size on this machine (one H200: W8A8's cache in host RAM, FP8's on the GPU), through the project's
  quantize settings, on 2 layers: W8A8 at 16 x 8192, FP8 static at 64 x 4096. Recorded: the IntermediatesCache's bytes
  by kind at its peak, peak GPU memory per decoder layer, peak host RSS; pass when the cache and the cuda:0 peak are
  within 15% of the plan.
- G2 the seed-length rate and TF32: one layer, W8A8 at 64 x 8192, fp32 then TF32 matmuls; time in forwards, Hessian
  accumulation and GPTQ solves, GPTQ loss per module, and the largest difference between the two checkpoints' weights.
- G3 the flow's quantize step: plan -> settings -> components.quantize.quantize for both schemes; the checkpoint
  reloads on the device and gives finite logits; its size against the plan's.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
CONFIG_70B = ROOT / "benchmarks" / "configs" / "Meta-Llama-3.1-70B-Instruct.json"
TINY = {"hidden_size": 96, "intermediate_size": 160, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "vocab_size": 256, "max_position_embeddings": 1024}
# (scheme, samples, seq_len) per check, GPU and CPU
CASES = {
    "g1": {"gpu": [("w8a8-int8", 16, 8192), ("fp8-static", 64, 4096)], "cpu": [("fp8-static", 6, 48)]},
    # (the placement G1 takes is the 80-layer plan's for the seed card's own calibration: 1024 x 8192, 512 x 4096)
    "g2": {"gpu": [("w8a8-int8", 64, 8192)], "cpu": [("w8a8-int8", 4, 64)]},
    "g3": {"gpu": [("fp8-static", 16, 512), ("w8a8-int8", 16, 512)], "cpu": [("fp8-static", 4, 32), ("w8a8-int8", 4, 32)]},
}
SEED_CALIBRATION = {"w8a8-int8": (1024, 8192), "fp8-static": (512, 4096)}
TOLERANCE = 0.15


class Run:
    """Where results go, the deadline, and the models built so far (by layer count)."""

    def __init__(self, out: Path, cpu: bool, deadline_s: float):
        self.out, self.cpu, self.deadline = out, cpu, time.monotonic() + deadline_s
        self.work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.models: dict[int, tuple[Path, dict]] = {}
        out.mkdir(parents=True, exist_ok=True)

    def late(self) -> bool:
        return time.monotonic() > self.deadline

    def write(self, check: str, result: dict) -> None:
        tmp = self.out / f".{check}.json.tmp"
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(self.out / f"{check}.json")

    def model(self, layers: int) -> tuple[Path, dict]:
        """A random-init model of the 70B's shapes (tiny ones with --cpu) with `layers` decoder layers, saved in bf16
        with a word-level tokenizer; its config.json as a dict."""
        if layers in self.models:
            return self.models[layers]
        import torch
        from tokenizers import Tokenizer, models
        from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

        raw = json.loads(CONFIG_70B.read_text())
        raw.update({**(TINY if self.cpu else {}), "num_hidden_layers": layers, "torch_dtype": "bfloat16"})
        config = AutoConfig.for_model(**raw)
        torch.manual_seed(0)
        with torch.device("cpu" if self.cpu else "cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        out = self.work / f"base-{layers}"
        model.save_pretrained(out)
        del model
        vocab = {f"t{i}": i for i in range(config.vocab_size)}
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                      unk_token="t0", eos_token="t1", bos_token="t2", pad_token="t0")
        tok.save_pretrained(out)
        self.models[layers] = (out, raw)
        return out, raw

    def calibration(self, vocab: int, samples: int, seq_len: int) -> Path:
        import torch
        from datasets import Dataset

        out = self.work / f"calib-{samples}x{seq_len}"
        if not out.exists():
            ids = torch.randint(0, vocab, (samples, seq_len), generator=torch.Generator().manual_seed(0)).tolist()
            Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * seq_len] * samples}).save_to_disk(str(out))
        return out

    def machine(self):
        from components.memory_plan import machine_now

        return machine_now(self.work)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextmanager
def watched_cache(seq_len: int, hidden: int, head_dim: int):
    """The IntermediatesCache's bytes by kind at the moment it held the most (read after every update)."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    peak: dict[str, int] = {}
    update = IntermediatesCache.update

    def kind(t) -> str:
        if not t.is_floating_point():
            return "positions"
        if t.dim() == 4 and tuple(t.shape[-2:]) == (seq_len, seq_len):  # (batch, 1, s, s); hidden is (batch, s, h)
            return "mask"
        return {hidden: "hidden", head_dim: "rotary"}.get(t.shape[-1], "other")

    def held(cache) -> dict[str, int]:
        by: dict[str, int] = defaultdict(int)
        seen: set[int] = set()
        stack = [node for batch in cache.batch_intermediates for node in batch.values()]
        while stack:
            value = stack.pop().value
            if isinstance(value, torch.Tensor):
                if id(value) not in seen:
                    seen.add(id(value))
                    by[kind(value)] += value.nbytes
            elif isinstance(value, (list, tuple)):
                stack.extend(value)
            elif isinstance(value, dict):
                stack.extend(value.values())
        return by

    def counted(self, batch_index, values):
        update(self, batch_index, values)
        now = held(self)
        if sum(now.values()) > sum(peak.values()):
            peak.clear()
            peak.update(now)

    IntermediatesCache.update = counted
    try:
        yield peak
    finally:
        IntermediatesCache.update = update


@contextmanager
def per_layer_gpu_peak():
    """Peak GPU memory allocated while each decoder layer is calibrated (its forwards, Hessian accumulation and,
    counted with it, the GPTQ solve that follows): a forward pre-hook on every LlamaDecoderLayer."""
    import torch
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    peaks: dict[int, int] = {}
    state = {"layer": None}

    def close():
        if state["layer"] is not None and torch.cuda.is_available():
            peaks[state["layer"]] = max(peaks.get(state["layer"], 0), torch.cuda.max_memory_allocated())

    def pre(module, args, kwargs):
        index = getattr(module, "layer_idx", id(module))
        if index != state["layer"]:
            close()
            state["layer"] = index
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()

    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, a: pre(m, a, None) if isinstance(m, LlamaDecoderLayer) else None)
    try:
        yield peaks
    finally:
        close()
        handle.remove()


@contextmanager
def gptq_timers(record: dict):
    """Seconds in GPTQ's Hessian accumulation and in its solves, and each solve's loss (llmcompressor's module-level
    names in modifiers/gptq/base.py, wrapped)."""
    from llmcompressor.modifiers.gptq import base

    accumulate, solve = base.accumulate_hessian, base.quantize_weight
    record.update(hessian_s=0.0, solve_s=0.0, losses=[])

    def timed_accumulate(*a, **k):
        _sync()
        t = time.perf_counter()
        out = accumulate(*a, **k)
        _sync()
        record["hessian_s"] += time.perf_counter() - t
        return out

    def timed_solve(*a, **k):
        _sync()
        t = time.perf_counter()
        out = solve(*a, **k)
        _sync()
        record["solve_s"] += time.perf_counter() - t
        record["losses"].append(float(out[1].sum()))
        return out

    base.accumulate_hessian, base.quantize_weight = timed_accumulate, timed_solve
    try:
        yield record
    finally:
        base.accumulate_hessian, base.quantize_weight = accumulate, solve


def _plan(raw: dict, layers: int, scheme, samples: int, seq_len: int, machine):
    from components import memory_plan as mp

    shape = mp.shape_from_config({**raw, "num_hidden_layers": layers})
    return shape, mp.plan(shape, mp.Calibration(num_samples=samples, seq_len=seq_len), mp.quantization_of(scheme), machine)


def _err(planned: float, measured: float) -> float | None:
    return round(planned / measured - 1, 4) if measured else None


def g1(run: Run, scheme_name: str, samples: int, seq_len: int) -> dict:
    from components import memory_plan as mp
    from components import recipes
    from components.quantize import quantize
    from components.specs import QuantizationSpec

    scheme = recipes.load(scheme_name)
    path, raw = run.model(2)
    machine = run.machine()
    # the placement the seed card's 70B gets here, at its own calibration size (on the CPU: the CPU)
    _, plan80 = _plan(raw, 80, scheme, *SEED_CALIBRATION[scheme_name], machine)
    how = mp.settings_for(QuantizationSpec(), plan80, machine)
    shape, plan2 = _plan(raw, 2, scheme, samples, seq_len, machine)
    planned_cache = mp.cache_parts(shape, mp.Calibration(num_samples=samples, seq_len=seq_len))
    planned = {"hidden": planned_cache["hidden"] + planned_cache["in_flight"], "mask": planned_cache["mask"],
               "rotary": planned_cache["rotary"], "positions": planned_cache["positions"]}
    calib = run.calibration(raw["vocab_size"], samples, seq_len)
    t = time.perf_counter()
    with watched_cache(seq_len, shape.hidden, shape.head_dim) as cache, per_layer_gpu_peak() as peaks:
        quantize(str(path), scheme, str(calib), run.work / f"g1-{scheme_name}-{samples}x{seq_len}", samples, seq_len, how)
    wall = time.perf_counter() - t
    measured_total = sum(cache.values())
    # cuda:0 per layer as the plan counts it for the same placement (the cache on cuda:0 only when it waits there)
    layer_gpu = plan2.layer_bytes + plan2.hessian_bytes + plan2.workspace_bytes
    if how.activation_offload == "cuda":
        layer_gpu += plan2.activation_cache_bytes
    measured_gpu = max(peaks.values()) if peaks else None
    cache_error = _err(sum(planned.values()), measured_total)
    cache_ok = cache_error is not None and abs(cache_error) <= TOLERANCE
    gpu_ok = measured_gpu is None or abs(_err(layer_gpu, measured_gpu)) <= TOLERANCE
    return {"placement": how.placement, "activation_offload": how.activation_offload, "wall_s": round(wall, 1),
            "cache_measured": dict(cache), "cache_planned": {k: int(v) for k, v in planned.items()},
            "cache_error": cache_error,
            "gpu_per_layer_measured": {str(k): v for k, v in peaks.items()}, "gpu_per_layer_planned": int(layer_gpu),
            "gpu_error": _err(layer_gpu, measured_gpu) if measured_gpu else None,
            "host_rss_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "plan_80_layers": plan80.lines(), "pass": bool(cache_ok and gpu_ok)}


def g2(run: Run, scheme_name: str, samples: int, seq_len: int) -> dict:
    import torch
    from safetensors.torch import load_file

    from components import memory_plan as mp
    from components import recipes
    from components.quantize import quantize
    from components.specs import QuantizationSpec

    scheme = recipes.load(scheme_name)
    path, raw = run.model(1)
    machine = run.machine()
    _, plan80 = _plan(raw, 80, scheme, samples, seq_len, machine)
    how = mp.settings_for(QuantizationSpec(), plan80, machine)
    calib = run.calibration(raw["vocab_size"], samples, seq_len)
    out: dict = {"placement": how.placement, "activation_offload": how.activation_offload}
    weights = {}
    for mode in ("fp32", "tf32"):
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
        record: dict = {}
        ckpt = run.work / f"g2-{mode}"
        with gptq_timers(record):
            t = time.perf_counter()
            quantize(str(path), scheme, str(calib), ckpt, samples, seq_len, how)
            total = time.perf_counter() - t
        record.update(total_s=round(total, 4), forwards_and_rest_s=round(total - record["hessian_s"] - record["solve_s"], 4),
                      hessian_s=round(record["hessian_s"], 4), solve_s=round(record["solve_s"], 4))
        out[mode] = record
        weights[mode] = {k: v for f in sorted(ckpt.glob("*.safetensors")) for k, v in load_file(f).items()}
    torch.backends.cuda.matmul.allow_tf32 = False
    diffs = {k: float((weights["fp32"][k].float() - weights["tf32"][k].float()).abs().max())
             for k in weights["fp32"] if k.endswith("weight") and weights["fp32"][k].dtype == torch.int8}
    out["max_int8_weight_difference"] = max(diffs.values(), default=None)
    out["weights_differing"] = sum(1 for d in diffs.values() if d > 0)
    out["tf32_speedup"] = round(out["fp32"]["total_s"] / out["tf32"]["total_s"], 3)
    return out


def g3(run: Run, scheme_name: str, samples: int, seq_len: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from components import memory_plan as mp
    from components import recipes
    from components.quantize import quantize
    from components.specs import QuantizationSpec

    scheme = recipes.load(scheme_name)
    path, raw = run.model(2)
    machine = run.machine()
    _, memory = _plan(raw, 2, scheme, samples, seq_len, machine)
    how = mp.settings_for(QuantizationSpec(), memory, machine)
    calib = run.calibration(raw["vocab_size"], samples, seq_len) if scheme.needs_calibration else None
    t = time.perf_counter()
    ckpt = quantize(str(path), scheme, str(calib) if calib else None, run.work / f"g3-{scheme_name}", samples, seq_len, how)
    wall = time.perf_counter() - t
    size = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    device = "cuda" if _cuda() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(ckpt, device_map=device if device == "cuda" else None)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]], device=model.device)).logits
    finite = bool(torch.isfinite(logits).all())
    del model
    return {"placement": how.placement, "activation_offload": how.activation_offload, "wall_s": round(wall, 1),
            "checkpoint_bytes": size, "checkpoint_planned": int(memory.checkpoint_bytes),
            "checkpoint_error": _err(memory.checkpoint_bytes, size), "reloads_with_finite_logits": finite,
            "pass": finite and abs(_err(memory.checkpoint_bytes, size)) <= 0.10}


CHECKS = {"g1": g1, "g2": g2, "g3": g3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU (the test suite's mode)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check-out")))
    ap.add_argument("--deadline-s", type=float, default=390, help="skip what is left after this many seconds")
    ap.add_argument("--checks", default="g1,g2,g3")
    a = ap.parse_args()
    if not a.cpu and not _cuda():
        print("no CUDA GPU visible: run with --cpu for the tiny shapes", file=sys.stderr)
        return 2
    run = Run(a.out, a.cpu, a.deadline_s)
    mode = "cpu" if a.cpu else "gpu"
    for check in a.checks.split(","):
        import torch

        result = {"check": check, "mode": mode, "gpu": torch.cuda.get_device_name(0) if _cuda() else None,
                  "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cases": {}}
        for scheme, samples, seq_len in CASES[check][mode]:
            case = f"{scheme} {samples}x{seq_len}"
            if run.late():
                result["cases"][case] = {"skipped": "deadline"}
            else:
                try:
                    result["cases"][case] = CHECKS[check](run, scheme, samples, seq_len)
                except Exception as e:  # noqa: BLE001 - a failed case is a finding; the others still run
                    result["cases"][case] = {"error": f"{type(e).__name__}: {e}"[:2000]}
                if _cuda():
                    torch.cuda.empty_cache()
            run.write(check, result)
            print(check, case, json.dumps(result["cases"][case])[:400], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
