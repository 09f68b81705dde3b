# `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
TF ?= tensorflow-cpu>=2.16
VENV ?= .venv
PY := $(VENV)/bin/python
# TensorFlow for the trainer side; CPU wheels keep the test set-up small.
# A GPU machine: make TF='tensorflow[and-cuda]' demo
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench venv clean

venv: $(STAMP)

# Strict editable mode links every module into build/ so mypy sees the package;
# the folders are prerequisites so that a new module is linked too.
$(STAMP): pyproject.toml loader daemon
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet '$(TF)' -e '.[test,lint]' --config-settings editable_mode=strict
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vidring demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/mypy -p vidring.loader -p vidring.daemon
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/handoff.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
