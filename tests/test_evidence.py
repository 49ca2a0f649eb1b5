"""fedasr.evidence: per-utterance scores, intervals over seeds, paired bootstrap deltas."""

import json
import math

import numpy as np
import pytest

from fedasr import evidence, metrics

REFS = {"u1": "call anna smith now", "u2": "set a timer", "u3": "navigate to oslo", "u4": "play music"}
TERMS = {"u1": ("anna smith",), "u3": ("oslo",)}
HYPS = {"u1": "call ana smith now", "u2": "set a timer please", "u3": "navigate to oslo", "u4": ""}


def test_scores_agree_with_the_corpus_metrics():
    s = evidence.utterance_scores(REFS, TERMS, HYPS)
    ids = sorted(REFS)
    assert s.wer == pytest.approx(metrics.wer([REFS[i] for i in ids], [HYPS[i] for i in ids]))
    tr = metrics.term_recall([TERMS.get(i, ()) for i in ids], [HYPS[i] for i in ids])
    assert s.term_recall == pytest.approx(tr["recall"]) and s.terms_total.sum() == tr["total"] == 3
    sub = s.subset([bool(TERMS.get(i)) for i in s.ids])
    assert sub.ids == ("u1", "u3") and sub.wer == pytest.approx(1 / 7)


def test_a_missing_hypothesis_counts_as_deletions():
    s = evidence.utterance_scores(REFS, {}, {k: v for k, v in REFS.items() if k != "u2"})
    assert s.errors.tolist() == [0, 3, 0, 0] and s.words.sum() == 12


def test_mean_ci_is_the_student_t_interval():
    out = evidence.mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) · sd 1 / sqrt(3)
    assert out["mean"] == 2.0 and out["ci95"] == pytest.approx([2 - half, 2 + half]) and out["n"] == 3
    assert evidence.mean_ci([0.5])["ci95"] == [None, None]


def _fake(errors, words):
    n = len(words)
    z = np.zeros(n, dtype=np.int64)
    return evidence.Scores(tuple(f"u{i}" for i in range(n)), np.asarray(errors), np.asarray(words), z, z)


def test_paired_delta_finds_a_real_halving_and_no_difference_between_equals():
    rng = np.random.default_rng(1)
    words = rng.integers(3, 12, size=300)
    a = [_fake(rng.binomial(words, 0.4), words) for _ in range(3)]
    b = [_fake(rng.binomial(words, 0.2), words) for _ in range(3)]
    d = evidence.paired_delta(a, b)
    assert -0.6 < d["mean"] < -0.4 and d["ci95"][1] < 0 and evidence.verdict(d["ci95"]) == "lower"
    same = evidence.paired_delta(a, a)
    assert same["mean"] == 0.0 and same["ci95"] == [0.0, 0.0]
    assert evidence.verdict(same["ci95"]) == "no measurable difference"
    # two runs of the same error process: the interval covers zero
    c = [_fake(rng.binomial(words, 0.4), words) for _ in range(3)]
    assert evidence.verdict(evidence.paired_delta(a, c)["ci95"]) == "no measurable difference"


def test_paired_delta_rejects_unpaired_inputs():
    words = np.array([3, 4])
    with pytest.raises(ValueError, match="same number of seeds"):
        evidence.paired_delta([_fake([1, 1], words)], [])
    other = evidence.Scores(("x", "y"), np.array([1, 1]), words, np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="same utterances"):
        evidence.paired_delta([_fake([1, 1], words)], [other])
    with pytest.raises(ValueError, match="unknown metric"):
        evidence.paired_delta([_fake([1, 1], words)], [_fake([1, 1], words)], metric="bleu")


def _corpus(root):
    from fedasr import data

    utts = {"user_test": [("t1", "set a timer", ()), ("t2", "play some jazz", ())],
            "user_heldout": [("h1", "call anna smith", ("anna smith",)), ("h2", "lights on", ()),
                             ("h3", "navigate to oslo", ("oslo",))],
            "proxy_test": [("p1", "what is the weather", ()), ("p2", "turn it off", ())]}
    for split, rows in utts.items():
        out = []
        for i, text, terms in rows:
            path = root / "audio" / f"{i}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
            out.append(data.Utterance(id=i, path=str(path), text=text, duration=1.0, speaker="s", voice="v",
                                      client="c1" if split.startswith("user") else None, split=split,
                                      domain="user" if split.startswith("user") else "proxy", terms=terms))
        data.write_manifest(root / "manifests" / f"{split}.jsonl", out, root)
    (root / "corpus.json").write_text("{}")
    return {s: {i: t for i, t, _ in rows} for s, rows in utts.items()}


def _hyps(path, refs, change=None):
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for split, by_id in refs.items():
            for i, text in by_id.items():
                f.write(json.dumps({"split": split, "id": i, "hyp": (change or {}).get(i, text)}) + "\n")
    return path


def test_quality_evidence_rows_and_comparisons(tmp_path):
    from fedasr import quality_evidence

    refs = _corpus(tmp_path / "corpus")
    bad = {"t1": "set timer", "h1": "call ana smith", "h3": "navigate to", "p1": "what is weather"}
    better = {"t1": "set timer", "h3": "navigate to"}
    runs = {"seed": [_hyps(tmp_path / f"s{k}" / "seed.jsonl", refs, bad) for k in range(3)],
            "no_refinement": [_hyps(tmp_path / f"s{k}" / "nr.jsonl", refs, bad) for k in range(3)],
            "filtering": [_hyps(tmp_path / f"s{k}" / "f.jsonl", refs, better) for k in range(3)]}
    ev = quality_evidence.build(runs, tmp_path / "corpus", seeds=[0, 1, 2], tuned_on=["user_dev"], n_boot=200)
    assert [r["variant"] for r in ev["rows"]] == ["seed", "no_refinement", "filtering"]
    seed, _, full = ev["rows"]
    assert seed["wer_user"]["mean"] == pytest.approx(1 / 6) and seed["n_seeds"] == 3
    assert seed["wer_new_terms"]["mean"] == pytest.approx(2 / 6)  # h1, h3: 6 words, 2 errors
    assert seed["term_recall"]["mean"] == pytest.approx(1 / 3) and full["term_recall"]["mean"] == pytest.approx(2 / 3)
    assert full["wer_proxy"]["mean"] == 0.0 and ev["tuned_on"] == ["user_dev"] and ev["headline"] == "filtering"
    pairs = {(c["a"], c["b"], c["metric"]): c for c in ev["comparisons"]}
    assert set(pairs) >= {("seed", "no_refinement", "wer_user"), ("no_refinement", "filtering", "wer_proxy"),
                          ("seed", "filtering", "term_recall")}
    assert pairs[("seed", "filtering", "wer_new_terms")]["delta_rel"]["mean"] == pytest.approx(-0.5)
    assert pairs[("seed", "no_refinement", "wer_user")]["verdict"] == "no measurable difference"
    with pytest.raises(ValueError, match="2 runs for 3 seeds"):
        quality_evidence.build({"seed": runs["seed"][:2]}, tmp_path / "corpus", seeds=[0, 1, 2], tuned_on=[])


def test_quality_evidence_on_the_dev_twins_of_the_test_splits(tmp_path):
    """A dev-only analysis (configs/quality/wca_hetero.toml) scores the same metrics on user_dev, user_heldout_dev and
    proxy_dev, and says so; an experiment that evaluates neither kind gets no table."""
    import json

    from fedasr import data, quality_evidence

    refs = _corpus(tmp_path / "corpus")
    root = tmp_path / "corpus"
    for split, twin in quality_evidence.DEV_TWINS.items():  # the dev twins: the test manifests under dev names
        utts = [u for u in data.load_corpus(root, splits=[split])[split]]
        data.write_manifest(root / "manifests" / f"{twin}.jsonl",
                            [data.Utterance(**{**u.__dict__, "split": twin}) for u in utts], root)
    dev_refs = {quality_evidence.DEV_TWINS[s]: by_id for s, by_id in refs.items()}
    bad, better = {"t1": "set timer", "h3": "navigate to"}, {}
    runs = {"seed": [_hyps(tmp_path / f"s{k}" / "seed.jsonl", dev_refs, bad) for k in range(3)],
            "filtering": [_hyps(tmp_path / f"s{k}" / "f.jsonl", dev_refs, better) for k in range(3)]}
    ev = quality_evidence.build(runs, root, seeds=[0, 1, 2], tuned_on=[], n_boot=200, splits="dev")
    assert ev["splits"] == "dev" and ev["dev_splits"]["wer_user"] == "user_dev" and "test_splits" not in ev
    assert ev["rows"][0]["wer_user"]["mean"] == pytest.approx(1 / 6) and ev["rows"][1]["wer_user"]["mean"] == 0.0
    table, kind = quality_evidence.metric_table(["user_dev", "proxy_dev"])
    assert kind == "dev" and table["wer_proxy"][0] == "proxy_dev"
    assert quality_evidence.metric_table(["user_test", "user_dev"])[1] == "test"
    assert quality_evidence.metric_table(["real"]) is None
    json.dumps(ev)


def test_an_experiment_over_seeds_has_means_and_paired_intervals_against_its_reference(tmp_path):
    """`experiments.seed_summary` (configs/efficiency/quality_cost.toml, seeds 0-2): means over seeds in the variant
    rows' schema, `relative` rows with the paired interval and verdict of the user-WER change, scored on the first
    ``eval-max-utterances`` utterances only (what the server evaluated)."""
    import json

    from fedasr import asr_task, experiments, results

    refs = _corpus(tmp_path / "corpus")
    first = {s: dict(list(by_id.items())[:1]) for s, by_id in refs.items()}  # eval-max-utterances = 1
    ref_final = {"t1": "set a time", "p1": "what is the whether"}  # 1 error in 3 words, 1 in 4
    worse = {"t1": "set time", "p1": "what is weather today", "t2": "utterly wrong words here"}  # 2 in 3, 2 in 4;
    # t2 is never evaluated (the server's first utterance of each split only)
    task = asr_task.ASRTaskConfig(corpus=str(tmp_path / "corpus"), seed_model=str(results.REPO_ROOT / "results/seed/model"),
                                  eval_splits=["user_test", "proxy_test"], eval_max_utterances=1)
    exp = experiments.FederatedExperiment(experiment="cost", results_root=str(tmp_path / "results"), task=task,
                                          variants={"uncompressed": {}, "omc4": {"fed": {"omc": {"bits": 4}}}},
                                          reference="uncompressed", seeds=[0, 1, 2])
    per_seed = {}
    for k in exp.seeds:
        per_seed[k] = {}
        for name, wer in (("uncompressed", 0.2), ("omc4", 0.25 + 0.01 * k)):
            run = results.RunDir(tmp_path / "results" / "cost" / f"seed{k}" / name)
            _hyps(run.hypotheses_path(0), first, worse)
            _hyps(run.hypotheses_path(2), first, worse if name == "omc4" else ref_final)
            run.path.joinpath("summary.json").write_text(json.dumps(
                {"rounds_completed": 2, "final_eval_round": 2, "initial_eval": {"wer_user": 0.25},
                 "final_eval": {"wer_user": wer, "wer_proxy": 0.1}, "bytes_down_total": 100 if name == "omc4" else 400,
                 "bytes_up_total": 400, "clients_failed": 0, "wall_s_total": 1.0}))
            per_seed[k][name] = run
    s = experiments.seed_summary(exp, per_seed)
    rows = {r["variant"]: r for r in s["variants"]}
    assert rows["omc4"]["final"]["wer_user"] == pytest.approx(0.26) and rows["omc4"]["n_seeds"] == 3
    assert len(rows["omc4"]["runs"]) == 3 and s["seeds"] == [0, 1, 2] and s["tuned_on"] == []
    rel = {r["variant"]: r for r in s["relative"]}
    assert rel["omc4"]["transport_ratio"] == pytest.approx(500 / 800) and not rel["omc4"]["within_3pct"]
    assert rel["omc4"]["verdict"] == "higher" and rel["omc4"]["wer_user_rel_ci95"] == pytest.approx([1.0, 1.0])
    ev = json.loads((tmp_path / "results" / "cost" / "evidence.json").read_text())
    assert ev["utterances"]["wer_user"] == 1  # t2 was not evaluated, so it is not scored as deletions
    assert {(c["a"], c["b"]) for c in ev["comparisons"]} == {("uncompressed", "omc4")}
    up = next(c for c in ev["comparisons"] if c["metric"] == "wer_proxy")
    assert up["delta_rel"]["mean"] == pytest.approx(1.0)  # 2 errors in 4 words against 1 in 4
    assert rel["omc4"]["wer_user_rel"] == pytest.approx(0.26 / 0.2 - 1)  # the means of the runs' own summaries
    (tmp_path / "results" / "cost" / "summary.json").write_text(json.dumps(s))
    assert experiments.finished_runs(exp)["omc4"].path == per_seed[0]["omc4"].path  # seed 0's run, to redraw


def test_report_lines_of_one_seed_name_an_undefined_relative_change_instead_of_failing(tmp_path):
    """One seed (the quick reproduction) and a term recall of 0 in the reference row: the relative change is
    undefined (None in evidence.json); the report says so (notebook 05 once failed on it)."""
    from fedasr import tables

    ev = {"seeds": [0], "rows": [{"variant": "seed", "n_seeds": 1,
                                  "term_recall": {"mean": 0.0, "ci95": [None, None], "n": 1, "values": [0.0]}}],
          "comparisons": [{"a": "seed", "b": "filtering", "metric": "term_recall",
                           "delta_rel": {"mean": None, "ci95": [None, None], "n_seeds": 1},
                           "verdict": "not claimed: fewer than 3 seeds"}]}
    (tmp_path / "quality").mkdir()
    (tmp_path / "quality" / "evidence.json").write_text(json.dumps(ev))
    lines = tables.evidence_markdown(tmp_path, ("quality",))
    assert "| seed | 1 | 0.0% [n/a, n/a] |" in lines
    assert lines[-1] == ("- `filtering` vs `seed`, term_recall: undefined (95% CI undefined to undefined, 1 seed(s)): "
                         "not claimed: fewer than 3 seeds.")


def test_the_wca_line_compares_each_wca_row_with_example_weights_and_keeps_the_verdict(tmp_path):
    """`make quality-wca`'s line in README and report: WCA rows against `filtering` only, verdicts as evidence.json
    decided them, an undefined change named."""
    from fedasr import tables

    def comp(a, b, metric, mean, lo, hi, verdict):
        return {"a": a, "b": b, "metric": metric, "delta_rel": {"mean": mean, "ci95": [lo, hi], "n_seeds": 3},
                "verdict": verdict}

    ev = {"seeds": [0, 1, 2], "rows": [],
          "comparisons": [comp("seed", "filtering", "wer_user", -0.1, -0.12, -0.08, "lower"),
                          comp("filtering", "wca_loss", "wer_user", 0.01, -0.02, 0.04, "no measurable difference"),
                          comp("filtering", "wca_frequency", "wer_new_terms", -0.05, -0.09, -0.01, "lower"),
                          comp("filtering", "wca_frequency", "wer_proxy", None, None, None, "not claimed")]}
    folder = tmp_path / "quality-wca-hetero"
    folder.mkdir()
    (folder / "evidence.json").write_text(json.dumps(ev))
    (folder / "config.json").write_text(json.dumps({"config": {"corrections": {"wrong-concentration": 1.4}}}))
    [blank, line] = tables.wca_hetero_line(tmp_path)
    assert blank == "" and "κ 1.4" in line and "seeds 0, 1, 2" in line
    assert "`wca_loss` user WER +1.0% [-2.0%, +4.0%] (no measurable difference)" in line
    assert "`wca_frequency` new-terms WER -5.0% [-9.0%, -1.0%] (lower)" in line
    assert "proxy WER undefined [undefined, undefined] (not claimed)" in line
    assert "`filtering` user WER" not in line  # the seed comparison is not WCA's
    assert tables.wca_hetero_line(tmp_path / "none") == []
