# Quickstart targets. `make demo` and `make test` each set up a virtual environment
# in .venv first (once; redone when requirements.txt or setup.py change).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DATA := data/demo_corpus
DEMO_OUT := results/demo/mtl

.PHONY: setup demo demo-data test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

demo-data: setup
	$(BIN)/mtl-ser demo-data $(DEMO_DATA)

# The main job on the demo corpus: multi-task training (tiny random wav2vec2, CPU, a few
# minutes), LOSO fold 1, then the test results. Results and plots land in $(DEMO_OUT).
demo: demo-data
	$(BIN)/python recipes/train_mtl.py hparams/mtl.yaml hparams/overrides/tiny.yaml \
		hparams/overrides/demo.yaml --data_folder=$(DEMO_DATA) --output_folder=$(DEMO_OUT)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) data results
