# `make demo` and `make test` each create or reuse .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

# torch and torchvision are pinned through the constraints file, so no other
# package can pull a different torch build. wan22 declares flash_attn, which does
# not build without CUDA, so it goes in with --no-deps and requirements/test.txt
# lists what its imports need.
$(STAMP): setup.cfg pyproject.toml requirements/constraints.txt requirements/test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c requirements/constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -c requirements/constraints.txt -r requirements/test.txt
	$(PIP) install -q --no-deps wan22==2.2.11
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: venv
	$(VENV)/bin/lite-boost demo

test: venv
	$(PY) -m pytest -q tests

bench: venv
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) lite_boost_out
