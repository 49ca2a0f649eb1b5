# fedasr — the table of contents. `make help` lists the targets.
# Two commands matter:  `make reproduce` (setup + data + the quick pipeline)  and  `make test`.

SHELL   := /bin/bash
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= quick
SEED    ?= 0
TEACH_ROOT ?= /tmp/fedasr-teaching/results
# the committed seed model is the quick profile's; other profiles train into their own folder
SEED_DIR ?= $(if $(filter quick,$(PROFILE)),results/seed,results/seed-$(PROFILE))
# one BLAS/torch thread per process: on 2 cores two threads under load run ~10x slower (DESIGN §6)
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
# Flower runs without network (DESIGN §4)
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

.PHONY: help setup system-deps data summary seed seed-rnnt paper-model seed-full efficiency efficiency-quality smoke deployment-demo \
        federated reliability filter-calibration secagg ledger privacy-audit dp-quick import-librispeech import-commonvoice import-configs quality quality-seeds quality-rnnt quality-mixing quality-lr quality-dev quality-headline quality-wca bench seed-screens notebooks reproduce reproduce-teaching lab \
        compare test test-all test-gpu clean-data

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

data: setup  ## generate the speech corpus (PROFILE=tiny|quick|full); skipped when up to date or imported (data/<name>)
	@if $(PY) -c 'import sys; from fedasr.data import is_synthetic; sys.exit(is_synthetic(sys.argv[1]))' data/$(PROFILE); then \
	  echo "data: data/$(PROFILE) is an imported corpus (its corpus.json names a source): nothing to generate"; \
	elif [ -z "$(filter tiny quick full,$(PROFILE))" ]; then \
	  echo "data: no corpus at data/$(PROFILE); PROFILE=tiny|quick|full generates one, real speech is imported first:" \
	       "make import-librispeech SRC=... OUT=data/$(PROFILE), then make import-configs PROFILE=$(PROFILE)" >&2; exit 2; \
	else $(PY) -m fedasr.corpus --profile $(PROFILE) --out data/$(PROFILE) --seed $(SEED) --if-stale; fi

summary: data  ## corpus summary → results/data/<profile>_summary.json
	$(PY) -m fedasr.data summary data/$(PROFILE) --out results/data/$(PROFILE)_summary.json

seed: data  ## seed model (central pretraining on proxy data); retrained only if config/corpus changed
	@test -f configs/seed/$(PROFILE).toml || { echo "seed: no configs/seed/$(PROFILE).toml (an imported corpus:" \
	  "make import-configs PROFILE=$(PROFILE))" >&2; exit 2; }
	$(PY) -m fedasr.train --config configs/seed/$(PROFILE).toml --out $(SEED_DIR) --if-stale

seed-rnnt: seed  ## the RNN-T seed (configs/seed/quick_rnnt.toml: from the CTC seed, aux CTC, 10 min on 2 processes) → results/seed-rnnt/
	$(PY) -m fedasr.train --config configs/seed/quick_rnnt.toml --out results/seed-rnnt --if-stale

paper-model: data  ## the 129M paper preset (RNN-T over word-pieces): short pretraining, 5 FedSGD rounds with the device stack on Flower, client peak RSS (configs/paper_model/quick.toml) → results/paper-model/summary.json
	$(PY) -m fedasr.paper_model --config configs/paper_model/quick.toml

seed-full: ## the full profile's seed model (60 CPU-minutes) → results/seed-full/
	$(MAKE) seed PROFILE=full

efficiency: setup  ## device-budget table at 129M (fresh process per row) → results/efficiency/
	$(PY) bench/efficiency.py --config configs/efficiency/paper.toml

efficiency-quality: seed  ## WER cost of the device-budget methods at small scale, 3 seeds → results/efficiency-quality/
	$(PY) -c "from fedasr import config, experiments as e; e.run_federated_experiment(config.load(e.FederatedExperiment, 'configs/efficiency/quality_cost.toml'))"
	$(PY) bench/efficiency.py --config configs/efficiency/paper.toml --summarize-only

smoke: setup  ## 2 rounds of the toy task on Flower's Simulation Engine (a minute)
	$(PY) -m fedasr.federated.launch simulation --set fed.num-rounds=2 --set run.experiment='"smoke"'

deployment-demo: seed  ## the ASR task on a loopback SuperLink + 2 SuperNodes with TLS + node auth (INSECURE=1: without) → results/reliability/parts/deployment.json
	$(PY) tools/deployment_demo.py --rounds $(or $(ROUNDS),2) $(if $(filter 1,$(INSECURE)),--insecure)

federated: seed  ## FedSGD vs FedAvg on the user domain from the seed (configs/federated/$(PROFILE).toml)
	$(PY) -c "from fedasr import config, experiments as e; e.run_federated_experiment(config.load(e.FederatedExperiment, 'configs/federated/$(PROFILE).toml'))"

quality: seed  ## the user-corrections ablation → results/quality/wer.json (configs/quality/$(PROFILE).toml)
	$(PY) -c "from fedasr import config, experiments as e; e.run_quality_experiment(config.load(e.QualityExperiment, 'configs/quality/$(PROFILE).toml'))"

LIBRISPEECH_ROLES ?= --proxy-subsets train-clean-100 --proxy-dev-subsets dev-clean --proxy-test-subsets test-clean \
                     --user-subsets train-other-500 --user-dev-subsets dev-other --user-test-subsets test-other
import-librispeech: setup  ## import a LibriSpeech tree: make import-librispeech SRC=/data/LibriSpeech OUT=data/librispeech
	$(PY) -m fedasr.importers librispeech $(SRC) --out $(or $(OUT),data/librispeech) $(LIBRISPEECH_ROLES) $(ARGS)

import-commonvoice: setup  ## import a Common Voice language folder: make import-commonvoice SRC=.../en OUT=data/cv-en
	$(PY) -m fedasr.importers commonvoice $(SRC) --out $(or $(OUT),data/commonvoice) $(ARGS)

LIKE ?= quick
import-configs: setup  ## configs/{seed,federated,quality}/$(PROFILE).toml for data/$(PROFILE), from LIKE's (quick|tiny)
	$(PY) -m fedasr.importers configs --corpus data/$(PROFILE) --profile $(PROFILE) --like $(LIKE) $(ARGS)

reliability: seed  ## client faults (quick ASR), SIGKILL + resume, fuzz → results/reliability/{parts/*.json,summary.json}
	$(PY) -m fedasr.reliability faults     # configs/reliability/faults.toml: clean + 30%-faulty FedSGD, 20 rounds, seeds 0 1 2
	$(PY) -m fedasr.reliability resume     # toy task: server SIGKILLed mid-run, resumed, final weights compared bitwise
	$(PY) -m fedasr.fuzz                   # malformed inputs at every entry point
	$(PY) -m fedasr.reliability assemble   # merges every parts/*.json (deployment, dp, secagg, privacy too) → summary.json

ledger: seed  ## client-round ledger (peak RSS, bytes, compute, tier, budget) of the P2 stack's quick run → results/efficiency/ledger.json, results/figures/ledger.png
	$(PY) -c "from fedasr import config, experiments; experiments.run_federated_experiment(config.load(experiments.FederatedExperiment, 'configs/efficiency/ledger.toml'))"
	$(PY) -m fedasr.ledger results/efficiency-ledger/omc4pc_int4sr_up --out results/efficiency/ledger.json --figure results/figures/ledger.png

secagg: seed  ## secure aggregation (pairwise masking) vs the same int8/int4 uploads unmasked, quick profile → results/reliability/parts/secagg.json
	$(PY) -m fedasr.federated.secagg_experiment --config configs/reliability/secagg.toml --out results/reliability/parts/secagg.json

privacy-audit: setup  ## what leaves a device: audit every ClientApp reply on data/tiny → results/reliability/parts/privacy.json
	$(MAKE) data PROFILE=tiny
	$(PY) -m tests.test_privacy_messages

dp-quick: seed  ## WER against ε at the quick profile (configs/privacy/dp.toml) → results/reliability/parts/dp.json, dp.png
	$(PY) tools/dp_quick.py

quality-seeds: seed  ## the ablation over seeds 0, 1, 2 → results/quality/{wer,evidence}.json (3 x notebook 04's time)
	$(PY) -c "from fedasr import config, experiments as e; e.run_quality_experiment(config.load(e.QualityExperiment, 'configs/quality/$(PROFILE).toml', {'seeds': [0, 1, 2]}))"

filter-calibration: setup  ## the on-device filter calibrated on half the seen clients, judged on the other half and on an unseen kind of wrong correction → results/quality/filter_calibration.json
	$(PY) -m fedasr.filter_calibration --out results/quality/filter_calibration.json

quality-rnnt: seed-rnnt  ## the seed, FL-on-hypotheses and full-refinement rows from the RNN-T seed, 3 seeds (configs/quality/quick_rnnt.toml) → results/quality-rnnt/{wer,evidence}.json
	$(PY) -c "from fedasr import config, experiments as e; e.run_quality_experiment(config.load(e.QualityExperiment, 'configs/quality/quick_rnnt.toml'))"

quality-mixing: seed  ## Mixed FL's α screen (configs/quality/mixing.toml) → results/quality-mixing/
	$(PY) -c "from fedasr import config, experiments as e; e.run_quality_experiment(config.load(e.QualityExperiment, 'configs/quality/mixing.toml'))"

quality-lr: seed  ## server learning-rate screen (configs/quality/lr.toml) → results/quality-lr/
	$(PY) -c "from fedasr import config, experiments as e; e.run_quality_experiment(config.load(e.QualityExperiment, 'configs/quality/lr.toml'))"

quality-dev: seed  ## the headline's dev screen (configs/quality/dev_screen.toml, dev splits only) and its rule → results/quality-dev/selection.json
	$(PY) -c "from fedasr import config, dev_selection as d, experiments as e; x = config.load(e.QualityExperiment, 'configs/quality/dev_screen.toml'); e.run_quality_experiment(x); print(d.select(x.results_root, x.experiment, list(x.variants))['chosen'])"

quality-headline: seed  ## the configuration chosen on dev splits (configs/quality/headline.toml), seeds 0-2, test splits read once → results/quality-headline/evidence.json
	$(PY) -c "from fedasr import config, experiments as e; e.run_quality_experiment(config.load(e.QualityExperiment, 'configs/quality/headline.toml'))"

quality-wca: seed  ## WCA when clients differ in correction quality (configs/quality/wca_hetero.toml: headline settings, κ 1.4, 3 seeds, dev splits only) → results/quality-wca-hetero/evidence.json
	$(PY) -c "from fedasr import config, experiments as e; e.run_quality_experiment(config.load(e.QualityExperiment, 'configs/quality/wca_hetero.toml'))"

bench: setup  ## one fwd+bwd step per preset, and federation overhead → results/bench/
	$(PY) bench/asr_step.py --out results/bench/asr_step.json
	$(PY) bench/federation.py
	$(PY) bench/clientapp_memory.py --out results/bench/clientapp_memory.json

# The seed-recipe screens that are plain overrides of configs/seed/quick.toml on the current corpus
# (results/seed-screens/README.md also lists earlier screens made on corpora that no longer exist).
seed-screens: data  ## rerun the seed-recipe screens (10 CPU-minutes each) → results/seed-screens/<name>/
	$(PY) -m fedasr.train --config configs/seed/quick.toml --out results/seed-screens/quick_constant1e-3 --set 'train.lr-schedule="constant"' train.peak-lr=1e-3 'eval-splits=["proxy_test"]'
	$(PY) -m fedasr.train --config configs/seed/quick.toml --out results/seed-screens/quick_constant2e-3 --set 'train.lr-schedule="constant"' train.peak-lr=2e-3 'eval-splits=["proxy_test"]'
	$(PY) -m fedasr.train --config configs/seed/quick.toml --out results/seed-screens/quick_cooldown0.5 --set train.cooldown-fraction=0.5 'eval-splits=["proxy_test"]'
	$(PY) -m fedasr.train --config configs/seed/quick.toml --out results/seed-screens/quick_constant1e-3_batch10s --set 'train.lr-schedule="constant"' train.peak-lr=1e-3 train.batch-seconds=10.0
	$(PY) -m fedasr.train --config configs/seed/quick.toml --out results/seed-screens/quick_constant1e-3_batch25s --set 'train.lr-schedule="constant"' train.peak-lr=1e-3 train.batch-seconds=25.0

lab: setup  ## JupyterLab on the project's environment: http://127.0.0.1:8888/lab?token=fedasr
	$(VENV)/bin/jupyter lab --no-browser --ip 127.0.0.1 --port 8888 --IdentityProvider.token=fedasr --notebook-dir . $(if $(filter 0,$(shell id -u)),--allow-root)

compare:  ## list what differs between two results trees: make compare A=results B=/tmp/other/results
	$(PY) tools/compare_results.py $(A) $(B)

readme-results:  ## rewrite README's results block from results/*.json
	$(PY) tools/readme_results.py

NOTEBOOKS := $(notdir $(wildcard notebooks/[0-9]*.ipynb))
PM_FLAGS  ?=
SIZE      ?= full
notebooks: setup  ## execute every notebook with papermill → results/notebooks/ (SIZE=teaching: notebooks/teaching.toml)
	@mkdir -p results/notebooks
	@for nb in $(NOTEBOOKS); do \
	  echo "papermill $$nb"; params=""; \
	  if [ "$(SIZE)" = teaching ]; then params="results/notebooks/$${nb%.ipynb}.teaching.json"; \
	    $(PY) -c 'import json, sys, tomllib; print(json.dumps(tomllib.load(open("notebooks/teaching.toml", "rb")).get(sys.argv[1], {})))' \
	      "$${nb%.ipynb}" > "$$params" && params="-f $$params" || exit 1; fi; \
	  $(PY) -m papermill --cwd . notebooks/$$nb results/notebooks/$$nb --log-output $$params $(PM_FLAGS) || exit 1; \
	done

reproduce: setup  ## the main job: corpus, seed, every notebook (quick profile, CPU) → results/reproduce.json
	$(PY) tools/reproduce.py --profile $(PROFILE)

reproduce-teaching: setup  ## every notebook at its teaching size (minutes) into $(TEACH_ROOT)/reproduce.json
	$(MAKE) data PROFILE=tiny
	$(PY) tools/reproduce.py --profile tiny --size teaching --results-root $(TEACH_ROOT) --skip-steps

test: setup  ## the default test suite (CPU, < 15 min on 2 cores)
	$(PY) -m pytest -m "not slow and not gpu" -q

test-all: setup  ## every test, including slow end-to-end ones
	$(PY) -m pytest -m "not gpu" -q

test-gpu: setup  ## the CUDA checks (tests/test_gpu.py) on a machine with a GPU
	$(PY) -m pytest -m gpu -q -rs

clean-data:  ## remove generated audio (manifests of committed profiles stay in git)
	rm -rf data/tiny/audio data/quick/audio data/full/audio
