"""The 70B quantization path at reduced depth (run by hand where a GPU exists; the CPU mode is a smoke test).

Random-init N decoder layers with the shapes of a shipped config.json (default: Meta-Llama-3.1-70B-Instruct, seed 000),
random-token calibration, then `components.quantize.quantize` for each scheme, recording wall time, time per layer,
peak GPU memory, checkpoint size, the memory plan's figures for the same sizes, and that the checkpoint loads and
runs a forward pass on the device. Results: benchmarks/results/gpu_quantize.json (figures per scheme plus the
80-layer extrapolation, marked as such) for docs/scaling.md.

    python benchmarks/gpu_quantize.py --layers 4 --samples 256 --seq-len 2048          # one H200: ~8 min
    python benchmarks/gpu_quantize.py --config SmolLM2-135M-Instruct --layers 1 --samples 4 --seq-len 32 --device cpu
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "benchmarks" / "configs"


def make_model(config_name: str, layers: int, out: Path, device: str) -> dict:
    """A random-init model of the config's shapes with `layers` decoder layers, saved in bf16 with a tokenizer-free
    vocabulary (calibration is random token ids, so no tokenizer is needed beyond a minimal one)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    raw = json.loads((CONFIGS / f"{config_name}.json").read_text())
    config = AutoConfig.for_model(**{**raw, "num_hidden_layers": layers})
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), unk_token="t0",
                                  eos_token="t1", bos_token="t2", pad_token="t0")
    tok.save_pretrained(out)
    return raw


def run(config_name: str, layers: int, samples: int, seq_len: int, schemes: list[str], device: str) -> dict:
    import torch
    from datasets import Dataset

    from components import recipes
    from components.memory_plan import Calibration, Quantization, shape_from_config, sizes
    from components.quantize import quantize

    cuda = device.startswith("cuda")
    work = Path(tempfile.mkdtemp(prefix="gpu-quantize-"))
    raw = make_model(config_name, layers, work / "base", device)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, raw["vocab_size"], (samples, seq_len), generator=gen).tolist()
    Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * seq_len] * samples}).save_to_disk(str(work / "calib"))
    shape = shape_from_config({**raw, "num_hidden_layers": layers})
    out = {"config": config_name, "layers": layers, "samples": samples, "seq_len": seq_len, "device": device,
           "gpu": torch.cuda.get_device_name(0) if cuda else None, "machine": platform.node(),
           "date": time.strftime("%Y-%m-%d"), "schemes": {}}
    for name in schemes:
        scheme = recipes.load(name)
        q = Quantization(weight_bits=8 if "8" in scheme.weights else 4, gptq="GPTQModifier" in json.dumps(scheme.recipe),
                         group_size=scheme.group_size)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t = time.time()
        ckpt = quantize(str(work / "base"), scheme, str(work / "calib") if scheme.needs_calibration else None,
                        work / f"ckpt-{name}", samples, seq_len)
        wall = time.time() - t
        peak = torch.cuda.max_memory_allocated() if cuda else None
        size = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
        loaded_ok = forward_ok(ckpt, device)
        estimate = sizes(shape, Calibration(num_samples=samples, seq_len=seq_len), q)
        out["schemes"][name] = {
            "wall_s": round(wall, 1), "s_per_layer": round(wall / layers, 1), "peak_gpu_gib": peak and round(peak / 2**30, 1),
            "checkpoint_bytes": size, "loads_and_runs": loaded_ok,
            "plan_bytes": {k: int(v) for k, v in estimate.items()},
            "extrapolated_80_layers_h": round(wall / layers * 80 / 3600, 2),  # arithmetic from the measured rate
        }
        print(name, out["schemes"][name], flush=True)
    return out


def forward_ok(ckpt: Path, device: str) -> bool:
    """The compressed checkpoint loads with transformers (compressed-tensors) and gives finite logits."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt, device_map=device if device.startswith("cuda") else None)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]], device=model.device)).logits
    ok = bool(torch.isfinite(logits).all())
    del model
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="Meta-Llama-3.1-70B-Instruct")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--schemes", default="fp8-static,w8a8-int8")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_quantize.json")
    a = ap.parse_args()
    result = run(a.config, a.layers, a.samples, a.seq_len, a.schemes.split(","), a.device)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
