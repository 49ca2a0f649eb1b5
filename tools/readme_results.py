"""Rewrite README.md's results block from the JSON under results/ (so every number there comes from a run).

Run `make readme-results` after `make reproduce`; the block sits between the two markers below. The tables
are `fedasr.tables`.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from fedasr import tables  # noqa: E402

START, END = "<!-- results:start -->", "<!-- results:end -->"


def main() -> None:
    """Replace the README's results block with `fedasr.tables.results_markdown`."""
    readme = (ROOT / "README.md").read_text()
    a, b = readme.index(START), readme.index(END) + len(END)
    (ROOT / "README.md").write_text(readme[:a] + START + "\n" + tables.results_markdown(ROOT / "results") + "\n"
                                    + END + readme[b:])
    print("README.md results block rewritten")


if __name__ == "__main__":
    main()
