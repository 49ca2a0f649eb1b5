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
# # 03 · Fitting a 130M Conformer into a device: memory and transport, technique by technique
#
# The paper's first half (§2.3–2.4): plain federated training of a 130M-parameter Conformer does not
# fit a phone; the *baseline system* — **FedSGD**, a **small batch**, **gradient checkpointing** and
# **transport compression** — plus **Online Model Compression** (weights stored quantized,
# dequantized on use) and **partial model training** make it fit.
#
# Each row below adds one technique and runs exactly one client round of the `paper` preset
# (129M parameters, RNN-T, 4096 word-pieces) **in a fresh process**; the peak is measured (VmHWM
# minus the process's baseline after imports) and set beside an analytic breakdown. Bytes are the
# exact encoded payloads. Peaks and times are this CPU's, not a phone's: compare ratios.
# Two such 1-thread processes run side by side (`jobs = 2`; the two heaviest rows never together): what each
# measures of itself (its own peak, the bytes, the loss) is as when alone, but its step time is contended, so
# those rows say `step_concurrent` in `memory.json`. The first and the last row (the P3 pair) then run
# `timing-repeats` more times **alone**, one process at a time; P3 uses only these solo runs (`p3_timing` in
# `summary.json`). `jobs = 1` runs every process alone, one after another.
# Targets (issue): P1 full-stack peak ÷ plain FedAvg+Adam ≤ 0.20; P2 (down+up) ÷ (2 × fp32 model) ≤ 0.10;
# P3 full-stack step time ÷ plain ≤ 1.3. The experiment is `fedasr.efficiency` (its command line:
# `bench/efficiency.py`); its `[transport.*]`, `[omc]` and `[partial]` tables are the federated config's
# `fed.transport`, `fed.omc` and `fed.partial`.

# %% tags=["parameters"]
# Parameters (papermill -p NAME VALUE); paths are relative to the repository root
results_root = "results"                        # everything this notebook writes lies below it
config_file = "configs/efficiency/paper.toml"   # preset, utterance set, codecs, OMC bits, budget
overrides = {}                                  # efficiency-config overrides, e.g. {"timing-repeats": 0}
quality_cost_config = "configs/efficiency/quality_cost.toml"   # small-scale WER cost of the methods (P2's WER half)
quality_cost_rerun = False                      # True: run it here; False: redraw `make efficiency-quality`'s runs
seed_model = None                               # seed checkpoint of the quality-cost runs; None: that config's, below results_root
rerun = True                                    # False: only redraw the last measured table and runs

# %%
from fedasr import notebook
nb = notebook.setup("03_device_efficiency", globals())

# %% [markdown]
# ## One small example (a): a weight tensor before and after 4-bit OMC
#
# Online Model Compression (paper §2.4.1) stores each weight matrix as $b$-bit integer codes $q$ on an affine
# grid, $\hat W = \text{offset} + \text{step}\cdot q$ with $\text{step} = (\max W - \min W)/(2^b - 1)$, and
# dequantizes $\hat W$ only while a layer runs. Rounding to the nearest level moves each value by at most half
# a step. The grid is fitted per variable (OMC's per-variable transformation) or per output channel (the
# `paper` config of this notebook: 4 bits per channel). Below, a 4×8 `nn.Linear` weight whose rows halve in
# magnitude (trained matrices have channels of different scale), converted with
# `omc.apply_omc(model, OMCConfig(bits=4, transform=...))`; $\hat W$ is read back from its state dict.

# %%
from IPython.display import Markdown, display

from fedasr import examples

q = examples.omc_weight(bits=4, shape=(4, 8))
for part in ("values", "rows", "summary"):
    display(Markdown("\n".join(examples.markdown_table(q[part]))))

# %% [markdown]
# On one grid for the whole variable, the smallest row spans about one step: it keeps a few levels, and its
# error is as large as its values. Its own grid makes the error several times smaller. Storage: 4-bit codes are
# 1/8 of fp32, plus an fp32 scale and offset per grid (8 bytes): large beside 32 values, negligible beside a
# 512×2048 matrix of the `paper` preset (512 KiB of codes + 4 KiB of per-channel grids, 0.126 of fp32).
#
# ## One small example (b): one micro-batch's memory with and without gradient checkpointing
#
# Backward needs what forward computed, so autograd keeps every Conformer block's activations (the attention
# probabilities grow with the square of the frames) until backward reaches that block. Gradient checkpointing
# (paper §2.3; Chen et al. 2016) keeps only each block's input and recomputes the block once in backward: the
# blocks' saved activations drop to one (B, T′, D) tensor per block, for one block's recompute as a transient.
# One 8-s utterance with 40 tokens (a micro-batch of 1) of the 3M `tiny` preset under FedSGD: analytic
# (`memory.estimate`) and measured (`memory.measure_peak` of `efficiency.client_round`, the client round of the
# table's `+small_batch` and `+checkpointing` rows, in a fresh process each; about 10 s).

# %%
mem = examples.checkpointing_memory(preset="tiny", seconds=8.0, tokens=40)
display(Markdown("\n".join(examples.markdown_table(mem))))

# %% [markdown]
# The measured peak is the round's high-water mark of resident memory: it also holds the library code first
# touched during the round (last column), allocator slack and anything the analytic model leaves out, so
# compare the drop from one row to the next. The experiment below takes the same step (`+checkpointing`) among
# the other techniques at 129M parameters, where the blocks' saved activations of one utterance are hundreds of MiB.
#
# ## The experiment: one client round per technique
#
# The "step s" column is each row's step time: the minimum over solo runs for the first and the last row (the
# P3 pair), and with `jobs = 2` a single run beside another process for the rows between (contended: compare
# those only roughly; `memory.json` has every run with its `step_seconds_runs_concurrent` flag).

# %%
import json
from pathlib import Path

from IPython.display import Markdown, display

from fedasr import config, efficiency, experiments, plotting, results, tables

qexp = config.load(experiments.FederatedExperiment, quality_cost_config, {"results-root": str(nb.results)})
# the seed notebook 01 wrote below this results root, unless seed_model names one
qexp = config.apply_overrides(qexp, {"task.seed-model": seed_model or str(nb.result_path(qexp.task.seed_model))})
cfg = config.load(efficiency.EfficiencyConfig, config_file, overrides)
# every result below results_root; P2 pairs the table with this notebook's quality-cost runs
cfg = config.apply_overrides(cfg, {
    "out-dir": str(nb.result_path(cfg.out_dir)), "figure": str(nb.result_path(cfg.figure)),
    "quality-config": quality_cost_config, "quality-summary": str(nb.results / qexp.experiment / "summary.json")})
out_dir = Path(cfg.out_dir)
if rerun:  # one fresh process per row, two at a time, then the P3 pair's solo timing runs; minutes at 129M
    efficiency.run(cfg, source=config_file)
rows = results.read_json(notebook.require(out_dir / "memory.json", "efficiency"))

# %%
display(Markdown("\n".join(tables.efficiency_table(out_dir.parent, out_dir.name))))

# %%
plotting.efficiency_memory(rows, out=cfg.figure)

# %% [markdown]
# ## Quality cost at small scale
#
# The same techniques in real federated training (Flower, FedSGD + server Adam) of the quick seed
# model: transport compression (fp16 down, unbiased int8 up), partial training (top-3 blocks; a
# random half per client and round, PVT-style) and **Online Model Compression inside the client
# update** (`fed.omc.bits`: the download travels in the clients' OMC storage format, 8 or 4 bits per
# weight-matrix value, and the gradient is taken at the dequantized weights) against the uncompressed
# run. The last two rows are candidate stacks for P2. Every row uses the same labels — the reference
# transcripts, an oracle used only to compare the methods with each other.
#
# These runs are evidence with their own target: `make efficiency-quality` runs every variant with 3 seeds (a seed
# changes the clients sampled, the stochastic rounding and the random partial-training draws) and writes means,
# paired 95% intervals against the uncompressed run and a verdict. At its quick size that takes about an hour on
# 2 cores, more than the quick reproduction can hold, so this notebook redraws those runs unless
# `quality_cost_rerun = True` (the teaching size runs its tiny version here).

# %%
profile = Path(qexp.task.corpus).name
notebook.require(Path(qexp.task.corpus) / "corpus.json", f"data PROFILE={profile}")
notebook.require(qexp.task.seed_model, f"seed PROFILE={profile}")
if quality_cost_rerun:  # the quick config: 10 variants x 3 seeds, about an hour on 2 cores
    experiments.run_federated_experiment(qexp)
notebook.require(nb.results / qexp.experiment / "summary.json", "efficiency-quality")
qruns = experiments.finished_runs(qexp)  # variant → run (seed 0's where several seeds ran)
# "bytes vs fp32" is the (down+up) ratio of this small model; P2's bytes are counted at 129M above
display(Markdown("\n".join(tables.quality_cost_table(nb.results, qexp.experiment))))
plotting.federated_curves({n: run.rounds() for n, run in qruns.items()},
                          out=nb.figures / f"{qexp.experiment.replace('-', '_')}_cost.png", title="Quality cost")

# %% [markdown]
# P2 needs both halves: the 129M stack's bytes (≤ 0.10 of 2 × fp32) and, for the same codecs and
# OMC, a small-scale WER within 3% of the uncompressed run (`efficiency.check_quality_variant` fails when
# the config's `quality-variant` federates with another OMC or upload codec). The table's summary is rebuilt
# from the measured rows above and the quality runs just made (nothing is re-measured).

# %%
summary = efficiency.resummarize(cfg, source=config_file)
display(Markdown("\n".join(tables.efficiency_table(out_dir.parent, out_dir.name))))
print("P2:", json.dumps(summary["P2"], indent=1))
