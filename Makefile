# torch-foresight developer commands. Every target sets up .venv from nothing if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip
# The pinned dev/CI torch (CPU build). Override with e.g. `make test CONSTRAINTS=` for another build.
CONSTRAINTS ?= -c constraints.txt

.PHONY: help install test lint demo bench repro docs dist clean

help:
	@echo "make demo   - set up .venv and run 'foresight demo' (writes ./foresight-demo)"
	@echo "make test   - set up .venv, run ruff and the test suite (slow reproductions skipped)"
	@echo "make bench  - run the benchmarks (ratios against baselines measured in the same run)"
	@echo "make repro  - run the slow paper reproductions (tests marked slow + examples/)"
	@echo "make docs   - build the Sphinx documentation with warnings as errors"
	@echo "make dist   - build the sdist and the wheel into ./dist (pip install dist/*.whl)"
	@echo "make lint   - ruff check"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(CONSTRAINTS) torch==2.13.0
	$(PIP) install -q $(CONSTRAINTS) -e '.[test,docs]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/foresight demo

bench: $(STAMP)
	$(PIP) install -q $(CONSTRAINTS) -e '.[bench]'
	-$(PIP) install -q --no-deps backpack-for-pytorch unfoldNd einops packaging
	-$(PIP) install -q $(CONSTRAINTS) fast-histogram
	-$(PIP) install -q --no-deps deep-ei
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

repro: $(STAMP)
	$(BIN)/python -m pytest -q -m slow -p no:cacheprovider -o addopts=''
	for f in examples/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html
	$(BIN)/python docs/check_html.py docs/_build/html

dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	@ls -l dist

clean:
	rm -rf $(VENV) build dist src/*.egg-info docs/_build .pytest_cache .ruff_cache
