"""List what differs between two results trees (JSON and JSONL files), wall-clock times and measured memory aside.

    python tools/compare_results.py results /tmp/other-results      # exit 1 when something differs

Used to check that two runs of `make reproduce` with the same seed give the same results (issue 17).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fedasr.results import compare_trees  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    diffs = compare_trees(sys.argv[1], sys.argv[2])
    print("\n".join(diffs) if diffs else "no differences (wall-clock times and measured memory aside)")
    sys.exit(1 if diffs else 0)
