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
# # 05 · Report: the paper's claims E1–E5 beside what we measured
#
# The paper (Xiao et al., *Federated Learning of Large ASR Models in the Real World*, arXiv 2408.10443)
# makes five claims that this project reproduces (`DESIGN.md` §1): a 130M Conformer does not fit a
# device with plain FL (E1); gradient checkpointing, FedSGD, a small batch and transport compression
# make it fit (E2); Online Model Compression and partial model training cut memory and upload further at
# comparable quality (E3); FL on raw user data does not help while client selection, on-device filtering
# and weighted client aggregation do (E4); and FL can improve a centrally pretrained model (E5).
#
# This notebook runs no experiment. It reads the JSON that notebooks 01–04 wrote under `results_root`
# and writes `report_path` (`results/report.md`): for each claim what the paper says (qualitatively:
# its tables could not be read), what we measured, and a status that follows from checks on the JSON —
# **reproduced** when every check passes, **partly** when some do, **not reproduced** when none do,
# **not run** when the results are missing (the report names the make target). Every number in the
# report is generated from a results file (`fedasr/report.py`), so rerunning this notebook after
# `make reproduce` brings the report up to date.
#
# *Whether each result's speech was synthetic or real is in its `summary.json` (`synthetic_speech`); the report's
# footnote says which.*

# %% tags=["parameters"]
# Parameters (papermill -p NAME VALUE); paths are relative to the repository root
results_root = "results"           # read only: every number in the report comes from the JSON under it
report_path = "results/report.md"  # the report; a path under results/ moves below results_root

# %%
from fedasr import notebook
nb = notebook.setup("05_report", globals())

# %% [markdown]
# ## Write the report
# One call renders `results/report.md` from the results files: the claims table, how each status was
# decided, the device-budget and quality tables (with 95% confidence intervals where a results file
# carries them), the figures, what is not reproduced and why, and what has not been run.

# %%
from IPython.display import Image, Markdown, display

from fedasr import report

path = report.write(nb.results, nb.result_path(report_path))
print(f"wrote {path}")

# %% [markdown]
# ## The claims
# The paper says / we measured / status, as in the report.

# %%
claims = report.assess(nb.results)
display(Markdown("\n".join(report.claims_table(claims))))

# %% [markdown]
# ## How each status is decided
# ✓ a check passes, ✗ it fails, – its results have not been made yet.

# %%
display(Markdown("\n".join(report.checks_markdown(claims))))

# %% [markdown]
# ## The figures
# Every figure under `<results_root>/figures`, as the report embeds them.

# %%
for _, caption, png in report.figures(nb.results):
    display(Markdown(f"**{caption}** (`{png.name}`)"), Image(filename=str(png)))

# %% [markdown]
# ## Privacy, security and reliability
# Client faults, a server killed mid-run, fuzzing, the secure deployment, differential privacy, secure
# aggregation and what leaves a device (`results/reliability/summary.json`, `make reliability` and the targets
# it names), as in the report.

# %%
from fedasr import report_reliability

display(Markdown("\n".join(ln for ln in report_reliability.section(nb.results, path.parent) if not ln.startswith("!["))))
for caption, png in report_reliability.figures(nb.results):
    display(Markdown(f"**{caption}** (`{png.name}`)"), Image(filename=str(png)))
