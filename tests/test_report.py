"""The report (`fedasr.report`): one row per claim from the committed results, numbers that are the JSON's,
"not run" lines instead of a crash, and statuses that follow the results' targets and `met` flags."""

import json
import re
import shutil
from pathlib import Path

import pytest

from fedasr import report
from fedasr.results import REPO_ROOT

RESULTS = REPO_ROOT / "results"
# the files the claims read (small JSON; the committed results' checkpoints stay where they are)
CLAIM_INPUTS = ("efficiency/memory.json", "efficiency/summary.json", "efficiency-quality/summary.json",
                "quality/wer.json", "quality/summary.json", "federated/summary.json", "seed/summary.json")


def _copy(tmp_path: Path, files=CLAIM_INPUTS) -> Path:
    """The committed results' ``files`` under a fresh results root."""
    root = tmp_path / "results"
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(RESULTS / f, root / f)
    return root


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _status(root: Path, claim: str) -> str:
    return {c.id: c for c in report.assess(root)}[claim].status


def _claim_rows(text: str) -> dict[str, list[str]]:
    """The claims table's cells by claim id."""
    return {m.group(1): [c.strip() for c in line.split("|")[1:-1]]
            for line in text.splitlines() if (m := re.match(r"\| (E\d) \|", line))}


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """The report of the committed results, written into a temporary folder."""
    missing = [f for f in CLAIM_INPUTS if not (RESULTS / f).exists()]
    if missing:
        pytest.skip(f"committed results missing: {missing}")
    path = report.write(RESULTS, tmp_path_factory.mktemp("report") / "report.md")
    return path, path.read_text()


def test_committed_results_give_one_row_per_claim_with_a_status(committed):
    _, text = committed
    rows = _claim_rows(text)
    assert sorted(rows) == ["E1", "E2", "E3", "E4", "E5"]
    for claim, cells in rows.items():
        assert cells[2].startswith(("[P]", "[S]")), f"{claim}: the paper's side is a quoted statement"
        assert cells[4].strip("*") in report.STATUSES
        assert cells[3] != "—", f"{claim}: the committed results measure every claim"


def test_numbers_in_the_report_are_the_json_numbers(committed):
    _, text = committed
    rows = _claim_rows(text)
    eff = json.loads((RESULTS / "efficiency/summary.json").read_text())
    plain = json.loads((RESULTS / "efficiency/memory.json").read_text())[0]
    targets = json.loads((RESULTS / "quality/summary.json").read_text())["targets"]
    p1 = float(re.search(r"peak ([\d.]+)× plain FedAvg", rows["E3"][3]).group(1))
    assert p1 == round(eff["P1_peak_ratio"], 3)
    params = float(re.search(r"([\d.]+)M parameters", rows["E1"][3]).group(1))
    assert params == round(plain["params"] / 1e6, 1)
    user, new_terms = re.search(r"full refinement \(`\w+`\) ([+-][\d.]+)% / ([+-][\d.]+)%", rows["E4"][3]).groups()
    assert float(user) == round(100 * targets["relative_change"]["wer_user"], 1)
    assert float(new_terms) == round(100 * targets["relative_change"]["wer_new_terms"], 1)


def test_figures_are_linked_relative_to_the_report_and_no_commit_hashes(committed):
    path, text = committed
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    made = [*(RESULTS / "figures").glob("*.png"), *[RESULTS / "reliability" / f for f in ("faults_wer.png",
                                                                                          "parts/dp.png")]]
    assert len(links) == len([p for p in made if p.exists()])
    for link in links:
        assert not Path(link).is_absolute() and (path.parent / link).exists(), link
    assert not re.search(r"\b[0-9a-f]{7,40}\b", text), "no commit hashes or fingerprints in the report"


def test_an_empty_results_root_still_writes_a_report_of_what_is_not_run(tmp_path):
    path = report.write(tmp_path / "results", tmp_path / "out" / "report.md")
    text = path.read_text()
    rows = _claim_rows(text)
    assert sorted(rows) == ["E1", "E2", "E3", "E4", "E5"]
    assert all(cells[4] == "**not run**" for cells in rows.values())
    for target in ("efficiency", "quality", "federated", "seed"):
        assert f"not run: `make {target}`" in text


def test_a_flipped_met_flag_changes_the_status(tmp_path):
    root = _copy(tmp_path)
    quality = root / "quality/summary.json"

    def fl_on_hypotheses_gains_nothing(rows):
        seed = next(r for r in rows if r["variant"] == "seed")
        next(r for r in rows if r["variant"] == "no_refinement").update({m: seed[m] for m in seed if m[:3] == "wer"})

    def targets(met):
        def change(s):
            s["targets"]["relative_change"].update(wer_user=-0.25, wer_new_terms=-0.35, wer_proxy=0.01)
            s["targets"]["met"].update(wer_user=met, wer_new_terms=met, wer_proxy=met)
        return change
    _edit(root / "quality/wer.json", fl_on_hypotheses_gains_nothing)
    _edit(quality, targets(True))
    assert (_status(root, "E4"), _status(root, "E5")) == ("reproduced", "reproduced")
    _edit(quality, targets(False))
    assert (_status(root, "E4"), _status(root, "E5")) == ("partly", "partly")

    def all_within(s):
        for x in s["relative"]:
            x["within_3pct"] = True
    _edit(root / "efficiency-quality/summary.json", all_within)
    _edit(root / "efficiency/summary.json", lambda s: s["met"].update(P1=True, P2=True, P3=True))
    before = _status(root, "E3")
    _edit(root / "efficiency/summary.json", lambda s: s["met"].update(P1=False))
    assert (before, _status(root, "E3")) == ("reproduced", "partly")


def test_a_missing_experiment_is_not_run_with_its_make_target(tmp_path):
    root = _copy(tmp_path, [f for f in CLAIM_INPUTS if not f.startswith("efficiency-quality")])
    e3 = {c.id: c for c in report.assess(root)}["E3"]
    assert any(ch.ok is None and "efficiency-quality" in ch.text for ch in e3.checks)
    assert e3.status in ("partly", "not reproduced")  # the device-budget checks still ran
    assert "not run: `" in report.render(root, root / "report.md")


def test_confidence_intervals_are_rendered_and_used_when_the_results_carry_them(tmp_path):
    root = _copy(tmp_path)
    rows = json.loads((root / "quality/wer.json").read_text())
    head = rows[-1]["variant"]
    ev = {"seeds": [0, 1, 2], "tuned_on": ["user_dev"],
          "rows": [{"variant": r["variant"], "n_seeds": 3,
                    **{m: {"mean": r[m], "ci95": [r[m] - 0.01, r[m] + 0.01]} for m in ("wer_user", "wer_proxy")}}
                   for r in rows],
          "comparisons": [{"a": "seed", "b": head, "metric": "wer_user",
                           "delta_rel": {"mean": -0.1, "ci95": [-0.2, 0.05]}}]}
    (root / "quality/evidence.json").write_text(json.dumps(ev))
    text = report.render(root, root / "report.md")
    assert "95% confidence intervals" in text and "no measurable difference" in text
    e5 = {c.id: c for c in report.assess(root)}["E5"]
    user = next(ch for ch in e5.checks if ch.text.startswith("user WER improves"))
    assert "95% CI" in user.text and user.ok is False  # the interval includes zero
