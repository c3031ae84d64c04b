"""llm-compressor's data-parallel calibration on the CPU (gloo, 2 ranks) against one process (docs/scaling.md, "Levers").

    python benchmarks/ddp_cpu.py [--out DIR]

Builds a random-init two-layer Llama, quantizes it W8A8 (GPTQ) with 8 x 64 random tokens in one process, then again
under `torchrun --nproc-per-node 2` (this script with --rank-run), and compares the two checkpoints. The process group
is made by hand: llm-compressor's `init_dist()` needs an accelerator (it reads
`torch.accelerator.current_accelerator().type`, None on a CPU-only machine).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def make_base(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    vocab = {f"t{i}": i for i in range(256)}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), unk_token="t0",
                            pad_token="t0", eos_token="t1").save_pretrained(out)


def quantize(base: Path, out: Path) -> None:
    """One process, or one rank of torchrun (RANK set): the same oneshot call; saving is collective under torchrun."""
    import torch
    import torch.distributed as dist
    from compressed_tensors.offload import load_offloaded_model
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    ids = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(0)).tolist()
    dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * 64] * 8})
    with load_offloaded_model():  # rank 0 loads, the others share its weights; its estimate offloads to disk
        model = AutoModelForCausalLM.from_pretrained(base, dtype="auto", device_map="auto_offload",
                                                     offload_folder=str(out.parent / f"offload-{os.getpid()}"))
    oneshot(model=model, processor=AutoTokenizer.from_pretrained(base), dataset=dataset, pipeline="sequential",
            recipe=GPTQModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"]),
            num_calibration_samples=8, max_seq_length=64)
    model.save_pretrained(out, save_compressed=True)  # every rank calls it: rank 0 alone would wait forever
    if distributed:
        dist.destroy_process_group()


def compare(a: Path, b: Path) -> dict:
    from safetensors.torch import load_file

    one, two = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    differing = {}
    for k in sorted(one):
        if not one[k].equal(two[k]):
            differing[k] = {"dtype": str(one[k].dtype), "max_abs": float((one[k].float() - two[k].float()).abs().max()),
                            "share": round(float((one[k] != two[k]).float().mean()), 4)}
    return {"tensors": len(one), "same_names": set(one) == set(two), "differing": differing}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--rank-run", nargs=2, metavar=("BASE", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rank_run:
        quantize(Path(a.rank_run[0]), Path(a.rank_run[1]))
        return 0
    work = a.out or Path(tempfile.mkdtemp(prefix="ddp-cpu-"))
    work.mkdir(parents=True, exist_ok=True)
    make_base(work / "base")
    subprocess.run([sys.executable, __file__, "--rank-run", str(work / "base"), str(work / "single")], check=True)
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--nproc-per-node", "2", __file__, "--rank-run", str(work / "base"),
                           str(work / "ddp")])
    result = {"ddp_exit_status": proc.returncode}
    if proc.returncode == 0:
        result.update(compare(work / "single", work / "ddp"))
    print(json.dumps(result, indent=2))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
