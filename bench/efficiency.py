"""Device budget of one client round, technique by technique (paper §2.3–2.4): the command line.

The experiment is `fedasr.efficiency` (rows, fresh-process measurement, P1–P3); this script parses flags,
loads an `fedasr.efficiency.EfficiencyConfig` and calls `fedasr.efficiency.run` (or ``resummarize``).

    python bench/efficiency.py --config configs/efficiency/paper.toml        # the 129M table, results/efficiency/
    python bench/efficiency.py --config configs/efficiency/tiny.toml         # a fast check, results/efficiency-tiny/
    python bench/efficiency.py --config configs/efficiency/paper.toml --summarize-only   # P2's WER half again
    python bench/efficiency.py --config configs/efficiency/paper.toml --jobs 1   # every process alone, in turn
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from fedasr import config, efficiency  # noqa: E402


def cli_main(argv: list[str] | None = None) -> None:
    """Parse flags, then run the table (or rebuild its summary)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="TOML file with EfficiencyConfig fields (Default: none)")
    ap.add_argument("--preset", help="model preset (Default: paper)")
    ap.add_argument("--out-dir", help="result folder (Default: results/efficiency)")
    ap.add_argument("--budget-mib", type=float, help="+partial row's memory budget in MiB, i.e. partial.budget-mib "
                                                     "(Default: 768)")
    ap.add_argument("--jobs", type=int, help="fresh processes measured at a time; the P3 pair's timing runs are "
                                              "always alone, 1 = every run alone (Default: 2)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted-key override, e.g. --set figure=/tmp/fig.png --set omc.bits=4 (Default: none)")
    ap.add_argument("--summarize-only", action="store_true",
                    help="measure nothing: rebuild summary.json from the last memory.json and the current "
                         "small-scale quality summary (P2's WER half)")
    args = ap.parse_args(argv)
    flags = {"preset": args.preset, "out-dir": args.out_dir, "partial.budget-mib": args.budget_mib, "jobs": args.jobs}
    overrides = {**{k: v for k, v in flags.items() if v is not None}, **config.parse_overrides(args.set)}
    torch.set_num_threads(1)
    cfg = config.load(efficiency.EfficiencyConfig, args.config, overrides)
    if args.summarize_only:
        efficiency.resummarize(cfg, source=args.config)
    else:
        efficiency.run(cfg, source=args.config)


if __name__ == "__main__":
    cli_main()
