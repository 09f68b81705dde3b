# `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
TF ?= tensorflow-cpu>=2.16
VENV ?= .venv
PY := $(VENV)/bin/python
# TensorFlow for the trainer side; CPU wheels keep the test set-up small.
# A GPU machine: make TF='tensorflow[and-cuda]' demo
STAMP := $(VENV)/.installed

.PHONY: demo test bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet '$(TF)' -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vidring demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/handoff.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
