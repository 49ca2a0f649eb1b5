"""Write the thin notebooks under notebooks/ from the cell lists below (outputs stripped).

Run `python tools/build_notebooks.py` after editing; the .ipynb files are committed.
Each notebook: a title naming the paper claim, a `parameters` cell, one call into fedasr, plots.
"""

from pathlib import Path

import nbformat as nbf

NOTEBOOKS = {}

NOTEBOOKS["01_seed_model.ipynb"] = [
    ("md", """# 01 · The seed model: central pretraining on the proxy (server) domain

The paper starts federated learning from a centrally pretrained Conformer (paper §2.1, DESIGN E5).
This notebook builds the model presets (tiny → paper's 130M), trains the **seed model** on the
proxy domain only, and measures it on the proxy test set, the user domain (unseen users), the user
domain's **new terms** (client-specific names and places the server never saw) and a small
real-speech check. The gap between proxy and user/new-terms WER is what federated learning on
user corrections must close later.

*All training speech is synthetic (TTS voices); `real` is one real speaker (Asterisk prompts).*

**Units and loss.** The quick profile uses **character CTC** with the `tiny` preset: calibration
on this machine showed that 256 word-pieces (CTC or RNN-T) and RNN-T in general do not leave the
blank plateau within 20 CPU-minutes, while character CTC does within ~2 minutes. The `paper`
preset (RNN-T, 4096 word-pieces, ~130M) is built and counted here and measured at full scale in
the device-budget notebook."""),
    ("params", """# Parameters (papermill -p NAME VALUE)
config_file = "../configs/seed/quick.toml"   # seed-model config (profile, preset, training budget)
overrides = {}                               # dotted-key overrides, e.g. {"train.max-minutes": 2.0}
out = "../results/seed"                      # run folder (summary.json, rounds.jsonl, model/)
figures = "../results/figures"               # where figures are written"""),
    ("code", """import os, json
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch
from fedasr import config, model, plotting, train

torch.set_num_threads(1)
cfg = config.load(train.SeedConfig, config_file, overrides)
cfg.corpus = cfg.corpus or os.path.join("..", "data", cfg.profile)  # notebooks run from notebooks/
print(config.to_dict(cfg))"""),
    ("md", "## Model presets and their sizes (parameters counted, by component)"),
    ("code", """for name in model.PRESETS:
    with torch.device("meta"):  # count without allocating the 130M weights
        m = model.build_model(name)
    counts = model.count_parameters(m)
    print(f"{name:6s} {m.config.head:5s} total {counts['total']/1e6:7.2f}M  " +
          "  ".join(f"{k} {v/1e6:.2f}M" for k, v in counts.items() if k != "total"))"""),
    ("md", "## Train (or reuse) the seed model\nRetrained only when the config or the corpus changed."),
    ("code", """run = train.ensure_seed(cfg, out)
summary = run.summary()
print(json.dumps({k: summary[k] for k in ("profile", "preset", "params", "train_seconds", "steps", "wer", "cer")}, indent=2))"""),
    ("code", """plotting.seed_training_curves(run.rounds(), out=f"{figures}/seed_training.png");"""),
    ("code", """plotting.wer_by_test_set(summary, out=f"{figures}/seed_wer.png");"""),
    ("md", "## What the seed model hears: examples per test set"),
    ("code", """for split, rep in summary["reports"].items():
    print(f"--- {split}: WER {rep.get('wer', float('nan')):.3f}  term recall {rep.get('term_recall', {})}")
    for ex in rep["examples"][:3]:
        print(f"  ref: {ex['ref']}\\n  hyp: {ex['hyp']}")"""),
]


def build(root: Path) -> None:
    for name, cells in NOTEBOOKS.items():
        nb = nbf.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        for i, (kind, src) in enumerate(cells):
            cell = nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src)
            cell.id = f"cell-{i:02d}"  # stable ids: rebuilding gives the same file
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
        nbf.write(nb, root / name)
        print("wrote", root / name)


if __name__ == "__main__":
    build(Path(__file__).resolve().parent.parent / "notebooks")
