# d2bench: the two commands of the README's quickstart, and their setup.
#   make test    set up .venv and run the test suite (CPU; what CI runs)
#   make demo    set up .venv and run a whole benchmark on the CPU (torchvision detector)
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

.PHONY: setup test demo
setup: $(VENV)/.installed

test: setup
	$(VENV)/bin/python -m pytest

demo: setup
	$(VENV)/bin/python -m runner model=tv_fasterrcnn_mobilenet device=cpu \
		bench.warmup=5 bench.iters=20 hydra.run.dir=outputs/demo
