# Two entry points: `make run` (whole pipeline on MNIST, then its evaluation and report) and `make test`.
# Each creates .venv on first use and re-installs only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
EVAL_ARGS ?=

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/vqprior run $(ARGS)
	$(BIN)/vqprior eval $(EVAL_ARGS)

test: $(STAMP)
	$(BIN)/ruff check vqprior stages tests bench examples
	$(BIN)/ruff format --check vqprior stages tests bench examples
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/yardstick.py
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/sampling.py
	$(BIN)/python bench/quality_sweep.py --help

clean:
	rm -rf $(VENV) *.egg-info
