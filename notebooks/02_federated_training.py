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
# *Whether the speech is synthetic or real is printed from the corpus's `corpus.json` under the config below.*

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

# %% [markdown]
# ## One small example: what a client sends, and one server step
#
# Both methods on one round of the toy task (`fedasr.federated.toy`: a small MLP classifier on non-IID
# synthetic clients, seconds on a CPU), from the same global weights $w_t$ (paper §2.3):
#
# * **FedSGD** (`fedsgd_client_update`): the client sends its mean gradient $g_i = \frac{1}{n_i}\sum \nabla\ell(w_t)$
#   over its $n_i$ examples, accumulated over micro-batches of 4; its weights never move.
# * **FedAvg** (`fedavg_client_update`): the client runs 3 local epochs of SGD (lr 0.05, one step per
#   micro-batch of 4) and sends $\Delta_i = w_i - w_t$.
#
# If every local step saw the same gradient, $\Delta_i$ would be exactly $-\text{lr}\cdot\text{steps}\cdot g_i$:
# cos(Δ, −g) = 1 and ‖Δ‖ / (lr·steps·‖g‖) = 1 (one local step over all of a client's data gives exactly that,
# `tests/test_examples.py`). The local steps move away from $w_t$, so the gradient they see turns, and shrinks as
# the client's loss falls.

# %%
from IPython.display import Markdown, display

from fedasr import examples

fl = examples.fedsgd_vs_fedavg(clients=("toy0000", "toy0001"), micro_batch=4, local_epochs=3, client_lr=0.05,
                               server_lr=1.0)
display(Markdown("\n".join(examples.markdown_table(fl["clients"]))))
display(Markdown(f"The first client's `{fl['bias_name']}` (the output layer's bias, one value per class):\n\n"
                 + "\n".join(examples.markdown_table(fl["bias"]))))

# %% [markdown]
# The server averages the two clients' updates with $a_i = n_i$ (`aggregation.aggregate`) and takes one step
# with its optimizer (`aggregation.ServerOptimizer`): FedSGD $w_t - \eta\,\bar G$ with $\eta = 1$; FedAvg
# $w_t + \bar\Delta$ (server SGD with lr 1 on $-\bar\Delta$: plain FedAvg). Which round helps more depends on the
# step sizes ($\eta$ against lr·steps); what differs in kind is the client's work: one gradient at fixed weights
# (FedSGD) or several steps plus a copy of $w_t$ to form Δ, and a local optimizer's state (FedAvg; notebook 03
# measures what each costs on the device). Held-out loss and accuracy of the toy task:

# %%
display(Markdown("\n".join(examples.markdown_table(fl["eval"]))))

# %% [markdown]
# ## The experiment: the seed model federated on the clients' hypotheses

# %%
from pathlib import Path

from IPython.display import Markdown, display

from fedasr import config, data, experiments, plotting, tables

exp = config.load(experiments.FederatedExperiment, config_file, {**overrides, "results-root": str(nb.results)})
# the seed notebook 01 wrote below this results root, unless seed_model names one
exp = config.apply_overrides(exp, {"task.seed-model": seed_model or str(nb.result_path(exp.task.seed_model))})
profile = Path(exp.task.corpus).name
notebook.require(Path(exp.task.corpus) / "corpus.json", f"data PROFILE={profile}")
notebook.require(exp.task.seed_model, f"seed PROFILE={profile}")
print(config.to_dict(exp))
display(Markdown(data.speech_note(exp.task.corpus)))

# %%
runs = experiments.run_federated_experiment(exp, rerun=rerun)
display(Markdown("\n".join(tables.federated_table(nb.results, exp.experiment))))

# %%
plotting.federated_curves({n: run.rounds() for n, run in runs.items()},
                          out=nb.figures / f"federated_{exp.experiment}.png")
