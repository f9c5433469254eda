# Quick start:  make demo   |   make test
# Each target creates .venv if missing and installs the project into it (editable).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch and torchvision must be a matching pair, installed before nnunetv2 (see docs/install.md):
# otherwise nnunetv2 -> timm -> torchvision silently swaps torch for another build.
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint clean

$(STAMP): setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PAIR)
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -c "import torch, torchvision, timm, nnunetv2; print('torch', torch.__version__, 'nnunetv2 ok')"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dnnunet demo

# Lint (pyflakes, pycodestyle, import order; settings in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Lint, then the whole suite, slow end-to-end tests included (CI runs this).
test: lint
	$(PY) -m pytest -q

# Unit tests only, for a quick local loop.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) dnnunet_data demo_output .pytest_cache
