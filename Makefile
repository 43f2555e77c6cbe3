# Every target installs what it needs into .venv first, so a fresh clone needs only `make`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast test-integrations lint typecheck demo bench bench-gpu docs clean

# Extras: test (pytest, hypothesis), dev (ruff, mypy and the docs tools: tests/test_docs.py
# builds the site), transformers (tests/test_transformers_*.py), TRL and PEFT for its tests.
# -c constraints.txt keeps torch at the pinned CPU build and pins transformers and TRL.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[torch,demo,test,dev,transformers]' trl peft
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

# The Hugging Face integration tests (tests/test_transformers_*.py, the trainer ones included)
# against each transformers version below, each in its own venv under .venv-integrations/:
# the one constraints.txt pins (with TRL; PEFT in both) and the oldest the [transformers] extra allows.
INTEGRATIONS := .venv-integrations
TRANSFORMERS_PINNED := $(shell sed -n 's/^transformers==//p' constraints.txt)
TRANSFORMERS_VERSIONS := $(TRANSFORMERS_PINNED) 4.57.6

test-integrations:
	@status=0; summary=""; \
	for v in $(TRANSFORMERS_VERSIONS); do \
	  venv=$(INTEGRATIONS)/transformers-$$v; \
	  if [ ! $$venv/.installed -nt constraints.txt ] || [ ! $$venv/.installed -nt pyproject.toml ]; then \
	    test -x $$venv/bin/python || $(PYTHON) -m venv $$venv || exit 1; \
	    grep -v -E '^(transformers|trl)==' constraints.txt > $$venv/constraints.txt; \
	    if [ "$$v" = "$(TRANSFORMERS_PINNED)" ]; then more="trl==$$(sed -n 's/^trl==//p' constraints.txt)"; else more=""; fi; \
	    $$venv/bin/python -m pip install --quiet -c $$venv/constraints.txt -e '.[torch,test]' \
	      "transformers==$$v" accelerate peft $$more || exit 1; \
	    touch $$venv/.installed; \
	  fi; \
	  echo "== transformers $$v"; \
	  if $$venv/bin/python -m pytest -q -p no:cacheprovider tests/test_transformers_*.py; \
	  then summary="$$summary\n  transformers $$v: passed"; \
	  else summary="$$summary\n  transformers $$v: FAILED"; status=1; fi; \
	done; \
	printf "test-integrations:$$summary\n"; exit $$status

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
	rm -rf $(VENV) $(INTEGRATIONS) .pytest_cache .mypy_cache .ruff_cache crossentropy-report docs/_build docs/api/generated
