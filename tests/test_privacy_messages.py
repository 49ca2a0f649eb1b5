"""What leaves a device: every reply the ASR task's ClientApp sends holds model arrays and aggregates only.

The real ClientApp (`make_client_app`) trains the real ASR task on on-device correction labels, with WCA
weighting (so the WCA statistics travel), through the real ServerApp loop on `InProcessGrid`; each reply is
checked by `fedasr.federated.audit.audit_reply` against everything text-like the devices hold.

Run as a script to audit the tiny corpus with the committed seed model and write
``results/reliability/parts/privacy.json``::

    .venv/bin/python -m tests.test_privacy_messages            # needs data/tiny and results/seed/model
"""

import json
import sys
from pathlib import Path

import pytest

from fedasr import config, data, refinement
from fedasr import corrections as C
from fedasr.federated import audit, client_app
from fedasr.federated.client_app import make_client_app
from fedasr.federated.config import FedConfig, FederatedConfig, RunSpec, TaskSpec
from fedasr.federated.server_app import run_server
from fedasr.federated.task import make_task
from tests.test_federated_flower import InProcessGrid

REPO = Path(__file__).resolve().parents[1]

# the audited federations: WCA weighting, plain and with DP + an encoded upload + a noised histogram
VARIANTS = {
    "wca": {"weighting": "frequency"},
    "wca_dp_int8": {"weighting": "frequency", "transport": {"upload": {"name": "int8_sr"}},
                    "dp": {"enabled": True, "clip": 1.0, "noise-multiplier": 0.3, "histogram-noise": "laplace"}},
}


def correction_store(corpus: Path, out: Path) -> tuple[Path, list[str]]:
    """Simulate user corrections of wrong hypotheses and write the filtered label store; return it and
    every text the devices hold (references, hypotheses, corrections, labels)."""
    utts = data.load_corpus(corpus, splits=["user_train"])["user_train"]
    hyps = {u.id: u.text[:-1] + "x" for u in utts}  # every hypothesis wrong in its last letter
    cfg = C.CorrectionConfig(never_fraction=0.0, engagement_a=50.0, engagement_b=0.5, p_base=1.0, p_wrong=0.4)
    recs = C.simulate_corrections(utts, hyps, cfg)
    refinement.write_label_store(out, recs, "filtered")
    lines = refinement.read_label_store(out)
    texts = [u.text for u in utts] + list(hyps.values()) + [r["correction"] for r in recs if r["correction"]]
    texts += [x["label"] for x in lines if x.get("label")]
    return out, texts


def audit_federation(corpus: Path, seed_model: Path, workdir: Path, rounds: int = 2,
                     variants: dict | None = None) -> dict:
    """Run each variant's federation and audit every TRAIN reply; return ``{"messages_checked", "violations",
    "replies"}`` (``violations``: the reasons found, ``[]`` when every reply held model arrays and aggregates only;
    ``replies``: how many were errors, held a WCA histogram, an encoded upload, the DP clipping bit)."""
    store, texts = correction_store(corpus, workdir / "labels.jsonl")
    checked, violations, kinds = 0, [], {"error": 0, "wca_histogram": 0, "encoded_upload": 0, "dp_clipped_bit": 0}
    for name, fed in (variants or VARIANTS).items():
        cfg = FederatedConfig(
            fed=config.from_dict(FedConfig, {"num_rounds": rounds, "clients_per_round": 3, "eval_every": 0,
                                             "micro_batch": 4, "min_successful_clients": 1, **fed}, prefix="fed"),
            task=TaskSpec("asr", {"corpus": str(corpus), "seed_model": str(seed_model), "labels": str(store),
                                  "eval_splits": ["user_test"], "eval_max_utterances": 2}),
            run=RunSpec(experiment="privacy-audit", run_id=name, results_root=str(workdir), progress=False))
        replies = []
        client_app._RUNTIMES.clear()
        grid = InProcessGrid(make_client_app(cfg), tamper=lambda m, r: replies.append(r) or r)
        run_server(grid, cfg)
        model = make_task(cfg.task).build_model()
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
        for reply in replies:
            checked += 1
            ok = not reply.has_error()
            kinds["error"] += not ok
            kinds["wca_histogram"] += ok and "wca-hist" in reply.content["metrics"]
            kinds["encoded_upload"] += ok and "transport" in reply.content
            kinds["dp_clipped_bit"] += ok and "dp-clipped" in reply.content["metrics"]
            violations += [f"{name}: {why}" for why in audit.audit_reply(
                reply, shapes, texts, cfg.fed.wca_buckets, refinement.DROP_REASONS)]
    client_app._RUNTIMES.clear()
    return {"messages_checked": checked, "violations": violations, "replies": kinds}


def test_every_reply_holds_model_arrays_and_aggregates_only(fake_corpus, fake_seed, tmp_path):
    result = audit_federation(fake_corpus, fake_seed / "model", tmp_path, rounds=2)
    assert result["messages_checked"] == 2 * 2 * 3  # variants x rounds x clients
    assert result["violations"] == []
    kinds = result["replies"]  # the audit saw what matters: WCA statistics, encoded DP uploads
    assert kinds["wca_histogram"] >= 2 * 3 and kinds["encoded_upload"] >= 3 and kinds["dp_clipped_bit"] >= 3


def test_the_audit_catches_text_audio_and_per_utterance_values(fake_corpus, fake_seed, tmp_path):
    """The audit is not vacuous: a reply that carries a transcript, an audio array or a per-utterance list fails."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

    _, texts = correction_store(fake_corpus, tmp_path / "labels.jsonl")
    shapes = {"enc.weight": (4, 3)}
    msg = Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=1, message_type="train")

    def reply(arrays=None, metrics=None, **extra):
        arrays = arrays or {"enc.weight": np.zeros((4, 3), "float32")}
        content = {"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                   "metrics": MetricRecord(metrics or {"num-examples": 3, "loss": 1.0}), **extra}
        return Message(RecordDict(content), reply_to=msg)

    assert audit.audit_reply(reply(), shapes, texts, 8) == []
    audio = {"enc.weight": np.zeros((4, 3), "float32"), "audio": np.zeros(16000, "float32")}
    assert audit.audit_reply(reply(arrays=audio), shapes, texts, 8)
    assert audit.audit_reply(reply(metrics={"num-examples": 3, "per-utt-loss": [1.0, 2.0]}), shapes, texts, 8)
    assert audit.audit_reply(reply(metrics={"num-examples": 3, "wca-hist": [1, 2]}), shapes, texts, 8)
    phrase = next(t for t in texts if len(t.split()) >= 2)
    leak = ConfigRecord({"upload": json.dumps({"enc.weight": {"codec": phrase}})})
    assert any("client text" in w for w in audit.audit_reply(reply(transport=leak), shapes, texts, 8))
    word = next(w for t in texts for w in t.split() if len(w) >= 4)
    declined = Message(Error(code=1, reason=f"ValueError: cannot decode {word!r}"), reply_to=msg)
    assert any("client text" in w for w in audit.audit_reply(declined, shapes, texts, 8))
    assert audit.audit_reply(Message(Error(code=1, reason="ClientDeclined: client 'c0001' declines the round: "
                                                        "all-filtered (2 char-edit)"), reply_to=msg),
                             shapes, texts, 8, ["char-edit"]) == []
    assert audit.audit_reply(reply(extra=ConfigRecord({"a": 1})), shapes, texts, 8)


def main() -> int:
    """Audit the tiny corpus with the seed model and write results/reliability/parts/privacy.json."""
    import tempfile

    corpus, seed = REPO / "data" / "tiny", REPO / "results" / "seed" / "model"
    if not (corpus / "manifests").exists() or not seed.exists():
        print(f"needs {corpus} and {seed} (make data PROFILE=tiny; make seed)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        result = audit_federation(corpus, seed, Path(tmp), rounds=2)
    result.update(corpus="data/tiny", seed_model="results/seed/model", rounds=2, variants=sorted(VARIANTS),
                  checker="fedasr.federated.audit.audit_reply")
    out = REPO / "results" / "reliability" / "parts" / "privacy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if not result["violations"] else 1


if __name__ == "__main__":
    sys.exit(main())


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
