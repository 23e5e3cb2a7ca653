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
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: setup reproduce test test-all bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install -e ".[$(EXTRAS)]"
	touch $@

# The main job: the whole ablation grid at the mini scale through Snakemake, ending in
# reports/REPRODUCTION.md. Pass workflow options with ARGS, e.g.
#   make reproduce ARGS="--config scale=smoke"
WORLD := results/mini/world
ARGS ?=
reproduce: setup
	$(BIN)/snakemake --cores 2 $(ARGS)

# The default suite (slow tests excluded); pytest exits non-zero when nothing ran.
test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-all: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_loss.py
	$(BIN)/workbench prepare --out $(WORLD)
	$(BIN)/python benchmarks/bench_mini_step.py --world $(WORLD)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
