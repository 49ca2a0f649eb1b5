"""RNN-T with an auxiliary CTC head, and a warm start from a CTC checkpoint (`fedasr.warm_start`; issue 19)."""

import pytest
import torch
import torch.nn.functional as F

from fedasr import features, train, warm_start
from fedasr.model import build_model, rnnt_loss
from fedasr.tokenizer import CharTokenizer
from tests.test_model import make_batch, micro

torch.set_num_threads(1)


def test_the_auxiliary_ctc_loss_is_added_with_its_weight():
    torch.manual_seed(0)
    model = build_model(micro("rnnt", ctc_aux_weight=0.3)).eval()
    batch = make_batch()
    loss, _ = model.loss(batch, reduction="sum")
    enc, enc_len = model.encode(batch.features, batch.feature_lengths)
    pred, _ = model.predictor(F.pad(batch.targets, (1, 0), value=0))
    rnnt = rnnt_loss(model.joiner(enc, pred), batch.targets, enc_len, batch.target_lengths, blank=0).sum()
    ctc = F.ctc_loss(model.ctc_log_probs(enc).transpose(0, 1), batch.targets, enc_len, batch.target_lengths,
                     blank=0, reduction="sum")
    assert loss.item() == pytest.approx((rnnt + 0.3 * ctc).item(), rel=1e-5)
    assert "ctc_head.weight" not in build_model(micro("rnnt")).state_dict()  # no head without the weight
    with pytest.raises(ValueError, match="ctc_aux_weight"):
        micro("ctc", ctc_aux_weight=0.3)


def test_an_rnnt_starts_from_a_ctc_checkpoint_where_names_and_shapes_agree(tmp_path):
    torch.manual_seed(0)
    ctc = build_model(micro("ctc"))
    train.save_checkpoint(tmp_path / "ctc", ctc, CharTokenizer(), features.FeatureConfig())
    torch.manual_seed(1)
    rnnt = build_model(micro("rnnt", ctc_aux_weight=0.3))
    fresh = {k: v.clone() for k, v in rnnt.state_dict().items()}
    src, src_tok, _, _ = train.load_checkpoint(tmp_path / "ctc")
    out = warm_start.init_from(rnnt, src, src_tok, CharTokenizer())
    theirs, now = ctc.state_dict(), rnnt.state_dict()
    for name in now:
        if name.startswith(("normalizer.", "subsampling.", "conformer.", "ctc_head.")):
            assert torch.equal(now[name], theirs[name]), name
        else:  # predictor and joiner keep their fresh initialisation
            assert torch.equal(now[name], fresh[name]), name
    assert set(out["kept"]) == {n for n in now if n.startswith(("predictor.", "joiner."))}
    assert out["params_copied"] == sum(p.numel() for n, p in rnnt.named_parameters() if n in out["copied"])
    # the same layout over other units: the CTC head is not copied, even with the same shape
    other = type("Other", (CharTokenizer,), {"ALPHABET": "'" + " " + CharTokenizer.ALPHABET[2:]})()
    rnnt2 = build_model(micro("rnnt", ctc_aux_weight=0.3))
    assert "ctc_head.weight" in warm_start.init_from(rnnt2, src, src_tok, other)["kept"]
    with pytest.raises(ValueError, match="no variable"):
        warm_start.init_from(torch.nn.Linear(3, 3), src)
