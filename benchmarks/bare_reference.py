"""The reference job as bare scripts, the way the seed cards do it by hand: llm-compressor oneshot, then lm_eval, with
the engine environment quantflow gives lm_eval (threads, vLLM's engine core in process on CPU: components/determinism.py),
so that the two sides do the same work and their ratio is orchestration alone.

python benchmarks/bare_reference.py BASE_DIR SCHEME OUT_DIR [--samples 16] [--seq 512]
Prints one JSON line: wall seconds of quantization and of each lm_eval command.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("scheme")
    ap.add_argument("out")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--eval-python", default=str(ROOT / ".venv-eval" / "bin" / "python"))
    a = ap.parse_args()
    times = {}

    t = time.time()
    from datasets import load_dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scheme = yaml.safe_load((ROOT / "components" / "recipes" / f"{a.scheme}.yaml").read_text())
    model = AutoModelForCausalLM.from_pretrained(a.base, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(a.base)
    kwargs = {}
    if scheme["needs_calibration"]:
        ds = load_dataset("json", data_files=str(ROOT / "components" / "calibration_data" / "chat.jsonl"), split="train")
        ds = ds.shuffle(seed=42).select(range(a.samples))
        ds = ds.map(lambda x: {"text": tokenizer.apply_chat_template(x["messages"], tokenize=False)})
        ds = ds.map(lambda x: tokenizer(x["text"], padding=False, max_length=a.seq, truncation=True, add_special_tokens=False),
                    remove_columns=ds.column_names)
        kwargs = dict(dataset=ds, max_seq_length=a.seq, num_calibration_samples=a.samples)
    oneshot(model=model, recipe=yaml.safe_dump(scheme["recipe"]), **kwargs)
    model.save_pretrained(a.out, save_compressed=True)
    tokenizer.save_pretrained(a.out)
    times["quantize_s"] = round(time.time() - t, 1)

    tasks = ROOT / "components" / "evaluation" / "tasks"
    from components.evaluation.command import EngineSettings
    from components.evaluation.environment import engine_env

    env = engine_env(EngineSettings(engine="vllm", platform="cpu"))
    for label, model_dir in (("base", a.base), ("variant", a.out)):
        t = time.time()
        cmd = [a.eval_python, "-m", "lm_eval", "--model", "vllm",
               "--model_args", f"pretrained={model_dir},dtype=auto,max_model_len=2048,tensor_parallel_size=1,enforce_eager=True",
               "--tasks", "qf_recall,qf_prose", "--include_path", str(tasks), "--batch_size", "auto",
               "--seed", "1234", "--output_path", f"{a.out}-eval-{label}"]
        subprocess.run(cmd, cwd=tasks, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times[f"eval_{label}_s"] = round(time.time() - t, 1)
    print(json.dumps(times))


if __name__ == "__main__":
    sys.exit(main())
