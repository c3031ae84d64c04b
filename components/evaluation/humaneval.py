"""HumanEval and HumanEval+ as seed card 002 ran them with EvalPlus, scored in quantflow's sandbox.

The card: EvalPlus codegen on vLLM, 50 completions per problem at temperature 0.2 (top_p 0.95, 768 new tokens, the
chat prompt of evalplus's codegen), each completion sanitized by evalplus, then pass@1 by the unbiased estimator of
Chen et al. (2021). Here lm-eval generates (tasks/humaneval/qf_humaneval_evalplus.yaml, qf_humaneval_plus.yaml), this
module says how each task's completions are turned into programs and scored, and sandbox.py executes them.

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

OVERRIDE_ENV = "HUMANEVAL_OVERRIDE_PATH"
# evalplus 0.3.1's own requirements pull google-generativeai, which pins protobuf below 6 (mlflow runs on 7): only the
# parts used here (data loader, sanitizer) are installed, without their declared dependencies.
INSTALL = "pip install --no-deps evalplus==0.3.1 tempdir==0.7.1 wget==3.2 appdirs==1.4.4 tree-sitter tree-sitter-python"


class Scoring(BaseModel):
    sanitize: bool  # evalplus's sanitizer first: the completion is a whole answer, the code is extracted from it
    plus: bool  # HumanEval+ tests (base and plus inputs, outputs diffed against the canonical solution)


# How each shipped lm-eval task's completions are scored (sandbox.score_lm_eval_samples).
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
