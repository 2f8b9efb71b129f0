# Quick start (x86_64 Linux, Python 3.11):
#   make demo   set up .venv and run the webcam demo on the sample photos (no camera needed)
#   make test   set up .venv and run the whole test suite (CI runs this)
#   make test-fast   the in-process checks only, for the edit-run loop (no slow, emulation or notebook tests)
#   make lint   ruff's lint rules and its formatting check (pyproject.toml [tool.ruff])
#   make figures-quantize   the quantization toolkit's figures (offline assets, a few minutes)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast lint figures-quantize clean

$(VENV)/.installed: pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) Codes/mobile_net.py --source samples --frames 50
	$(PY) Codes/mobile_net.py --source samples --frames 50 --quantize

# two workers, one test file each at a time (pytest-xdist): the Pi emulation and the notebooks run side by side
test: setup
	$(PY) -m pytest -n 2 --dist loadfile

test-fast: setup
	$(PY) -m pytest -m "not slow and not emulation and not notebooks"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

figures-quantize: setup
	PY=$(PY) bash tools/quantize_figures.sh

clean:
	rm -rf $(VENV) .pytest_cache
