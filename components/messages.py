"""How a problem is said: one line, the fix named, a did-you-mean for a misspelling, and what a check found
(`Checked`). Shared by every component's checks (specs, models, recipes, suites, calibration, stores), so none of them
imports another for its wording."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import ValidationError

T = TypeVar("T")


@dataclass
class Checked(Generic[T]):
    """What one component's preflight check found, the one shape of them all (`check` / `check_<thing>`):
    `value`, what preflight goes on with (None when it cannot be used); `problems`, one line each naming the field and
    the fix (any refuses the run); `notes`, what was not checked here or was chosen, said with the plan."""

    value: T | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def closest(value: str, choices: list[str]) -> list[str]:
    """The choices a misspelling most likely meant ('w8a8_int8' -> ['w8a8-int8'], 'fp8' -> both fp8 schemes)."""
    norm = lambda x: re.sub(r"[^a-z0-9]", "", x.lower())  # noqa: E731
    same = [c for c in choices if norm(c) == norm(value)]
    if same:
        return same
    prefixed = [c for c in choices if norm(value) and norm(c).startswith(norm(value))]
    return prefixed or difflib.get_close_matches(value.lower(), choices, n=2, cutoff=0.5)


def did_you_mean(value: str, choices: list[str]) -> str:
    """': did you mean 'x'?' (or 'one of ...'), or '' when nothing is close."""
    hint = closest(value, choices)
    if not hint:
        return ""
    return f": did you mean {hint[0]!r}?" if len(hint) == 1 else f": did you mean one of {', '.join(map(repr, hint))}?"


def validation_problems(e) -> list[str]:
    """One line per problem of a pydantic ValidationError: where, then what (no input values: they may hold secrets)."""
    out = []
    for err in e.errors(include_input=False, include_url=False):
        loc = ".".join(str(x) for x in err["loc"]) or "spec"
        out.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    return out


def first_line(e: BaseException, limit: int = 400) -> str:
    """An exception as one line of a problem list: a pydantic error's every field and message, else its first line."""
    if isinstance(e, ValidationError):
        return f"{e.title}: " + "; ".join(validation_problems(e))[:limit]
    text = str(e).strip().splitlines()
    return text[0][:limit] if text else ""
