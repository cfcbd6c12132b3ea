# d2bench: the commands of the README's quickstart, and their setup (`make help` lists them).
# Each installs into .venv only, except test-all, which also installs SLURM's packages (apt).
PYTHON ?= python3
VENV   ?= .venv
# torch from the package index pip is configured with (PyPI: its Linux build carries CUDA
# libraries). On a CPU-only box that can reach PyTorch's own index, the much smaller CPU build:
#   make setup TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
# CI reaches PyPI only, so that is not the default. To keep a torch built for your CUDA that you
# installed first, set TORCH= (empty).
TORCH  ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(if $(TORCH),$(VENV)/bin/python -m pip install --quiet $(TORCH_INDEX) $(TORCH))
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $@

.PHONY: help setup check test test-all demo
help:  ## list these commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  make \1\t/'

setup: $(VENV)/.installed  ## make .venv: the pinned torch, d2bench and its test tools

check: setup  ## the quick tier for the edit-test loop: every test but the slow and SLURM ones
	$(VENV)/bin/python -m pytest -m "not slow and not slurm"

test: setup  ## the full suite on the CPU (the SLURM tier skips, saying how to ask for it)
	$(VENV)/bin/python -m pytest

test-all: setup  ## the full suite and the SLURM tier, which installs SLURM with apt (CI runs it)
	$(VENV)/bin/python -m pytest --slurm

demo: setup  ## a whole benchmark on the CPU (torchvision detector): outputs/demo/result.csv
	$(VENV)/bin/python -m runner model=tv_fasterrcnn_mobilenet device=cpu \
		bench.warmup=5 bench.iters=20 hydra.run.dir=outputs/demo
