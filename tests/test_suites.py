"""Suites load, validate against the installed lm-eval task tree, and build the seed cards' exact commands."""
import shlex
from pathlib import Path

import pytest
import yaml

from components.evaluation import suites, task_index
from components.evaluation.command import EngineSettings, build_commands, render
from components.evaluation.suites import Suite, SuiteError, SuiteTask, load, validate

MODEL = "neuralmagic-ent/Llama-3.3-70B-Instruct-quantized.w8a8"
CUDA_TP1 = EngineSettings(engine="vllm", platform="cuda", tensor_parallel_size=1)

# ---- copied verbatim from tests/data/card-002-Llama-3.3-70B-Instruct-quantized.w8a8.txt, "Reproduction" ----
CARD_002_OPENLLM_V1 = {
    "MMLU": """lm_eval \\
--model vllm \\
--model_args pretrained="neuralmagic-ent/Llama-3.3-70B-Instruct-quantized.w8a8",dtype=auto,max_model_len=3850,max_gen_toks=10,tensor_parallel_size=1 \\
--tasks mmlu_llama_3.1_instruct \\
--fewshot_as_multiturn \\
--apply_chat_template \\
--num_fewshot 5 \\
--batch_size auto""",  # noqa: E501 (the card's command, verbatim)
    "MMLU-CoT": """lm_eval \\
--model vllm \\
--model_args pretrained="neuralmagic-ent/Llama-3.3-70B-Instruct-quantized.w8a8",dtype=auto,max_model_len=4064,max_gen_toks=1024,tensor_parallel_size=1 \\
--tasks mmlu_cot_0shot_llama_3.1_instruct \\
--apply_chat_template \\
--num_fewshot 0 \\
--batch_size auto""",  # noqa: E501 (the card's command, verbatim)
    "ARC-Challenge": """lm_eval \\
--model vllm \\
--model_args pretrained="neuralmagic-ent/Llama-3.3-70B-Instruct-quantized.w8a8",dtype=auto,max_model_len=3940,max_gen_toks=100,tensor_parallel_size=1 \\
--tasks arc_challenge_llama_3.1_instruct \\
--apply_chat_template \\
--num_fewshot 0 \\
--batch_size auto""",  # noqa: E501 (the card's command, verbatim)
    "GSM-8K": """lm_eval \\
--model vllm \\
--model_args pretrained="neuralmagic-ent/Llama-3.3-70B-Instruct-quantized.w8a8",dtype=auto,max_model_len=4096,max_gen_toks=1024,tensor_parallel_size=1 \\
--tasks gsm8k_cot_llama_3.1_instruct \\
--fewshot_as_multiturn \\
--apply_chat_template \\
--num_fewshot 8 \\
--batch_size auto""",  # noqa: E501 (the card's command, verbatim)
    "Hellaswag": """lm_eval \\
--model vllm \\
--model_args pretrained="neuralmagic-ent/Llama-3.3-70B-Instruct-quantized.w8a8",dtype=auto,add_bos_token=True,max_model_len=4096,tensor_parallel_size=1 \\
--tasks hellaswag \\
--num_fewshot 10 \\
--batch_size auto""",  # noqa: E501 (the card's command, verbatim)
    "Winogrande": """lm_eval \\
--model vllm \\
--model_args pretrained="neuralmagic-ent/Llama-3.3-70B-Instruct-quantized.w8a8",dtype=auto,add_bos_token=True,max_model_len=4096,tensor_parallel_size=1 \\
--tasks winogrande \\
--num_fewshot 5 \\
--batch_size auto""",  # noqa: E501 (the card's command, verbatim)
    "TruthfulQA": """lm_eval \\
--model vllm \\
--model_args pretrained="neuralmagic-ent/Llama-3.3-70B-Instruct-quantized.w8a8",dtype=auto,add_bos_token=True,max_model_len=4096,tensor_parallel_size=1 \\
--tasks truthfulqa \\
--num_fewshot 0 \\
--batch_size auto""",  # noqa: E501 (the card's command, verbatim)
}

CARD_002_OPENLLM_V2 = """lm_eval \\
--model vllm \\
--model_args pretrained="neuralmagic-ent/Llama-3.3-70B-Instruct-quantized.w8a8",dtype=auto,max_model_len=4096,tensor_parallel_size=1,enable_chunked_prefill=True \\
--apply_chat_template \\
--fewshot_as_multiturn \\
--tasks leaderboard \\
--batch_size auto"""  # noqa: E501 (the card's command, verbatim)

_MMLU_LANG = """lm_eval \\
--model vllm \\
--model_args pretrained="neuralmagic-ent/Llama-3.3-70B-Instruct-quantized.w8a8",dtype=auto,max_model_len=3850,max_gen_toks=10,tensor_parallel_size=1 \\
--tasks mmlu_{lang}_llama_3.1_instruct \\
--fewshot_as_multiturn \\
--apply_chat_template \\
--num_fewshot 5 \\
--batch_size auto"""  # noqa: E501 (the card's command, verbatim)
# The card prints seven commands that differ only in the language code (MMLU Portuguese ... MMLU Thai).
CARD_002_MULTILINGUAL = {lang: _MMLU_LANG.format(lang=lang) for lang in ("pt", "es", "it", "de", "fr", "hi", "th")}


# ---- tests/data/card-000-Meta-Llama-3.1-70B-Instruct-FP8.md, "Reproduction": seven commands, alike but for task, chat
# flags, shots ----
MODEL_000 = "neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8"
_CARD_000 = """lm_eval \\
  --model vllm \\
  --model_args pretrained="neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8",dtype=auto,add_bos_token=True,max_model_len=4096,tensor_parallel_size=2 \\
  --tasks {task} \\
{flags}  --num_fewshot {shots} \\
  --batch_size auto"""  # noqa: E501 (the card's command, verbatim)
_CHAT, _MULTI = "  --apply_chat_template \\\n", "  --fewshot_as_multiturn \\\n"
CARD_000 = {
    "MMLU": _CARD_000.format(task="mmlu", flags="", shots=5),
    "MMLU-cot": _CARD_000.format(task="mmlu_cot_0shot_llama_3.1_instruct", flags=_CHAT, shots=0),
    "ARC-Challenge": _CARD_000.format(task="arc_challenge_llama_3.1_instruct", flags=_CHAT, shots=0),
    "GSM-8K": _CARD_000.format(task="gsm8k_cot_llama_3.1_instruct", flags=_CHAT + _MULTI, shots=8),
    "Hellaswag": _CARD_000.format(task="hellaswag", flags="", shots=10),
    "Winogrande": _CARD_000.format(task="winogrande", flags="", shots=5),
    "TruthfulQA": _CARD_000.format(task="truthfulqa_mc", flags="", shots=0),
}


def parse(command: str | list[str]) -> tuple[dict, dict, list[str]]:
    """(flags without --model_args/--tasks, model_args, tasks) of an lm_eval command line or argv."""
    argv = shlex.split(command.replace("\\\n", " ")) if isinstance(command, str) else list(command)
    assert argv[0] == "lm_eval"
    flags: dict[str, str | bool] = {}
    i = 1
    while i < len(argv):
        assert argv[i].startswith("--"), argv[i]
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            flags[argv[i]] = argv[i + 1]
            i += 2
        else:
            flags[argv[i]] = True
            i += 1
    flags.pop("--log_samples", None)  # quantflow always logs samples (paired statistics): output only, same scores
    margs = dict(kv.split("=", 1) for kv in flags.pop("--model_args").split(","))
    return flags, margs, flags.pop("--tasks").split(",")


def card_names(suite: Suite) -> dict[str, str]:
    return {t.task: t.card_task or t.task for t in suite.tasks}


# ---------------------------------------------------------------- loading and validation

def test_every_suite_loads_and_validates():
    names = suites.names()
    assert {"smoke", "openllm-v1", "openllm-v2", "mmlu-multilingual", "humaneval"} <= set(names)
    for name in names:
        suite = load(name)
        assert validate(suite) is suite, name
        assert len({t.task for t in suite.tasks}) == len(suite.tasks)


def test_the_twins_exist_upstream_and_report_the_suites_keys():
    index = task_index.load()
    kinds = {"mmlu_llama": "group", "mmlu_cot_llama": "group", "arc_challenge_llama": "task",
             "arc_challenge_chat": "task", "gsm8k_cot_llama": "task", "hellaswag": "task", "winogrande": "task",
             "truthfulqa_mc2": "task", "leaderboard": "group", "truthfulqa": "tag",
             **{f"mmlu_{lang}_llama": "group" for lang in CARD_002_MULTILINGUAL}}
    assert {name: index.kind(name) for name in kinds} == kinds
    # the fork's names are not in lm-eval 0.4.13
    for card_task in ("mmlu_llama_3.1_instruct", "gsm8k_cot_llama_3.1_instruct", "truthfulqa_mc"):
        assert index.kind(card_task) is None
    keys = {t.task: t.result_key for n in ("openllm-v1", "openllm-v2", "mmlu-multilingual") for t in load(n).tasks}
    generative = ("mmlu_llama", "mmlu_cot_llama", "gsm8k_llama", "arc_challenge_llama")
    assert {keys[t] for t in generative} == {"exact_match,strict_match"}
    assert keys["truthfulqa_mc2"] == "acc,none" and keys["hellaswag"] == "acc_norm,none"
    assert keys["leaderboard_bbh"] == keys["leaderboard_gpqa"] == keys["leaderboard_musr"] == "acc_norm,none"
    assert keys["leaderboard_math_hard"] == "exact_match,none" and keys["leaderboard_mmlu_pro"] == "acc,none"
    assert keys["leaderboard_ifeval"] == "prompt_level_strict_acc,none"


def test_every_card_task_has_its_twin_and_a_note():
    for name in ("openllm-v1", "mmlu-multilingual"):
        for t in load(name).tasks:
            assert t.note, t.task
            if t.card_task:
                assert t.card_task != t.task


def _suite(tmp_path: Path | None = None, include: str | None = None, **task) -> Suite:
    s = Suite(name="t", description="t", include_path=include,
              tasks=[SuiteTask(**{"label": "x", "metric": "acc", **task})])
    if tmp_path is not None:
        s._file = tmp_path / "t.yaml"
    return s


def test_a_suite_file_travels_to_evaluation_as_its_file_not_its_name(tmp_path):
    """Evaluation reads the file preflight checked: one that reuses a shipped suite's name keeps its own tasks; a file
    changed or removed since is refused, never replaced by the shipped suite of that name."""
    f = tmp_path / "smoke.yaml"
    f.write_text(yaml.safe_dump({"name": "smoke", "description": "mine", "include_path": str(suites.SUITES.parent / "tasks"),
                                 "tasks": [{"task": "qf_facts", "label": "Facts", "metric": "acc"}]}))
    digest = suites.suite_digest(load(str(f)))
    assert digest != suites.suite_digest(load("smoke"))
    travelled = suites.load_file(str(f), digest)
    assert [t.task for t in travelled.tasks] == ["qf_facts"] and travelled._file == f.resolve()
    f.write_text(f.read_text().replace("mine", "changed"))
    with pytest.raises(SuiteError, match="changed since preflight"):
        suites.load_file(str(f), digest)
    f.unlink()
    with pytest.raises(SuiteError, match="gone since preflight"):
        suites.load_file(str(f), digest)


def _problems(**task) -> list[str]:
    return suites.problems(_suite(**task))


def test_unknown_task_is_refused_with_a_suggestion():
    p = _problems(task="mmlu_lama")
    assert len(p) == 1 and "unknown lm-eval task" in p[0] and "mmlu_llama" in p[0]
    with pytest.raises(SuiteError, match="mmlu_llama_3.1_instruct"):
        validate(_suite(task="mmlu_llama_3.1_instruct", metric="exact_match", filter="strict_match"))


@pytest.mark.parametrize("metric,filter_", [("acc,none", "none"), ("acc norm", "none"), ("acc", "strict match"),
                                            ("acc", "none,x"), ("", "none"), ("acc", ""),
                                            ("acc_norm_stderr", "none")])
def test_bad_metric_key_format(metric, filter_):
    p = _problems(task="hellaswag", metric=metric, filter=filter_, num_fewshot=10)
    assert len(p) == 1
    assert "is not a metric name" in p[0] or "is not a filter name" in p[0] or "is the stderr of" in p[0]


def test_metric_names_lm_eval_really_uses_are_well_formed():
    for metric, filter_ in (("pass@1", "create_test"), ("0_accuracy", "none"), ("acc_definició", "maj@64")):
        t = SuiteTask(task="x", label="x", metric=metric, filter=filter_)
        assert suites._METRIC_RE.match(t.metric) and suites._FILTER_RE.match(t.filter)


def test_metric_or_filter_the_task_does_not_report():
    p = _problems(task="hellaswag", metric="exact_match")
    assert "reports metrics ['acc', 'acc_norm'], not 'exact_match'" in p[0]
    # gsm8k_cot_llama's filter is strict-match (hyphen); mmlu_llama's group score is exact_match,strict_match
    p = _problems(task="gsm8k_cot_llama", metric="exact_match", filter="strict_match", num_fewshot=8)
    assert "filters ['flexible-extract', 'strict-match'], not 'strict_match'" in p[0]
    p = _problems(task="mmlu_llama", metric="exact_match", num_fewshot=5)
    assert "group reports ['exact_match,strict_match'], not 'exact_match,none'" in p[0]


def test_tags_and_groups_without_a_score_are_refused():
    p = _problems(task="truthfulqa", num_fewshot=0)
    assert "is a tag" in p[0] and "truthfulqa_mc2" in p[0]
    p = _problems(task="leaderboard_instruction_following", metric="prompt_level_strict_acc")
    assert "no aggregate_metric_list" in p[0]


def test_fewshot_against_a_task_pinned_to_zero():
    # arc_challenge_llama pins num_fewshot: 0 and lm-eval ignores --num_fewshot for it
    p = _problems(task="arc_challenge_llama", metric="exact_match", filter="strict_match", num_fewshot=5)
    assert len(p) == 1 and "pins num_fewshot: 0" in p[0] and "ignores --num_fewshot 5" in p[0]


def test_fewshot_against_a_task_defined_k_shot():
    # every subject of mmlu_pt_llama is 5-shot with Meta's 5 inline examples; reported once for the group
    p = _problems(task="mmlu_pt_llama", metric="exact_match", filter="strict_match", num_fewshot=3)
    assert len(p) == 1 and "defined as a 5-shot task" in p[0] and "56 more of its 57 subtasks" in p[0]


def test_fewshot_more_than_the_shipped_examples(tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "three.yaml").write_text(yaml.safe_dump({
        "task": "qf_three_examples", "dataset_path": "json", "test_split": "train", "output_type": "multiple_choice",
        "fewshot_config": {"sampler": "first_n", "samples": [{"q": i} for i in range(3)]}}))
    s = _suite(tmp_path, include="tasks", task="qf_three_examples", num_fewshot=5)
    assert s.include_dir == tasks.resolve()
    p = suites.problems(s)
    assert len(p) == 1 and "ships only 3 few-shot examples" in p[0]
    s.tasks[0].num_fewshot = 3
    assert suites.problems(s) == []


def test_fewshot_from_a_task_with_only_a_test_split(tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "only_test.yaml").write_text(yaml.safe_dump({
        "task": "qf_only_test", "dataset_path": "json", "test_split": "train", "output_type": "multiple_choice"}))
    s = _suite(tmp_path, include="tasks", task="qf_only_test", num_fewshot=5)
    p = suites.problems(s)
    assert len(p) == 1 and "qf_only_test has no few-shot source" in p[0] and "test split" in p[0]
    s.tasks[0].num_fewshot = 0
    assert suites.problems(s) == []


def test_fewshot_ok_where_the_yaml_leaves_it_open():
    assert _problems(task="hellaswag", metric="acc_norm", num_fewshot=10) == []
    assert _problems(task="winogrande", num_fewshot=25) == []


def test_multiturn_needs_the_chat_template_and_tasks_are_unique():
    p = _problems(task="hellaswag", metric="acc_norm", num_fewshot=10, fewshot_as_multiturn=True)
    assert "needs apply_chat_template" in p[0]
    s = load("openllm-v1")
    s.tasks.append(s.tasks[0])
    with pytest.raises(SuiteError, match="listed twice"):
        validate(s)


def test_validation_is_cheap():
    import time

    task_index.load()  # the scan is cached per process
    start = time.time()
    for name in suites.names():
        validate(load(name))
    assert time.time() - start < 5


# ---------------------------------------------------------------- the cards' commands

def test_openllm_v1_builds_the_cards_commands_flag_for_flag():
    suite = load("openllm-v1")
    to_card = card_names(suite)
    built = build_commands(MODEL, suite, CUDA_TP1)
    expected = {parse(c)[2][0]: parse(c) for c in CARD_002_OPENLLM_V1.values()}
    assert len(built) == len(expected) == 7
    seen = set()
    for argv in built:
        flags, margs, tasks = parse(argv)
        assert len(tasks) == 1
        card_task = to_card[tasks[0]]
        want_flags, want_margs, _ = expected[card_task]
        assert flags == want_flags, card_task
        assert margs == want_margs, card_task
        seen.add(card_task)
        # the card prints the command the way the card does, and it parses back to the same argv
        assert parse(render(argv)) == (flags, margs, tasks)
    assert seen == set(expected)


def test_multilingual_builds_the_cards_commands_flag_for_flag():
    suite = load("mmlu-multilingual")
    to_card = card_names(suite)
    built = build_commands(MODEL, suite, CUDA_TP1)
    assert len(built) == 1  # the seven share every setting: one lm_eval process
    flags, margs, tasks = parse(built[0])
    card_tasks = set()
    for command in CARD_002_MULTILINGUAL.values():
        want_flags, want_margs, want_tasks = parse(command)
        assert flags == want_flags and margs == want_margs
        card_tasks.update(want_tasks)
    assert {to_card[t] for t in tasks} == card_tasks and len(tasks) == 7


def test_openllm_v2_builds_the_cards_command_with_the_leaderboard_members():
    suite = load("openllm-v2")
    built = build_commands(MODEL, suite, CUDA_TP1)
    assert len(built) == 1
    flags, margs, tasks = parse(built[0])
    want_flags, want_margs, want_tasks = parse(CARD_002_OPENLLM_V2)
    assert flags == want_flags and margs == want_margs and want_tasks == ["leaderboard"]
    leaderboard = yaml.load(task_index.load().groups["leaderboard"].read_text(), Loader=yaml.SafeLoader)
    assert sorted(tasks) == sorted(leaderboard["task"])
    assert "--num_fewshot" not in flags  # each task keeps the few-shot count its YAML pins


def test_humaneval_suite_runs_the_shipped_task_offline():
    suite = load("humaneval")
    (argv,) = build_commands(MODEL, suite, CUDA_TP1, include_path=str(suite.include_dir))
    flags, _, tasks = parse(argv)
    assert tasks == ["qf_humaneval"] and flags["--include_path"] == str(suite.include_dir)
    task_yaml = suite.include_dir / "humaneval" / "qf_humaneval.yaml"
    data_files = yaml.load(task_yaml.read_text(), Loader=task_index.Loader)["dataset_kwargs"]["data_files"]
    assert (suite.include_dir / data_files).is_file()  # relative to include_path: the runner's cwd
    assert suite.tasks[0].scorer == "humaneval_sandbox" and suite.tasks[0].result_key == "pass@1,none"


def test_openllm_v1_2024_builds_card_000s_commands_flag_for_flag():
    suite = load("openllm-v1-2024")
    to_card = card_names(suite)
    expected = {parse(c)[2][0]: parse(c) for c in CARD_000.values()}
    assert len(expected) == 7
    seen = []
    for argv in build_commands(MODEL_000, suite, EngineSettings(engine="vllm", platform="cuda", tensor_parallel_size=2)):
        flags, margs, tasks = parse(argv)
        for task in tasks:  # MMLU and Winogrande share every flag: one process here, two commands on the card
            want_flags, want_margs, _ = expected[to_card[task]]
            assert (flags, margs) == (want_flags, want_margs), task
            seen.append(to_card[task])
    assert sorted(seen) == sorted(expected)
    mmlu = next(t for t in suite.tasks if t.task == "mmlu")
    assert (mmlu.metric, mmlu.apply_chat_template, mmlu.add_bos_token) == ("acc", False, True)  # loglikelihood MMLU


def _task_config(name: str) -> dict:
    return task_index.load_yaml(task_index.load().tasks[name])


def test_gsm8k_twin_is_the_one_closest_to_the_forks_prompt():
    """The fork's gsm8k_cot_llama_3.1_instruct (branch llama_3.1_instruct), as facts, not its file: few-shot targets
    end with ".", the default target delimiter, the prompt without a trailing newline, stops only at end-of-text."""
    chosen, other = _task_config("gsm8k_llama"), _task_config("gsm8k_cot_llama")
    for cfg, like_fork in ((chosen, True), (other, False)):
        targets = [s["target"] for s in cfg["fewshot_config"]["samples"]]
        assert len(targets) == 8
        assert all(t.endswith(".") for t in targets) is like_fork
        assert ("target_delimiter" not in cfg) is like_fork
        assert (not cfg["doc_to_text"].endswith("\n")) is like_fork
        assert ("Q:" not in cfg["generation_kwargs"]["until"]) is like_fork
    for name in ("openllm-v1", "openllm-v1-2024"):
        (task,) = [t for t in load(name).tasks if t.card_task == "gsm8k_cot_llama_3.1_instruct"]
        assert task.task == "gsm8k_llama" and task.result_key == "exact_match,strict_match"


def test_humaneval_evalplus_samples_as_card_002():
    from components.evaluation.humaneval import SCORING

    suite = load("humaneval-evalplus")
    (argv,) = build_commands(MODEL, suite, CUDA_TP1, include_path=str(suite.include_dir))
    flags, _, tasks = parse(argv)
    assert tasks == ["qf_humaneval_evalplus", "qf_humaneval_plus"] and flags["--apply_chat_template"] is True
    index = task_index.load(suite.include_dir)
    for task in tasks:
        cfg = task_index.load_yaml(index.tasks[task])
        gen = cfg["generation_kwargs"]
        assert cfg["repeats"] == 50 and (gen["do_sample"], gen["temperature"], gen["top_p"]) == (True, 0.2, 0.95)
        assert gen["max_gen_toks"] == 768 and gen["until"] == ["\n```\n"]
        assert cfg["gen_prefix"].endswith("passes corresponding tests:\n```python\n")
        assert SCORING[task].sanitize and SCORING[task].plus == (task == "qf_humaneval_plus")
    scored = {t.task for name in suites.names() for t in load(name).tasks if t.scorer == "humaneval_sandbox"}
    assert scored <= set(SCORING)  # every sandbox-scored task says how it is scored


# ---------------------------------------------------------------- the task index kept on disk

def _fake_lm_eval(site: Path, record: str | None) -> Path:
    """site/lm_eval/tasks with a template carrying a tag and a task including it; a RECORD beside it unless None."""
    tasks = site / "lm_eval" / "tasks"
    (tasks / "fam").mkdir(parents=True)
    (tasks / "fam" / "_template.yaml").write_text("tag:\n  - fam_tag\noutput_type: loglikelihood\n")
    (tasks / "fam" / "one.yaml").write_text("include: _template.yaml\ntask: fam_one\n")
    (tasks / "grp.yaml").write_text("group: fam_group\ntask:\n  - fam_one\n")
    if record is not None:
        (site / "lm_eval-0.0.dist-info").mkdir()
        (site / "lm_eval-0.0.dist-info" / "RECORD").write_text(record)
    return tasks


@pytest.fixture
def home(tmp_path, monkeypatch):
    from components.settings import settings

    monkeypatch.setenv("QUANTFLOW_HOME", str(tmp_path / "home"))
    settings.cache_clear()
    task_index.installed_tasks.cache_clear()
    task_index.scan_tasks.cache_clear()
    yield tmp_path / "home"
    settings.cache_clear()
    task_index.installed_tasks.cache_clear()
    task_index.scan_tasks.cache_clear()


def test_the_installed_task_index_is_kept_by_its_lm_eval_record(home):
    root = str(task_index.lm_eval_tasks_dir())
    scanned = task_index.scan_tasks(root)
    task_index.scan_tasks.cache_clear()
    first = task_index.installed_tasks(root)
    assert first == scanned and len(list((home / "task-index").glob("*.json"))) == 1
    task_index.installed_tasks.cache_clear()
    task_index.scan_tasks.cache_clear()
    again = task_index.installed_tasks(root)  # a new process, in effect: read back, not scanned
    assert again == scanned and task_index.scan_tasks.cache_info().currsize == 0
    [memo] = (home / "task-index").glob("*.json")
    memo.write_text('{"key": "')  # corrupt: a miss, scanned and stored again
    task_index.installed_tasks.cache_clear()
    assert task_index.installed_tasks(root) == scanned and task_index.scan_tasks.cache_info().currsize == 1


def test_another_record_is_another_index(home, tmp_path):
    tasks = _fake_lm_eval(tmp_path / "site", "lm_eval/tasks/fam/one.yaml,sha256=a,1\n")
    index = task_index.installed_tasks(str(tasks))
    assert index.kind("fam_one") == "task" and index.tags == {"fam_tag": ["fam_one"]} and index.kind("fam_group") == "group"
    (tasks / "fam" / "two.yaml").write_text("include: _template.yaml\ntask: fam_two\n")  # an upgrade: new files,
    (tmp_path / "site" / "lm_eval-0.0.dist-info" / "RECORD").write_text(  # a new RECORD
        "lm_eval/tasks/fam/one.yaml,sha256=a,1\nlm_eval/tasks/fam/two.yaml,sha256=b,1\n")
    task_index.installed_tasks.cache_clear()
    task_index.scan_tasks.cache_clear()
    assert task_index.installed_tasks(str(tasks)).tags == {"fam_tag": ["fam_one", "fam_two"]}
    assert len(list((home / "task-index").glob("*.json"))) == 2


def test_a_task_folder_without_a_record_is_scanned_every_time(home, tmp_path):
    tasks = _fake_lm_eval(tmp_path / "src", None)
    assert task_index.installed_tasks(str(tasks)).kind("fam_one") == "task"
    assert not (home / "task-index").exists()
