"""The ASR federated task: clients train on on-device labels only, never on reference transcripts."""

import json

import jiwer
import pytest
import torch

from fedasr import asr_task, data, decoding
from fedasr.features import eval_pipeline
from fedasr.federated.client_update import fedsgd_client_update


def _task(fake_corpus, fake_seed, **kw):
    params = {"corpus": str(fake_corpus), "seed_model": str(fake_seed / "model"), **kw}
    return asr_task.make_asr_task(params)


def test_unknown_param_is_named(fake_corpus, fake_seed):
    from fedasr.config import ConfigError

    with pytest.raises(ConfigError, match="task.params.lables"):
        _task(fake_corpus, fake_seed, lables="truth")


def test_missing_label_store_is_a_clear_error(fake_corpus, fake_seed, tmp_path):
    with pytest.raises(data.DataError, match="label store .* does not exist"):
        _task(fake_corpus, fake_seed, labels=str(tmp_path / "none.jsonl"))


def test_clients_see_labels_not_references(fake_corpus, fake_seed, tmp_path):
    utts = data.load_corpus(fake_corpus)["user_train"]
    store = tmp_path / "labels.jsonl"
    # a label store where every label differs from the reference; one empty label, one missing id
    lines = [{"id": u.id, "label": "zz" + u.text.replace(" ", "")[:3]} for u in utts[1:]]
    lines[0]["label"] = ""
    store.write_text("".join(json.dumps(d) + "\n" for d in lines))
    task = _task(fake_corpus, fake_seed, labels=str(store))
    refs = {u.text for u in utts}
    seen = 0
    for cid in task.client_ids():
        for b in task.client_batches(cid, micro_batch=2, seed=0):
            assert not set(b.texts) & refs, "a client batch carries a reference transcript"
            assert all(t.startswith("zz") for t in b.texts)
            seen += len(b.ids)
    assert seen == len(utts) - 2  # the missing and the empty label are not trained on
    assert sum(task.num_examples(c) for c in task.client_ids()) == len(utts) - 2


def test_hypothesis_labels_and_a_fedsgd_round(fake_corpus, fake_seed):
    cfg = asr_task.ASRTaskConfig(corpus=str(fake_corpus), seed_model=str(fake_seed / "model"))
    path = asr_task.write_hypothesis_labels(cfg)
    labels = asr_task.read_labels(path)
    assert set(labels) == {u.id for u in data.load_corpus(fake_corpus)["user_train"]}
    task = _task(fake_corpus, fake_seed, labels="truth", eval_splits=["user_test"])
    model = task.build_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cid = task.client_ids()[0]
    upd = fedsgd_client_update(model, state, task.client_batches(cid, 2, 0), client_id=cid)
    assert upd.num_examples == task.num_examples(cid)
    assert all(torch.isfinite(g).all() for g in upd.arrays.values())
    for k, v in model.state_dict().items():  # FedSGD: the client's weights do not move
        assert torch.equal(v, state[k]), k
    ev = task.evaluate(model)
    assert task.evaluate(model) == ev  # the second call reuses the cached features: same numbers
    # each user_test utterance featurized and decoded on its own, scored by jiwer: the task's corpus WER/CER
    refs, hyps = [], []
    for u in data.load_corpus(fake_corpus, splits=["user_test"])["user_test"]:
        x = eval_pipeline(task.fcfg)(torch.from_numpy(data.load_audio(u)))
        ids = decoding.greedy_decode(model, x[None], torch.tensor([x.shape[0]]))[0]
        refs.append(u.text)
        hyps.append(task.tokenizer.decode(ids))
    assert ev["wer_user"] == pytest.approx(jiwer.wer(refs, hyps))
    assert ev["cer_user"] == pytest.approx(jiwer.cer(refs, hyps))


def test_evaluate_scores_what_the_model_says(fake_corpus, fake_seed):
    """A CTC head that says "a" on every frame decodes every utterance to "a": the WERs are then known."""
    task = _task(fake_corpus, fake_seed, labels="truth", eval_splits=["user_test", "proxy_test"])
    model = task.build_model()
    (a,) = task.tokenizer.encode("a")
    with torch.no_grad():
        model.ctc_head.weight.zero_()
        model.ctc_head.bias.fill_(-10.0)
        model.ctc_head.bias[a] = 10.0
    ev = task.evaluate(model)
    corpus = data.load_corpus(fake_corpus, splits=["user_test", "proxy_test"])
    for split, name in [("user_test", "user"), ("proxy_test", "proxy")]:
        refs = [u.text for u in corpus[split]]
        assert ev[f"wer_{name}"] == pytest.approx(jiwer.wer(refs, ["a"] * len(refs)))
        assert ev[f"cer_{name}"] == pytest.approx(jiwer.cer(refs, ["a"] * len(refs)))
    terms = [u.text for u in corpus["user_test"] if u.terms]
    assert terms and ev["wer_new_terms"] == pytest.approx(jiwer.wer(terms, ["a"] * len(terms)))


def test_the_task_reads_the_architecture_without_the_weights_and_builds_a_weightless_skeleton(fake_corpus, fake_seed):
    """`train.load_checkpoint(weights=False)` gives what `load_checkpoint` gives but the weights; `build_skeleton` is the
    seed's architecture on ``meta``, which a ClientApp with OMC materialises from its download (`omc.load_payload`)."""
    from fedasr import omc, train
    from fedasr.federated import client_app
    from fedasr.federated.config import FedConfig, FederatedConfig, TaskSpec
    from fedasr.omc import OMCConfig

    model, tok, fcfg, state = train.load_checkpoint(fake_seed / "model")
    mcfg, tok2, fcfg2, state2 = train.load_checkpoint(fake_seed / "model", weights=False)
    assert (mcfg, fcfg2, state2, tok2.vocab_size) == (model.config, fcfg, state, tok.vocab_size)
    task = _task(fake_corpus, fake_seed, labels="truth")
    skeleton = task.build_skeleton()
    assert all(p.is_meta for p in skeleton.parameters())
    assert [n for n, _ in skeleton.named_parameters()] == [n for n, _ in model.named_parameters()]
    # the ClientApp's runtime: a skeleton with OMC (the download brings every variable), the seed's weights without
    fed = FedConfig(omc=OMCConfig(bits=8))
    params = {"corpus": str(fake_corpus), "seed-model": str(fake_seed / "model"), "labels": "truth"}
    cfg = FederatedConfig(fed=fed, task=TaskSpec("asr", params))
    _, with_omc = client_app._runtime(cfg, None, fed)
    _, plain = client_app._runtime(cfg, None, FedConfig())
    assert any(t.is_meta for t in with_omc.parameters()) and not any(t.is_meta for t in plain.parameters())
    payload = omc.encode_state(model.state_dict(), omc.select_quantized(model, fed.omc), fed.omc)
    omc.load_payload(with_omc, payload)  # the round's download materialises the skeleton
    assert not any(t.is_meta for t in with_omc.parameters())
    assert not any(b.is_meta for b in with_omc.buffers())
