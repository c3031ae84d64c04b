"""The tier table in tests/conftest.py names what exists: a renamed module or test would silently fall back to `unit`
(and then fail for want of its servers in a unit-only run), an undeclared tier would be an unknown marker."""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import conftest

TESTS = Path(__file__).resolve().parent


def test_every_tier_is_a_declared_marker():
    declared = {m.split(":")[0] for m in tomllib.loads((TESTS.parent / "pyproject.toml").read_text())
                ["tool"]["pytest"]["ini_options"]["markers"]}
    used = {t for tiers in [*conftest.MODULES.values(), *conftest.TESTS.values()] for t in tiers}
    assert used <= set(conftest.TIERS) <= declared and conftest.NEEDS_SERVERS <= set(conftest.TIERS)


def test_the_table_names_existing_modules_and_tests():
    def functions(module: str) -> set[str]:
        tree = ast.parse((TESTS / f"{module}.py").read_text())
        return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}

    missing = [m for m in conftest.MODULES if not (TESTS / f"{m}.py").exists()]
    missing += [key for key in conftest.TESTS if key.split("::")[1] not in functions(key.split("::")[0])]
    assert missing == [], f"tests/conftest.py names what is not there (renamed?): {missing}"
