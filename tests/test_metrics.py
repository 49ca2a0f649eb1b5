"""Tests for fedasr.metrics against hand-computed counts: corpus-level WER/CER, subsets, term recall."""

import math

import pytest

from fedasr.metrics import cer, error_counts, term_recall, wer, wer_report


def test_corpus_wer_is_not_the_mean_of_utterance_wers():
    refs = ["call my mother at home now", "stop"]  # 6 + 1 reference words
    hyps = ["call my mother at home now", "top"]  # 0 errors + 1 substitution
    # mean of per-utterance WERs would be (0/6 + 1/1) / 2 = 0.5; the corpus WER is 1/7
    assert wer(refs, hyps) == pytest.approx(1 / 7)


def test_error_counts_by_hand():
    refs = ["turn on the lights", "play music"]
    hyps = ["turn the light", "play some music please"]
    # utt 1: "on" deleted, "lights"->"light" substituted; utt 2: "some" and "please" inserted
    c = error_counts(refs, hyps)
    assert (c["substitutions"], c["deletions"], c["insertions"], c["hits"]) == (1, 1, 2, 4)
    assert c["ref_units"] == 6 and c["rate"] == pytest.approx(4 / 6)


def test_cer_counts_characters_including_spaces():
    # "ab c" (4 chars) -> "ab": the space and "c" deleted
    assert cer(["ab c"], ["ab"]) == pytest.approx(2 / 4)
    assert cer(["abc", "de"], ["abd", "de"]) == pytest.approx(1 / 5)


def test_empty_hypotheses_and_references():
    assert wer(["one two three"], [""]) == 1.0  # all deleted
    c = error_counts(["", "a b"], ["x y", "a b"])
    assert c["insertions"] == 2 and c["ref_units"] == 2 and c["rate"] == 1.0
    assert math.isnan(wer([""], [""]))
    with pytest.raises(ValueError, match="no utterances"):
        wer([], [])
    with pytest.raises(ValueError, match="2 references but 1"):
        wer(["a", "b"], ["a"])


def test_wer_report_with_subsets():
    ids = ["u1", "u2", "u3"]
    refs = ["call kathy walker", "what time is it", "navigate to farley brooks"]
    hyps = ["call athe wakar", "what time is it", "navigate to farley brooks"]
    r = wer_report(refs, hyps, ids, subsets={"new_terms": {"u1", "u3", "absent"}, "none": set()})
    assert r["wer"] == pytest.approx(2 / 11)
    assert (r["substitutions"], r["deletions"], r["insertions"], r["ref_words"]) == (2, 0, 0, 11)
    assert r["utterances"] == 3
    nt = r["subsets"]["new_terms"]
    assert nt["utterances"] == 2 and nt["ref_words"] == 7 and nt["wer"] == pytest.approx(2 / 7)
    assert nt["cer"] > 0 and nt["char_errors"] > 0
    assert r["subsets"]["none"]["utterances"] == 0 and math.isnan(r["subsets"]["none"]["wer"])
    with pytest.raises(ValueError, match="ids"):
        wer_report(refs, hyps, subsets={"x": {"u1"}})


def test_term_recall():
    terms = [("kathy walker",), ("farley brooks", "kathy"), ()]
    hyps = ["call kathy wakar", "farley to farley brooks", "anything"]
    # utt 1: kathy found, walker not; utt 2: farley, brooks found, kathy not
    r = term_recall(terms, hyps)
    assert (r["found"], r["total"]) == (3, 5) and r["recall"] == pytest.approx(0.6)
    twice = term_recall([("anna", "anna")], ["call anna"])  # multiset: said twice, found once
    assert (twice["found"], twice["total"]) == (1, 2)
    assert math.isnan(term_recall([()], ["x"])["recall"])
