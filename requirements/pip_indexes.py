"""The package indexes pip is configured with here, as uv options (uv does not read pip's configuration).

pip's index-url, extra-index-url and find-links (PIP_* variables and config files, as `pip config list` shows them)
become the same uv options, so uv installs from exactly where pip would: a local wheel directory that serves torch's
CPU build stays first in line, and a bare PyPI never hands out the CUDA wheel. Prints one option per line.
"""
from __future__ import annotations

import shlex
import subprocess
import sys

KEYS = ("index-url", "extra-index-url", "find-links")


def pip_settings(listing: str) -> dict[str, list[str]]:
    """`pip config list` output to {key: values}, by pip's precedence: PIP_* variables, then the site, user and global
    files (pip lists them in no such order)."""
    rank = {":env:": 0, "site": 1, "user": 2, "global": 3}
    found: dict[str, tuple[int, list[str]]] = {}
    for line in listing.splitlines():
        name, _, value = line.partition("=")
        where, _, key = name.rpartition(".")
        if key in KEYS and rank.get(where, 4) <= found.get(key, (4, []))[0]:
            found[key] = (rank.get(where, 4), shlex.split(value.strip().strip("'\"").replace("\\n", " ")))
    return {key: values for key, (_, values) in found.items()}


def uv_options(settings: dict[str, list[str]]) -> list[str]:
    out = []
    for key in KEYS:
        for value in settings.get(key, []):
            out += [f"--{key}", value]
    # pip takes the best version across all indexes; uv's default stops at the first index that has the package.
    return out + ["--index-strategy", "unsafe-best-match"]


if __name__ == "__main__":
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             check=True).stdout
    print("\n".join(uv_options(pip_settings(listing))))
