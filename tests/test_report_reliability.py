"""The report's reliability section (fedasr.report_reliability): every figure from results/reliability/summary.json."""

import json

from fedasr import report, report_reliability


def _summary(tmp_path, **parts):
    rel = tmp_path / "reliability"
    rel.mkdir(parents=True)
    base = {k: None for k in report_reliability.MAKE}
    (rel / "summary.json").write_text(json.dumps({**base, **parts}))
    return rel


def test_section_renders_the_parts_that_ran_and_names_the_target_of_the_rest(tmp_path):
    faults = {"faulty_fraction": 0.3, "wer_clean": 0.5612, "wer_faulty": 0.5777, "completed": True, "seeds": [0, 1, 2],
              "wer_initial": 0.6787, "wer_rel": 0.0294, "wer_rel_ci95": [0.01, 0.05], "within_10pct": True,
              "rounds": 20, "round_timeout_s": 30.0, "labels": "truth", "undetected": 0,
              "per_seed": [{"seed": k, "wer_clean": 0.56, "wer_faulty": 0.58, "wer_rel": 0.0357,
                            "faulty_fraction_realized": 0.29, "clean_clients_failed": 0, "honest_excluded": 1}
                           for k in range(3)]}
    _summary(tmp_path, faults=faults, resume={"killed_at_round": 3, "bitwise_equal": True},
             secagg={"available": True, "bytes_ratio": 2.01, "seeds": [0], "masked_equals_unmasked_bitwise": True,
                     "pairs": [{"plain": "int8_sr", "secagg": "int8_sr_secagg", "bytes_ratio": 2.01,
                                "wer_user": {"int8_sr": 0.562, "int8_sr_secagg": 0.571}}],
                     "claims": {"claimed": "only the sum", "not_claimed": ["a malicious server"]}})
    text = "\n".join(report_reliability.section(tmp_path, tmp_path))
    assert "56.1% fault-free and 57.8% with faults" in text and "(from 67.9% at round 0)" in text
    assert "95% CI over seeds 1.0% to 5.0%" in text and "3 seed(s)" in text and text.count("| 58.0% |") == 3
    assert "after round 3" in text and "bitwise equal to an uninterrupted run: yes" in text
    assert "the same codec without: 2.01" in text and "| int8_sr | 2.010 | 56.2% | 57.1% |" in text
    assert "Not claimed: a malicious server." in text and "1 seed(s)" in text
    for name in ("fuzz", "deployment", "dp", "privacy"):
        assert f"- not run: {name} (`{report_reliability.MAKE[name]}`)" in text
    assert "not run: faults" not in text


def test_report_without_reliability_results_says_how_to_make_them(tmp_path):
    assert "- not run: `make reliability`" in report.render(tmp_path, tmp_path / "report.md")
