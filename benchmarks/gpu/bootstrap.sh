#!/bin/sh
# Carried wheels for the GPU check (benchmarks/gpu/README.md).
#   bootstrap.sh download [DIR]        here, where a package index is reachable: the wheels into DIR
#                                      (default benchmarks/gpu/wheels, git-ignored), for Python 3.11 and 3.12
#                                      (PY_VERSIONS; the pins need 3.11 or later)
#   bootstrap.sh install VENV [DIR]    on the lent machine, offline: a venv that keeps the machine's torch and
#                                      transformers (--system-site-packages) plus the carried wheels, then an import check
# REQUIREMENTS overrides the list (benchmarks/gpu/requirements.txt); PYTHON the interpreter (default python3);
# CHECK_IMPORTS the modules the install must import (default llmcompressor).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REQS=${REQUIREMENTS:-$HERE/requirements.txt}
PY=${PYTHON:-python3}
case "${1:-}" in
download)
  DIR=${2:-$HERE/wheels}
  mkdir -p "$DIR"
  for v in ${PY_VERSIONS:-3.11 3.12}; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$v" --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DIR" -r "$REQS"
  done
  du -sh "$DIR"
  ;;
install)
  VENV=${2:?usage: bootstrap.sh install VENV [DIR]}
  DIR=${3:-$HERE/wheels}
  "$PY" -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -m pip install -q --no-index --no-deps --find-links "$DIR" -r "$REQS"
  # every carried distribution is installed, and the check's imports work (an ImportError names what the machine
  # itself lacks, e.g. pyarrow or pandas)
  "$VENV/bin/python" - "$REQS" ${CHECK_IMPORTS:-llmcompressor} <<'PY'
import importlib, importlib.metadata as md, sys
names = [line.split("==")[0].strip() for line in open(sys.argv[1]) if line.strip() and not line.startswith("#")]
missing = []
for n in names:
    try:
        md.distribution(n)
    except md.PackageNotFoundError:
        missing.append(n)
if missing:
    sys.exit(f"not installed from the carried wheels: {', '.join(missing)}")
for module in sys.argv[2:]:
    importlib.import_module(module)
print("installed:", ", ".join(f"{n} {md.version(n)}" for n in names), "; imports:", " ".join(sys.argv[2:]))
PY
  ;;
*)
  echo "usage: bootstrap.sh download [DIR] | install VENV [DIR]" >&2
  exit 2
  ;;
esac
