# The user's verbs. `make features` then `make test` work from a fresh clone:
# every target installs the project into .venv first when needed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# What each target needs installed, smallest first: precompute alone (no TensorFlow, Keras or
# matplotlib), then training (TensorFlow, plots), then the tests and benchmarks (everything).
CORE   := $(VENV)/.installed-core
TRAIN  := $(VENV)/.installed-train
DEV    := $(VENV)/.installed-dev
DEMO   := data/demo
FEATS  := features/demo
TESTF  := features/demo-test
RUN    ?= baseline
MODEL  ?= baseline
FOLD   ?= 0
EPOCHS ?= 40
GRID   ?= experiments/grids/demo.toml

.DEFAULT_GOAL := help
.PHONY: help install features train predict sweep test bench lint format clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's|\$$(RUN)|$(RUN)|g' \
		| awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(CORE): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(TRAIN): $(CORE)
	$(PY) -m pip install --quiet -e '.[tensorflow,plots]'
	touch $@

# The tests need any torch >= 2.1; a torch already installed stays. Otherwise a CPU build first,
# where pip finds one (find-links, or an extra index that serves CPU builds):
# the index's default torch is a CUDA build of several GB. Where none is served, the dev extra
# installs the index's torch.
TORCH_CPU ?= 2.13.0+cpu

$(DEV): $(TRAIN)
	$(PY) -m pip show torch >/dev/null 2>&1 \
		|| $(PY) -m pip install --quiet 'torch==$(TORCH_CPU)' 2>/dev/null \
		|| echo "no torch $(TORCH_CPU) (a CPU build) here: the dev extra installs the index's torch"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(DEV)  ## create .venv and install the project with everything the tests use

$(DEMO)/train_tp.csv: | $(CORE)
	rm -rf $(DEMO).partial
	$(PY) -m precompute demo-data $(DEMO).partial
	rm -rf $(DEMO) && mv $(DEMO).partial $(DEMO)

features: $(CORE) $(DEMO)/train_tp.csv  ## synthesize the demo data if missing, precompute features/demo
	$(PY) -m precompute features --audio-dir $(DEMO)/train --tp $(DEMO)/train_tp.csv \
		--fp $(DEMO)/train_fp.csv --out $(FEATS)

train: $(TRAIN) features  ## train the baseline on features/demo -> runs/$(RUN)/ (RUN=, MODEL=, EPOCHS=, FOLD=)
	$(PY) -m experiments.train --features $(FEATS) --model $(MODEL) --epochs $(EPOCHS) --fold $(FOLD) --out runs/$(RUN)

predict: $(TRAIN) $(DEMO)/train_tp.csv  ## score the demo test set with runs/$(RUN)/ (after make train): submission CSV, test_lwlrap
	$(PY) -m precompute windows --audio-dir $(DEMO)/test --out $(TESTF) --step 5
	$(PY) -m experiments.predict --model runs/$(RUN)/model.keras --features $(TESTF) \
		--out runs/$(RUN)/submission.csv --truth $(DEMO)/test_ground_truth.csv --metrics runs/$(RUN)/metrics.json

sweep: $(TRAIN) features  ## train a grid of configurations x seeds on the demo sets, compare them (GRID=)
	$(PY) -m precompute windows --audio-dir $(DEMO)/test --out $(TESTF) --step 5 --quiet
	$(PY) -m experiments.sweep $(GRID)

.PHONY: preview
preview: $(TRAIN) features  ## pictures of features/demo: example spectrograms per species, augmentation
	$(PY) -m precompute preview $(FEATS) --out features/demo-preview.png

test: $(DEV)  ## run the test suite
	$(PY) -m pytest -q

bench: $(DEV)  ## loader and precompute benchmarks -> benchmarks/results.json
	$(PY) -m benchmarks.run

lint: $(DEV)  ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(DEV)  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:  ## remove generated data, features and runs (keeps .venv)
	rm -rf data features runs benchmarks/results.json benchmarks/work
