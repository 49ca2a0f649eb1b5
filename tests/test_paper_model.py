"""The paper's model through Flower (`fedasr.paper_model`; issue 19): config checks, and the pipeline end to end at
a tiny size (pretraining with word-pieces, FedSGD rounds with the device stack, the summary's contract)."""

import json

import pytest
import torch

from fedasr import config, paper_model, tables

QUICK = "configs/paper_model/quick.toml"


def test_the_quick_profile_is_the_benchmarks_full_stack_and_bad_settings_fail_at_once():
    exp = config.load(paper_model.PaperModelExperiment, QUICK)
    assert exp.seed.preset == "paper" and exp.seed.tokenizer.kind == "sentencepiece"
    assert exp.seed.tokenizer.vocab_size == 1024  # the most word-pieces the synthetic proxy text allows is 1,047
    assert paper_model.stack_names(exp.fed, checkpointing=True) == [
        "fedsgd", "+small_batch", "+checkpointing", "+transport_compression", "+omc", "+grad_stream", "+partial"]
    assert exp.bench_row == "+partial"
    with pytest.raises(config.ConfigError, match="FedSGD"):
        config.load(paper_model.PaperModelExperiment, QUICK,
                    {"fed.strategy": "fedavg", "fed.grad-stream.enabled": False})
    with pytest.raises(config.ConfigError, match="unknown|did you mean"):
        config.load(paper_model.PaperModelExperiment, QUICK, {"fed.rounds": 3})
    if not torch.cuda.is_available():
        with pytest.raises(config.ConfigError, match="no CUDA device"):
            config.load(paper_model.PaperModelExperiment, QUICK, {"device": "cuda"})


def test_a_tiny_rnnt_over_word_pieces_pretrains_federates_and_reports_its_clients_peaks(tiny_corpus, tmp_path):
    overrides = {
        "results-root": str(tmp_path), "concurrency": 1,
        "seed.corpus": str(tiny_corpus), "seed.preset": "tiny", "seed.tokenizer.vocab-size": 64,
        "seed.model.head": "rnnt", "seed.model.checkpoint_blocks": [0, 1], "seed.model.d_model": 32,
        "seed.model.num_heads": 2, "seed.model.ffn_dim": 64, "seed.model.num_layers": 2,
        "seed.model.subsampling_channels": 8,
        "seed.train.max-steps": 3, "seed.train.workers": 1, "seed.train.batch-seconds": 4.0,
        "seed.eval-splits": [],
        "task.corpus": str(tiny_corpus), "task.eval-max-utterances": 4, "task.max-client-utterances": 2,
        "fed.num-rounds": 2, "fed.eval-every": 2, "fed.partial.budget-mib": 64,
    }
    exp = config.load(paper_model.PaperModelExperiment, QUICK, overrides)
    s = paper_model.run_paper_model(exp)
    assert s["preset"] == "tiny" and s["head"] == "rnnt" and s["tokenizer"] == {"kind": "sentencepiece", "size": 64}
    assert s["engine"] == "flower-simulation" and s["rounds"] == 2 and len(s["loss"]) == 2
    assert all(isinstance(x, float) and x > 0 for x in s["loss"])
    peak = s["client_peak_rss_bytes"]
    assert peak["n"] >= 2 and peak["max"] >= peak["median"] > 50 * 2**20  # a Python process with torch loaded
    assert s["stack"][-3:] == ["+omc", "+grad_stream", "+partial"]
    on_disk = json.loads((tmp_path / "paper-model" / "summary.json").read_text())
    assert on_disk["loss"] == s["loss"] and on_disk["params"] == s["params"] > 0
    line = "\n".join(tables.paper_model_line(tmp_path))
    assert f"{s['rounds']} FedSGD rounds" in line and "+grad_stream" in line and "peak RSS" in line


def test_the_clientapp_memory_line_reads_each_setting_from_the_bench_json(tmp_path):
    """bench/clientapp_memory.py's JSON → the README/report line: every setting's round-1 and later peaks."""
    import json

    from fedasr import tables

    (tmp_path / "bench").mkdir()
    row = lambda peak: {"stage": "round", "peak_mib": peak}  # noqa: E731
    bench = {"rounds": 3, "settings": {
        "glibc_default": {"rows": [], "round_1_peak_mib": 1735.3, "later_peak_mib_max": 2171.0},
        "mmap_threshold_128k": {"rows": [row(1.0)], "round_1_peak_mib": 1731.9, "later_peak_mib_max": 1157.7},
        "one_round": {"rows": [], "round_1_peak_mib": 1700.0, "later_peak_mib_max": None}}}
    (tmp_path / "bench" / "clientapp_memory.json").write_text(json.dumps(bench))
    [blank, line] = tables.clientapp_memory_line(tmp_path)
    assert blank == "" and "3 rounds" in line
    assert "`glibc_default` round 1 1735 MiB, later rounds at most 2171 MiB" in line
    assert "`mmap_threshold_128k` round 1 1732 MiB, later rounds at most 1158 MiB" in line
    assert "one_round" not in line  # no later round, nothing to compare
    assert tables.clientapp_memory_line(tmp_path / "none") == []
