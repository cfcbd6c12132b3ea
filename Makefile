# d2bench: the two commands of the README's quickstart, and their setup.
#   make test    set up .venv and run the test suite (CPU; what CI runs)
#   make demo    set up .venv and run a whole benchmark on the CPU (torchvision detector)
PYTHON ?= python3
VENV   ?= .venv
# torch: on a machine without an NVIDIA GPU (no nvidia-smi) the CPU build from PyTorch's CPU
# index (PyPI's default Linux build carries CUDA: a 5.7 GB venv for nothing); with a GPU, PyPI's
# build. To keep a torch built for your CUDA that you installed first, set TORCH= (empty).
TORCH  ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi),,--index-url https://download.pytorch.org/whl/cpu)

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
