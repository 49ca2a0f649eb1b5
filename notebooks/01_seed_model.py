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
# # 01 · The seed model: central pretraining on the proxy (server) domain
#
# The paper starts federated learning from a centrally pretrained Conformer (paper §2.1, DESIGN E5).
# This notebook builds the model presets (tiny → paper's 130M), trains the **seed model** on the
# proxy domain only, and measures it on the proxy test set, the user domain (unseen users), the user
# domain's **new terms** (client-specific names and places the server never saw) and a small
# real-speech check. The gap between proxy and user/new-terms WER is what federated learning on
# user corrections must close later.
#
# *Whether the speech is synthetic or real is printed from the corpus's `corpus.json` under the config below.*
#
# **Units and loss.** The quick profile uses **character CTC** with the `tiny` preset: calibration
# on this machine showed that 256 word-pieces (CTC or RNN-T) and RNN-T in general do not leave the
# blank plateau within 20 CPU-minutes, while character CTC does within minutes. The `paper`
# preset (RNN-T, 4096 word-pieces, ~130M) is built and counted here and measured at full scale in
# the device-budget notebook.
#
# **Recipe (quick profile).** 20,000 proxy utterances (12.4 h), half of them passed through a
# simulated room, band-limit and noise (multi-condition training, `Profile.train_channel_frac`; the
# proxy test set keeps the domain's 20%), so that the user-domain gap is the new terms and the unseen
# voices rather than a channel the server never heard. Batches of 2 ranks × 15 s of audio
# grouped by duration (shortest first in the first epoch), Adam with warm-up to a constant 1e-3,
# then a linear cooldown over the last 30% of the budget (warmup-stable-decay: `train.lr-schedule`,
# `train.cooldown-fraction`), and no dropout: the model sees its data about twice, so it
# underfits rather than overfits. The budget is 2,900 updates (about 10 minutes on 2 cores), not a
# wall-clock time, so the same config gives the same model on a faster or slower machine.
# `configs/seed/quick.toml` notes what each choice measured.

# %% tags=["parameters"]
# Parameters (papermill -p NAME VALUE); paths are relative to the repository root
results_root = "results"                  # everything this notebook writes lies below it (figures: <results_root>/figures)
config_file = "configs/seed/quick.toml"   # seed-model config (profile, preset, training budget)
overrides = {}                            # dotted-key overrides, e.g. {"train.max-steps": 500}
run_name = "seed"                         # run folder under results_root (summary.json, rounds.jsonl, model/)
rerun = True                              # train unless the run is up to date with config and corpus; False: only redraw

# %%
from fedasr import notebook
nb = notebook.setup("01_seed_model", globals())

# %%
import json

import torch

from IPython.display import Markdown, display

from fedasr import config, data, model, plotting, results, train

cfg = config.load(train.SeedConfig, config_file, overrides)
run_dir = nb.results / run_name
tag = run_name.replace("-", "_")  # figure names: seed_training.png, seed_tiny_training.png, ...
notebook.require(cfg.corpus_path() / "corpus.json", f"data PROFILE={cfg.profile}")
print(config.to_dict(cfg))
display(Markdown(data.speech_note(cfg.corpus_path())))

# %% [markdown]
# ## Model presets and their sizes (parameters counted, by component)

# %%
for name in model.PRESETS:
    with torch.device("meta"):  # count without allocating the 130M weights
        m = model.build_model(name)
    counts = model.count_parameters(m)
    print(f"{name:6s} {m.config.head:5s} total {counts['total']/1e6:7.2f}M  " +
          "  ".join(f"{k} {v/1e6:.2f}M" for k, v in counts.items() if k != "total"))

# %% [markdown]
# ## Train (or reuse) the seed model
# Retrained only when the config or the corpus changed (`rerun = False`: read the finished run).

# %%
if rerun:
    run = train.ensure_seed(cfg, run_dir)
else:
    run = results.RunDir(notebook.require(run_dir / "summary.json", f"seed PROFILE={cfg.profile}").parent)
summary = run.summary()
print(json.dumps({k: summary[k] for k in ("profile", "preset", "params", "train_seconds", "steps", "wer", "cer")}, indent=2))

# %%
plotting.seed_training_curves(run.rounds(), out=nb.figures / f"{tag}_training.png")

# %%
plotting.wer_by_test_set(summary, out=nb.figures / f"{tag}_wer.png")

# %% [markdown]
# ## What the seed model hears: examples per test set

# %%
for split, rep in summary["reports"].items():
    print(f"--- {split}: WER {rep.get('wer', float('nan')):.3f}  term recall {rep.get('term_recall', {})}")
    for ex in rep["examples"][:3]:
        print(f"  ref: {ex['ref']}\n  hyp: {ex['hyp']}")
