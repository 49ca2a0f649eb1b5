# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Federated training on Flower: FedSGD vs FedAvg
#
# The paper trains on phones with **FedSGD** (§2.3): each sampled client computes one gradient at the
# global weights (accumulated over micro-batches, so the batch size changes memory, not the maths) and
# the server applies its own optimizer. **FedAvg** runs local epochs on the client and averages the
# weight deltas. Both run here on Flower's Simulation Engine (the same ServerApp/ClientApp also run
# with `flwr run` and on a SuperLink + SuperNodes: see `fedasr/federated/launch.py`).
#
# Clients start from the seed model (notebook 01) and hold only what a phone has: their audio and the
# transcript the seed model showed them (**its hypotheses** — no human labels). The paper's point,
# reproduced in notebook 04, is that FL on such labels does not improve quality by itself.
#
# *All training speech is synthetic.*

# %% tags=["parameters"]
# Parameters (papermill -p NAME VALUE); paths are relative to the repository root
results_root = "results"                       # everything this notebook writes lies below it (<results_root>/<experiment>/)
config_file = "configs/federated/quick.toml"   # task, shared federated settings, variants
overrides = {}                                 # dotted-key overrides, e.g. {"fed.num-rounds": 5}
seed_model = None                              # seed checkpoint folder; None: the config's task.seed-model below results_root
rerun = True                                   # False: keep finished variant runs, only rebuild the table and plots

# %%
from fedasr import notebook
nb = notebook.setup("02_federated_training", globals())

# %%
from pathlib import Path

from IPython.display import Markdown, display

from fedasr import config, experiments, plotting, tables

exp = config.load(experiments.FederatedExperiment, config_file, {**overrides, "results-root": str(nb.results)})
# the seed notebook 01 wrote below this results root, unless seed_model names one
exp = config.apply_overrides(exp, {"task.seed-model": seed_model or str(nb.result_path(exp.task.seed_model))})
profile = Path(exp.task.corpus).name
notebook.require(Path(exp.task.corpus) / "corpus.json", f"data PROFILE={profile}")
notebook.require(exp.task.seed_model, f"seed PROFILE={profile}")
print(config.to_dict(exp))

# %%
runs = experiments.run_federated_experiment(exp, rerun=rerun)
display(Markdown("\n".join(tables.federated_table(nb.results, exp.experiment))))

# %%
plotting.federated_curves({n: run.rounds() for n, run in runs.items()},
                          out=nb.figures / f"federated_{exp.experiment}.png")
