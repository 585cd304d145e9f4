# Two entry points: `make run` (whole pipeline on MNIST, then its evaluation and report) and `make test`.
# Each creates .venv on first use and re-installs only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
EVAL_ARGS ?=
# the run `make run` trains and evaluates (named, so eval finds it beside other runs such as the pretrained copy)
NAME   ?= mnist

.PHONY: run test bench clean pretrained

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	@t0=$$(date +%s); $(BIN)/vqprior run --name $(NAME) $(ARGS) && t1=$$(date +%s) && $(BIN)/vqprior eval --name $(NAME) $(EVAL_ARGS) && t2=$$(date +%s) && \
	echo && echo "make run: vqprior run $$((t1 - t0)) s, vqprior eval $$((t2 - t1)) s" && \
	echo "report: artifacts/$(NAME)/report.html (open it in a browser)" && \
	echo "the page: $(BIN)/vqprior serve --name $(NAME)   then open http://127.0.0.1:7860/"

# rebuild the pretrained MNIST run shipped in the package (vqprior/pretrained/) from a default run on this machine
pretrained: $(STAMP)
	@t0=$$(date +%s); $(BIN)/vqprior run --name mnist && $(BIN)/vqprior eval --name mnist && t1=$$(date +%s) && \
	$(BIN)/python -m vqprior.pretrained artifacts/mnist --seconds $$((t1 - t0)) \
	  --command "vqprior run --name mnist && vqprior eval --name mnist" --yardstick "$$($(BIN)/python bench/yardstick.py)"

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
