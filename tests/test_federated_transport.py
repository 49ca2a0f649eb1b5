"""Transport compression and partial model training in the real Flower path (fed.transport, fed.partial).

The rounds run the real ServerApp loop and ClientApp handlers through the in-process grid of
`test_federated_flower`; ``tamper`` hooks see every message and reply as it travels, so the tests check
what was *sent* against what the server *recorded*.
"""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fedasr import compression, config
from fedasr.federated import checkpoint, transport
from fedasr.federated import client_update as cu
from fedasr.federated import task as task_lib
from fedasr.federated.client_app import make_client_app
from fedasr.federated.config import FedConfig, FederatedConfig, RunSpec, TaskSpec
from fedasr.federated.server_app import checkpoint_path, run_server
from fedasr.federated.toy import ToyConfig, ToyTask
from fedasr.federated.transport import DOWNLOAD_META, TRANSPORT, UPLOAD_META
from fedasr.partial import PartialConfig
from tests.test_federated_flower import InProcessGrid


def _cfg(tmp_path, run_id="r", **fed):
    """The toy run's config; ``fed`` holds [fed] keys, nested tables as dicts (``omc={"bits": 8}``)."""
    fed = {"num_rounds": 2, "clients_per_round": 3, "eval_every": 0, **fed}
    return FederatedConfig(fed=config.from_dict(FedConfig, fed, prefix="fed"), task=TaskSpec("toy", {"num-clients": 8}),
                           run=RunSpec(experiment="t", run_id=run_id, results_root=str(tmp_path),
                                       overlap_central=False))  # clients run in this process (InProcessGrid)


class Recorder:
    """A grid ``tamper`` that keeps every TRAIN message and its reply (and may alter the reply)."""

    def __init__(self, alter=None):
        self.pairs, self.alter = [], alter

    def __call__(self, msg, reply):
        reply = self.alter(msg, reply) if self.alter else reply
        self.pairs.append((msg, reply))
        return reply


def _run(cfg, task_factory=None, alter=None):
    rec = Recorder(alter)
    grid = InProcessGrid(make_client_app(cfg, task_factory), tamper=rec)
    run = run_server(grid, cfg, task_factory)
    return run, rec


def _rows(run):
    return {r["round"]: r for r in run.rounds()}


def _weights(run):
    return checkpoint.load_checkpoint(checkpoint_path(run.path))["weights"]


def _sent_bytes(record, meta):
    """Exact payload bytes of an encoded ArrayRecord, as `compression.payload_bytes` counts them."""
    return compression.payload_bytes(compression.from_arrays({k: v.numpy() for k, v in record.items()}, meta))


# --- a small model with Conformer-style names, so `fedasr.partial`'s block policies apply ----------------


class BlockModel(nn.Module):
    """``subsampling`` → ``conformer.conformer_layers[i]`` → ``ctc_head``: the unit layout `partial.units` reads."""

    def __init__(self, dim=6, hidden=8, classes=4, layers=3):
        super().__init__()
        self.config = SimpleNamespace(num_layers=layers)
        self.subsampling = nn.Linear(dim, hidden)
        self.conformer = nn.Module()
        self.conformer.conformer_layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.ctc_head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = torch.tanh(self.subsampling(x))
        for layer in self.conformer.conformer_layers:
            h = h + torch.tanh(layer(h))
        return self.ctc_head(h)

    def loss(self, batch, reduction="mean"):
        loss = nn.functional.cross_entropy(self(batch.x), batch.y, reduction=reduction)
        return loss, {"num_utterances": int(batch.y.shape[0])}


class BlockTask(ToyTask):
    def build_model(self):
        torch.manual_seed(self.cfg.seed)
        return BlockModel(self.cfg.dim, 8, self.cfg.classes)


def block_task():
    return BlockTask(ToyConfig(num_clients=8))


# --- transport compression ------------------------------------------------------------------------------


def test_no_codec_keeps_todays_wire_bytes_and_maths(tmp_path):
    run, rec = _run(_cfg(tmp_path))
    model = task_lib.make_task(_cfg(tmp_path).task).build_model()
    full = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    rows = _rows(run)
    assert rows[1]["bytes_down"] == 3 * full and rows[1]["bytes_up"] == 3 * trainable
    for msg, reply in rec.pairs:  # the plain fp32 wire format: no description, variable names as keys
        assert DOWNLOAD_META not in msg.content["config"] and TRANSPORT not in reply.content
        assert set(msg.content["arrays"]) == set(model.state_dict())
        assert set(reply.content["arrays"]) == {n for n, p in model.named_parameters()}
    # explicitly naming the defaults changes nothing, down to the bits
    explicit = _cfg(tmp_path, "explicit", transport={"download": {"name": "none"}, "upload": {"name": "none"}},
                    partial={"policy": "all"})
    run2, _ = _run(explicit)
    a, b = _weights(run), _weights(run2)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("down,up,lossless", [("fp16", "int8_sr", "none"), ("int8", "fp16", "zlib")])
def test_compressed_transport_counts_exact_encoded_bytes(tmp_path, down, up, lossless):
    cfg = _cfg(tmp_path, transport={"download": {"name": down}, "upload": {"name": up, "lossless": lossless}},
               server_optimizer="adam", server_lr=1e-2)
    run, rec = _run(cfg)
    rows = _rows(run)
    assert [rows[r]["status"] for r in (1, 2)] == ["ok", "ok"] and rows[2]["num_succeeded"] == 3
    for rnd in (1, 2):
        pairs = [(m, r) for m, r in rec.pairs if int(m.content["config"]["server-round"]) == rnd]
        down_bytes = sum(_sent_bytes(m.content["arrays"], str(m.content["config"][DOWNLOAD_META])) for m, _ in pairs)
        up_bytes = sum(_sent_bytes(r.content["arrays"], str(r.content[TRANSPORT][UPLOAD_META])) for _, r in pairs)
        assert rows[rnd]["bytes_down"] == down_bytes == sum(transport.payload_bytes(m.content["arrays"]) for m, _ in pairs)
        assert rows[rnd]["bytes_up"] == up_bytes
    model = task_lib.make_task(cfg.task).build_model()
    full = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert rows[1]["bytes_down"] < 3 * full / 1.9  # fp16 or int8 (+ scales): at most about half of fp32
    assert all(torch.isfinite(v).all() for v in _weights(run).values())
    # training still works through the lossy channel: the final model moved and stays sane
    assert not torch.equal(_weights(run)["net.0.weight"], model.state_dict()["net.0.weight"])


def test_stochastic_upload_is_seeded_per_client(tmp_path):
    cfg = _cfg(tmp_path, transport={"upload": {"name": "int8_sr"}})
    _, rec1 = _run(cfg)
    _, rec2 = _run(_cfg(tmp_path, "again", transport={"upload": {"name": "int8_sr"}}))
    for (_, r1), (_, r2) in zip(rec1.pairs, rec2.pairs):
        a, b = r1.content["arrays"], r2.content["arrays"]
        assert all((a[k].numpy() == b[k].numpy()).all() for k in a)


def test_encoded_uploads_are_still_validated(tmp_path):
    def rename(msg, reply):  # the description names a variable the model does not have
        if not reply.has_error():
            conf, arrays = reply.content[TRANSPORT], reply.content["arrays"]
            conf[UPLOAD_META] = str(conf[UPLOAD_META]).replace('"net.0.weight"', '"net.9.weight"')
            for k in [k for k in arrays if k.startswith("net.0.weight/")]:
                arrays[k.replace("net.0.", "net.9.")] = arrays.pop(k)
        return reply

    run, _ = _run(_cfg(tmp_path, num_rounds=1, transport={"upload": {"name": "int8"}}), alter=rename)
    r1 = _rows(run)[1]
    assert r1["num_failed"] == 3  # every reply of round 1 was renamed
    assert all(v.startswith("unknown-variable:net.9.weight") for v in r1["failed"].values())
    assert r1["status"] == "skipped"


@pytest.mark.parametrize("table,key", [({"transport": {"download": {"name": "fp8"}}}, "fed.transport.download.name"),
                                       ({"transport": {"upload": {"lossless": "gzip"}}}, "fed.transport.upload.lossless"),
                                       ({"partial": {"policy": "largest"}}, "fed.partial.policy")])
def test_codec_and_policy_names_are_validated_with_the_accepted_values(table, key):
    with pytest.raises(config.ConfigError, match=rf"{key}: .* accepted values: \[") as e:
        config.from_dict(FedConfig, table, prefix="fed")
    assert "'none'" in str(e.value) or "'all'" in str(e.value)


# --- partial model training -----------------------------------------------------------------------------


def test_partial_top_k_uploads_only_trained_variables_and_freezes_the_rest(tmp_path):
    cfg = _cfg(tmp_path, partial={"policy": "top_k", "top_k": 1}, server_optimizer="adam", server_lr=1e-2)
    run, rec = _run(cfg, block_task)
    model = block_task().build_model()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    trained = {n for n, _ in model.named_parameters() if n.startswith(("conformer.conformer_layers.2.", "ctc_head."))}
    frozen = set(init) - trained
    assert trained and frozen
    for _, reply in rec.pairs:
        assert set(reply.content["arrays"]) == trained
    rows = _rows(run)
    per_client = sum(init[n].numel() * init[n].element_size() for n in trained)
    assert rows[1]["status"] == "ok" and rows[1]["bytes_up"] == 3 * per_client
    final = _weights(run)
    assert all(torch.equal(final[n], init[n]) for n in frozen)
    assert all(not torch.equal(final[n], init[n]) for n in trained if n.endswith("weight"))


def test_partial_random_varies_per_client_and_composes_with_compression(tmp_path):
    cfg = _cfg(tmp_path, clients_per_round=4, partial={"policy": "random", "fraction": 0.3},
               transport={"download": {"name": "fp16"}, "upload": {"name": "int8_sr"}})
    run, rec = _run(cfg, block_task)
    sets = [frozenset(str(k).rsplit("/", 1)[0] for k in r.content["arrays"]) for _, r in rec.pairs]
    all_names = {n for n, _ in block_task().build_model().named_parameters()}
    assert all(s and s < all_names for s in sets) and len(set(sets)) > 1
    rows = _rows(run)
    assert rows[1]["status"] == rows[2]["status"] == "ok"
    for rnd in (1, 2):
        ups = [r for m, r in rec.pairs if int(m.content["config"]["server-round"]) == rnd]
        assert rows[rnd]["bytes_up"] == sum(_sent_bytes(r.content["arrays"], str(r.content[TRANSPORT][UPLOAD_META]))
                                            for r in ups)


def test_partial_rejects_wrong_shapes_and_unknown_keys(tmp_path):
    def corrupt(msg, reply):
        cid = str(msg.content["config"]["client-id"])
        arrays = reply.content["arrays"]
        if cid.endswith(("0", "2", "4", "6")):
            k = next(iter(arrays))
            arrays[k] = type(arrays)({k: torch.zeros(3, 3)})[k]
        else:
            arrays["bogus"] = type(arrays)({"bogus": torch.zeros(1)})["bogus"]
        return reply

    cfg = _cfg(tmp_path, num_rounds=1, partial={"policy": "top_k", "top_k": 1})
    run, _ = _run(cfg, block_task, alter=corrupt)
    r1 = _rows(run)[1]
    assert r1["status"] == "skipped" and r1["num_failed"] == 3
    assert all(v.startswith(("shape-mismatch:", "unknown-variable:bogus")) for v in r1["failed"].values())


def test_client_update_restores_requires_grad():
    task = block_task()
    model = task.build_model()
    model.subsampling.weight.requires_grad_(False)  # the task's own frozen variable stays frozen
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    fed = FedConfig(partial=PartialConfig(policy="random", fraction=1.0))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    update = cu.client_update(task, model, task.client_ids()[0], state, fed, client_seed=1, server_round=1)
    assert "subsampling.weight" not in update.arrays and "subsampling.bias" in update.arrays
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())


# --- streamed gradients (fed.grad-stream, issue 22) -----------------------------------------------------------


def test_streamed_gradients_travel_as_int8_codes_and_train_like_the_fp32_gradient(tmp_path):
    """With ``grad-stream`` the ClientApp sends the accumulators' codes as they are (no fp32 gradient is formed):
    the same wire format and bytes as encoding the fp32 gradient, seeded per client, and the model trains."""
    up = {"name": "int8_sr", "symmetric": True}
    streamed = _cfg(tmp_path, "s", transport={"upload": up}, grad_stream={"enabled": True}, micro_batch=2)
    plain = _cfg(tmp_path, "p", transport={"upload": up}, micro_batch=2)  # server SGD: the step is the mean gradient
    run_s, rec_s = _run(streamed)
    run_p, _ = _run(plain)
    rows_s, rows_p = _rows(run_s), _rows(run_p)
    assert [rows_s[r]["status"] for r in (1, 2)] == ["ok", "ok"]
    assert rows_s[1]["bytes_up"] == rows_p[1]["bytes_up"]  # int8 codes + one fp32 scale per variable either way
    for _, reply in rec_s.pairs:
        assert reply.content[TRANSPORT][UPLOAD_META] and all(k.endswith(("/data", "/scale")) for k in
                                                             reply.content["arrays"])
        assert reply.content["metrics"]["stream-folds"] > 0
    _, rec_again = _run(_cfg(tmp_path, "s2", transport={"upload": up}, grad_stream={"enabled": True}, micro_batch=2))
    for (_, a), (_, b) in zip(rec_s.pairs, rec_again.pairs):  # seeded per (seed, round, client)
        assert all((a.content["arrays"][k].numpy() == b.content["arrays"][k].numpy()).all() for k in a.content["arrays"])
    ws, wp = _weights(run_s), _weights(run_p)
    model = task_lib.make_task(streamed.task).build_model()
    start = model.state_dict()
    ds = torch.cat([(ws[k] - start[k]).flatten() for k in ws])
    dp = torch.cat([(wp[k] - start[k]).flatten() for k in ws])
    assert torch.isfinite(ds).all() and ds.abs().max() > 0  # the same steps up to rounding noise
    assert torch.nn.functional.cosine_similarity(ds, dp, dim=0) > 0.98 and 0.9 < ds.norm() / dp.norm() < 1.1


@pytest.mark.parametrize("fed,message", [
    ({"strategy": "fedavg"}, "strategy must be 'fedsgd'"),
    ({"transport": {"upload": {"name": "fp16"}}}, "integer codec"),
    ({"transport": {"upload": {"name": "int8_sr"}}, "faults": {"nan": 0.1}}, "faults that corrupt"),
])
def test_grad_stream_rejects_what_it_cannot_do(tmp_path, fed, message):
    with pytest.raises(ValueError, match=message):
        config.from_dict(FedConfig, {"grad-stream": {"enabled": True}, **fed}, prefix="fed")
