# tensam build / test entry points.  `make test` on a fresh clone creates .venv itself.

PY      := .venv/bin/python
PIP     := $(PY) -m pip
STAMP   := .venv/.installed
NLP_STAMP := .venv/.installed-nlp

export WANDB_MODE ?= offline

.PHONY: venv setup test lint reproduce-table1 reproduce-fig1 reproduce-fig2 theory \
	reproduce-optimizers reproduce-all bench clean

venv: $(STAMP)

# Reinstall only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install --upgrade pip
	$(PIP) install -e ".[dev]"
	$(PIP) check
	touch $@

setup: $(NLP_STAMP)

$(NLP_STAMP): $(STAMP)
	$(PIP) install -e ".[nlp]"
	$(PIP) check
	touch $@

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check src tests scripts $(wildcard train.py)

# Paper artefacts: each writes its table/figure into results/ (see experiments/*/README.md).
reproduce-table1: venv
	$(PY) scripts/reproduce_table1.py
	$(PY) scripts/make_table1.py

reproduce-fig1: venv
	$(PY) scripts/reproduce_fig1.py

reproduce-fig2: venv
	$(PY) scripts/reproduce_fig2.py

theory: venv
	$(PY) scripts/theory.py

reproduce-optimizers: venv
	$(PY) scripts/compare_optimizers.py --full

reproduce-all: reproduce-table1 reproduce-fig1 reproduce-fig2 theory reproduce-optimizers bench

bench: venv
	$(PY) scripts/bench_optim.py

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache
	find . -path ./.venv -prune -o -name __pycache__ -type d -exec rm -rf {} +
