# Every target installs what it needs into .venv first, so a fresh clone needs only `make`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast lint typecheck demo bench bench-gpu docs clean

# Extras: test (pytest, hypothesis), dev (ruff, mypy and the docs tools: tests/test_docs.py
# builds the site). -c constraints.txt keeps torch at the pinned CPU build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[torch,demo,test,dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: lint typecheck
	$(PY) -m pytest

# While iterating (a few minutes on two cores): lint, typecheck and every test not marked slow,
# i.e. without the multi-process groups, the browser, the docs build and the benchmarks' dry
# runs (pyproject.toml's markers, tests/conftest.py). `make test`, which CI runs, runs them all.
test-fast: lint typecheck
	$(PY) -m pytest -m "not slow"

# `make demo` needs only the [demo] extra (numpy, matplotlib, scikit-learn, rich): on a fresh
# clone it installs that alone, no torch and no test tools. A .venv that `make install` or
# `make test` built already has it. The torch cross-check is skipped (and says so) without torch.
DEMO_STAMP := $(VENV)/.installed-demo

$(DEMO_STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c constraints.txt -e '.[demo]'
	touch $(DEMO_STAMP)

demo: $(if $(wildcard $(STAMP)),$(STAMP),$(DEMO_STAMP))
	$(VENV)/bin/crossentropy demo

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# One command on one CUDA GPU (under 5 minutes): correctness, ceilings, time and memory of the
# Triton path and its peers; writes benchmarks/results/gpu.md.
bench-gpu: $(STAMP)
	$(PY) benchmarks/bench_gpu.py

# The documentation site, warnings as errors; open docs/_build/html/index.html (no network).
docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache crossentropy-report docs/_build docs/api/generated
