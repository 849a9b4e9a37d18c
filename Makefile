# tfattn developer commands. Every target creates .venv and installs the project if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Layer test modules also run under JAX: the layers must be backend-portable.
JAX_TESTS := tests/layers tests/test_visualize.py
PYTEST_ARGS ?=

.PHONY: install test test-tf test-jax test-notebooks demo bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: test-tf test-jax test-notebooks

test-tf: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -n 2 --durations=15 $(PYTEST_ARGS) tests

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest -n 2 --durations=5 $(PYTEST_ARGS) $(JAX_TESTS)

# Notebooks run top to bottom in a fresh kernel (quick settings).
test-notebooks: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -n 2 --nbmake $(PYTEST_ARGS) notebooks

demo: $(STAMP)
	$(PY) -m tfattn.demo --workdir runs/demo

bench: $(STAMP)
	$(PY) benchmarks/attention.py --out benchmarks/results/attention.json
	KERAS_BACKEND=jax $(PY) benchmarks/attention_jax.py --out benchmarks/results/attention_jax.json

lint: $(STAMP)
	$(PY) -m ruff check tfattn apps tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
