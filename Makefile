# tensam build / test entry points.  `make test` on a fresh clone creates .venv itself.

PY      := .venv/bin/python
PIP     := $(PY) -m pip
STAMP   := .venv/.installed
NLP_STAMP := .venv/.installed-nlp

export WANDB_MODE ?= offline

.PHONY: venv setup test lint reproduce-table1 bench clean

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

# pytest exits 5 when it collects no tests; treat that as success (with a note).
test: venv
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests were collected"; exit 0; fi; exit $$rc

lint: venv
	$(PY) -m ruff check src tests scripts $(wildcard train.py)

reproduce-table1: venv
	$(PY) scripts/reproduce_table1.py

bench: venv
	$(PY) scripts/bench_optim.py

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache
	find . -path ./.venv -prune -o -name __pycache__ -type d -exec rm -rf {} +
