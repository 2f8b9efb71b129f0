# Quick start (x86_64 Linux, Python 3.11):
#   make demo   set up .venv and run the webcam demo on the sample photos (no camera needed)
#   make test   set up .venv and run the whole test suite (CI runs this)
#   make test-fast   the in-process checks only, for the edit-run loop (no slow, emulation or notebook tests)
#   make lint   ruff's lint rules and its formatting check (pyproject.toml [tool.ruff])
#   make figures-quantize   the quantization toolkit's figures (offline assets, a few minutes)
#   make test-colab   every notebook as Colab runs it, with torch 2.9.1 (the oldest supported; docs/release.md).
#                     Not part of `make test`/CI: a 6.8 GB venv and about half an hour on 2 cores.
#   make release DIR=../student-release   the student release without solutions (tools/release.py)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast lint figures-quantize test-colab release clean

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

# the Colab image's part: a torch and nothing of the kit (each notebook's setup cell installs the kit), plus
# the notebook runner. torch 2.9.1 is the Pi's and the oldest the kit supports (quantlab/compat.py).
COLAB_VENV ?= .venv-colab
COLAB_TORCH ?= torch==2.9.1 torchvision==0.24.1
$(COLAB_VENV)/.installed:
	$(PYTHON) -m venv $(COLAB_VENV)
	$(COLAB_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(COLAB_VENV)/bin/python -m pip install --quiet $(COLAB_TORCH) nbclient nbformat ipykernel
	touch $@

test-colab: $(COLAB_VENV)/.installed
	$(COLAB_VENV)/bin/python tools/colab_emulation.py

release: setup
	@test -n "$(DIR)" || { echo "error: name the release's folder: make release DIR=../student-release" >&2; exit 2; }
	PYTHONPATH=Codes $(PY) tools/release.py $(DIR)

clean:
	rm -rf $(VENV) $(COLAB_VENV) .pytest_cache
