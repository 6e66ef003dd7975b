# Quickstart targets. `make demo` and `make test` each set up a virtual environment
# in .venv first (once; redone when requirements.txt or setup.py change).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DATA := data/demo_corpus
DEMO_OUT := results/demo

.PHONY: setup demo demo-data test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

demo-data: setup
	$(BIN)/mtl-ser demo-data $(DEMO_DATA)

demo: demo-data
	$(BIN)/mtl-ser prepare iemocap --data-folder $(DEMO_DATA) --output-folder $(DEMO_OUT)/manifests --protocol loso --fold 1

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) data results
