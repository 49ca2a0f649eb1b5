# fedasr — the table of contents. `make help` lists the targets.
# Two commands matter:  `make reproduce` (setup + data + the quick pipeline)  and  `make test`.

SHELL   := /bin/bash
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= quick
SEED    ?= 0
# the committed seed model is the quick profile's; other profiles train into their own folder
SEED_DIR ?= $(if $(filter quick,$(PROFILE)),results/seed,results/seed-$(PROFILE))
# one BLAS/torch thread per process: on 2 cores two threads under load run ~10x slower (DESIGN §6)
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
# Flower runs without network (DESIGN §4)
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

.PHONY: help setup system-deps data summary seed efficiency smoke deployment-demo federated quality notebooks reproduce test test-all test-gpu clean-data

help:  ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: system-deps $(VENV)/.installed  ## venv with the exact pins + Debian TTS packages (idempotent)

system-deps:  ## install missing Debian packages (root) or print the apt-get line
	@tools/system-deps.sh

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=25"
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@
	@echo "setup: $(VENV) ready ($$($(PY) -c 'import torch, flwr; print("torch", torch.__version__, "flwr", flwr.__version__)'))"

data: setup  ## generate the speech corpus (PROFILE=tiny|quick|full); skipped when complete and up to date
	$(PY) -m fedasr.corpus --profile $(PROFILE) --out data/$(PROFILE) --seed $(SEED) --if-stale

summary: data  ## corpus summary → results/data/<profile>_summary.json
	$(PY) -m fedasr.data summary data/$(PROFILE) --out results/data/$(PROFILE)_summary.json

seed: data  ## seed model (central pretraining on proxy data); retrained only if config/corpus changed
	$(PY) -m fedasr.train --config configs/seed/$(PROFILE).toml --out $(SEED_DIR) --if-stale

efficiency: setup  ## device-budget table at 129M (fresh process per row) → results/efficiency/
	$(PY) bench/efficiency.py --config configs/efficiency/paper.toml

smoke: setup  ## 2 rounds of the toy task on Flower's Simulation Engine (a minute)
	$(PY) -m fedasr.federated.launch simulation --set fed.num-rounds=2 --set run.experiment='"smoke"'

deployment-demo: setup  ## the same app on a loopback SuperLink + 2 SuperNodes (Deployment Engine)
	$(PY) -m fedasr.federated.launch deployment --set fed.num-rounds=2 --set run.experiment='"deployment-demo"'

federated: seed  ## FedSGD vs FedAvg on the user domain from the seed (configs/federated/$(PROFILE).toml)
	$(PY) -c "from fedasr import config, experiments as e; e.run_federated_experiment(config.load(e.FederatedExperiment, 'configs/federated/$(PROFILE).toml'))"

quality: seed  ## the user-corrections ablation → results/quality/wer.json (configs/quality/$(PROFILE).toml)
	$(PY) -c "from fedasr import config, experiments as e; e.run_quality_experiment(config.load(e.QualityExperiment, 'configs/quality/$(PROFILE).toml'))"

readme-results:  ## rewrite README's results block from results/*.json
	$(PY) tools/readme_results.py

NOTEBOOKS := $(notdir $(wildcard notebooks/[0-9]*.ipynb))
PM_FLAGS  ?=
notebooks: setup  ## execute every notebook with papermill → results/notebooks/
	@mkdir -p results/notebooks
	@for nb in $(NOTEBOOKS); do \
	  echo "papermill $$nb"; \
	  $(PY) -m papermill --cwd . notebooks/$$nb results/notebooks/$$nb --log-output $(PM_FLAGS) || exit 1; \
	done

reproduce: setup data summary seed notebooks  ## the main job: everything from a fresh clone (quick profile, CPU)
	@echo "reproduce: done — see results/"

test: setup  ## the default test suite (CPU, < 15 min on 2 cores)
	$(PY) -m pytest -m "not slow and not gpu" -q

test-all: setup  ## every test, including slow end-to-end ones
	$(PY) -m pytest -m "not gpu" -q

test-gpu: setup  ## the CUDA checks (tests/test_gpu.py) on a machine with a GPU
	$(PY) -m pytest -m gpu -q -rs

clean-data:  ## remove generated audio (manifests of committed profiles stay in git)
	rm -rf data/tiny/audio data/quick/audio data/full/audio
