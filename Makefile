# Two commands on a fresh machine with Python 3.11 and pip:
#   make reproduce   set up .venv and run the main job
#   make test        set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch, installed before the package so that pip never resolves the
# package's torch requirement to a multi-GB CUDA build. On a machine without a local
# CPU wheel, point pip at the CPU index:
#   make TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=
# verl is in the default set so that the tests run the adapter through verl's own code.
EXTRAS ?= dev,verl
# The exact versions installed (pip -c): constraints.txt, the frozen resolve of `.[dev,verl]`
# on Python 3.11, Linux x86_64 (`make lock` updates it). `make setup CONSTRAINTS=` installs
# from pyproject's ranges instead (another Python or platform).
CONSTRAINTS ?= constraints.txt
PIN := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: setup setup-gpu gpu-smoke reproduce test test-all lint format bench lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS) $(PIN)
	$(BIN)/python -m pip install -e ".[$(EXTRAS)]" $(PIN)
	touch $@

# constraints.txt anew: a fresh resolve of pyproject's ranges for `.[dev,verl]` (the newest
# releases they allow) with the CPU torch, in a scratch venv, frozen (local labels such as
# +cpu dropped: any 2.13.0 build satisfies the pin). Review the diff, then `make test`.
lock:
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS); \
	"$$tmp/venv/bin/python" -m pip install -e ".[dev,verl]"; \
	{ grep '^#' constraints.txt; "$$tmp/venv/bin/python" -m pip freeze --all --exclude-editable \
	  | grep -v '^pip==' | sed -E 's/^([^=]+==[^+]+)\+.*$$/\1/'; } > "$$tmp/constraints.txt"; \
	mv "$$tmp/constraints.txt" constraints.txt

# The main job: the whole ablation grid at the mini scale through Snakemake, ending in
# reports/REPRODUCTION.md. Pass workflow options with ARGS, e.g.
#   make reproduce ARGS="--config scale=smoke"
# A Snakemake killed hard leaves its lock behind; it is removed first, but only when no
# Snakemake or workbench process of this checkout is alive (workflow/unlock_stale.py).
WORLD := results/mini/world
ARGS ?=
reproduce: setup
	$(BIN)/python workflow/unlock_stale.py
	$(BIN)/snakemake --cores 2 $(ARGS)

# The default suite (slow tests excluded); pytest exits non-zero when nothing ran. The 20
# slowest tests are listed at the end, so that every CI log shows where the suite's time goes.
test: setup
	$(BIN)/python -m pytest -q -m "not slow" --durations=20

test-all: setup
	$(BIN)/python -m pytest -q

# Lint and formatting (ruff, pinned in the dev extra: its format changes between releases).
# CI runs `make lint test`; `make format` rewrites the files.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	$(BIN)/python benchmarks/bench_loss.py
	$(BIN)/workbench prepare --out $(WORLD)
	$(BIN)/python benchmarks/bench_mini_step.py --world $(WORLD)

# The GPU environment, a venv of its own (the CPU one's torch would satisfy a torch pin
# with a CPU build): torch, vLLM and transformers at the versions verl 0.9.1 was tested
# with (pyproject's gpu extra), flash-attn with FLASH_ATTN=1 (compiled against that torch;
# without it verl-launch switches the FSDP model to SDPA attention), then a check that
# refuses a CPU torch or other versions. Point pip at a CUDA index with GPU_TORCH_PIP_ARGS,
# e.g. "--index-url https://download.pytorch.org/whl/cu128".
# constraints.txt is not applied here: it pins the CPU set (torch 2.13.0, transformers
# 5.10), which the gpu extra's torch 2.11.0 / transformers 5.9.0 contradict.
GPU_VENV ?= .venv-gpu
GPU_TORCH_VERSION ?= 2.11.0
GPU_TORCH_PIP_ARGS ?=
FLASH_ATTN ?= 0
FLASH_ATTN_VERSION ?= 2.8.3
GPU_STAMP := $(GPU_VENV)/.installed-gpu

setup-gpu: $(GPU_STAMP)

$(GPU_STAMP): pyproject.toml
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install "torch==$(GPU_TORCH_VERSION)" $(GPU_TORCH_PIP_ARGS)
	$(GPU_VENV)/bin/python -m pip install -e ".[dev,verl,gpu]"
	test "$(FLASH_ATTN)" != 1 || $(GPU_VENV)/bin/python -m pip install --no-build-isolation "flash-attn==$(FLASH_ATTN_VERSION)"
	$(GPU_VENV)/bin/python -m workbench.backends.verl.stage check-gpu-env
	touch $@

# The verl path end to end on a GPU machine, in one command (goal: under 8 minutes on one
# H200): toy models and data, verl-check, 3 sgopd steps through verl-launch, the merge,
# a vLLM evaluation, assertions; results/gpu-smoke/report.json. DRY_RUN=1 runs every part
# a CPU can here (report.dry-run.json). GPU_PYTHON=PATH uses a ready GPU environment
# instead of $(GPU_VENV) (an offline GPU machine cannot run setup-gpu).
DRY_RUN ?=
GPU_PYTHON ?=
ifeq ($(DRY_RUN),1)
gpu-smoke: setup
	$(BIN)/python benchmarks/gpu_smoke.py --dry-run
else ifneq ($(GPU_PYTHON),)
gpu-smoke:
	$(GPU_PYTHON) benchmarks/gpu_smoke.py
else
gpu-smoke: setup-gpu
	$(GPU_VENV)/bin/python benchmarks/gpu_smoke.py
endif

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
