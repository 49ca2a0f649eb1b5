"""Importers of real speech layouts (fedasr.importers): LibriSpeech, Common Voice and plain manifests.

The source folders are built in a temporary directory from speech available offline: utterances of the
synthetic tiny corpus (``data/tiny``, 16 kHz FLAC, built by ``make data PROFILE=tiny``) as speakers, and the
Asterisk prompts (one real speaker, 8 kHz WAV, so the importer must resample them). Each import is loaded
with `fedasr.data.load_corpus`; the committed seed model is evaluated on one imported split and one
federated round with the real ASR task runs on it.
"""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from fedasr import data, train
from fedasr.corpus_audio import asterisk_prompts
from fedasr.importers import ImportConfig, SourceError, import_commonvoice, import_librispeech, import_manifest, writer
from fedasr.importers import __main__ as cli
from fedasr.importers.roles import IMPORT_SPLITS, Kept, assign_roles

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "data" / "tiny"
SEED = REPO / "results" / "seed" / "model"
ALLISON = Path("/usr/share/asterisk/sounds/en_US_f_Allison")


def _split(root, split):
    """A split's utterances (read with fedasr.data where it knows the split, else the JSON lines as they are)."""
    path = Path(root) / "manifests" / f"{split}.jsonl"
    if split in data.SPLITS:
        return data.read_manifest(path, root=root)
    return [data.Utterance(**{**d, "path": str(Path(root) / d["path"]), "terms": tuple(d["terms"])})
            for d in map(json.loads, path.read_text().splitlines())]


@pytest.fixture(scope="module")
def speakers(tiny_corpus):
    """Speaker -> [(audio path, text)]: 8 tiny user clients (≤ 6 utterances each), 4 "speakers" of 5 tiny proxy
    utterances, and Allison, the real Asterisk speaker (6 prompts, 8 kHz)."""
    corpus = data.load_corpus(TINY, splits=["proxy_train", "user_train", "user_heldout", "user_test"])
    by_client = {}
    for s in ("user_train", "user_heldout", "user_test"):
        for u in corpus[s]:
            by_client.setdefault(u.client, []).append((u.path, u.text))
    out = {f"user{i}": utts[:6] for i, (_, utts) in enumerate(sorted(by_client.items())[:8])}
    proxy = [(u.path, u.text) for u in corpus["proxy_train"][:20]]
    out |= {f"proxy{i}": proxy[5 * i: 5 * i + 5] for i in range(4)}
    # Allison's original 8 kHz recordings of tiny's real prompts (asterisk_prompts() lists them all, but asks dpkg)
    real = [(ALLISON / f"{u.id.removeprefix('real_')}.wav", u.text) for u in data.read_manifest(TINY / "manifests" /
                                                                                               "real.jsonl")]
    real = [(str(w), t) for w, t in real if w.exists()]
    out["allison"] = real[:6] if len(real) >= 6 else [(wav, text) for _, text, wav in asterisk_prompts()[0][:6]]
    return out


def _ids(speakers: dict) -> dict[str, str]:
    """LibriSpeech-style numeric speaker ids: allison 100, proxy0-3 101-104, user0-7 105-112."""
    return {name: str(100 + i) for i, name in enumerate(sorted(speakers))}


def _librispeech(root: Path, speakers: dict, subsets: dict[str, list[str]]) -> None:
    """Write ``subset/<spk>/<ch>/<spk>-<ch>-<n>.flac`` + ``<spk>-<ch>.trans.txt`` (upper case, as LibriSpeech)."""
    ids = _ids(speakers)
    for subset, names in subsets.items():
        for name in names:
            chapter = root / subset / ids[name] / "7"
            chapter.mkdir(parents=True)
            lines = []
            for n, (path, text) in enumerate(speakers[name]):
                uid = f"{ids[name]}-7-{n:04d}"
                x, sr = sf.read(path, dtype="float32")
                sf.write(chapter / f"{uid}.flac", x, sr)  # Allison's prompts stay 8 kHz: the importer resamples
                lines.append(f"{uid} {text.upper()}")
            (chapter / f"{ids[name]}-7.trans.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def libri(speakers, tmp_path_factory):
    """One LibriSpeech subset folder, imported with the default speaker-level roles."""
    src = tmp_path_factory.mktemp("ls") / "LibriSpeech"
    _librispeech(src, speakers, {"train-clean-100": sorted(speakers)})
    out = src.parent / "corpus"
    record = import_librispeech(src / "train-clean-100", out, ImportConfig(seed=0, unseen_fraction=0.3))
    return src, out, record


def test_librispeech_subset_gives_the_papers_roles(libri, speakers):
    src, out, record = libri
    n = sum(len(v) for v in speakers.values())
    assert record["source"]["kind"] == "librispeech" and record["source"]["utterances_in"] == n
    assert record["source"]["utterances_kept"] == n and record["source"]["skipped"] == {}
    splits = {s: _split(out, s) for s in IMPORT_SPLITS}
    assert sum(map(len, splits.values())) == n
    assert data.load_corpus(out).keys() >= {"proxy_train", "user_train", "user_heldout", "user_test"}
    spk = {s: {u.speaker for u in us} for s, us in splits.items()}
    cli_ = {s: {u.client for u in us} for s, us in splits.items()}
    proxy = spk["proxy_train"] | spk["proxy_dev"] | spk["proxy_test"]
    users = set().union(*(spk[s] for s in IMPORT_SPLITS if s.startswith("user")))
    assert proxy and users and not proxy & users  # the server's speakers are never users
    assert spk["proxy_test"] and not spk["proxy_test"] & spk["proxy_train"]  # speaker-disjoint proxy test
    assert cli_["user_test"] and cli_["user_dev"] and not cli_["user_test"] & cli_["user_dev"]
    assert not (cli_["user_test"] | cli_["user_dev"]) & cli_["user_train"]  # unseen clients never train
    assert cli_["user_heldout"] | cli_["user_heldout_dev"] <= cli_["user_train"]
    assert all(u.client is None and u.domain == "proxy" for s in ("proxy_train", "proxy_dev", "proxy_test")
               for u in splits[s])
    # text: LibriSpeech's upper case in the normal form; new terms are words the server's text lacks
    proxy_words = {w for u in splits["proxy_train"] for w in u.text.split()}
    user_utts = [u for s in IMPORT_SPLITS if s.startswith("user") for u in splits[s]]
    assert all(data.is_normalized(u.text) for us in splits.values() for u in us)
    assert any(u.terms for u in user_utts)
    assert all(set(u.terms) == {w for w in u.text.split() if w not in proxy_words} for u in user_utts)
    clients = {c["id"]: c for c in json.loads((out / "clients.json").read_text())}
    assert set(clients) == {u.client for u in user_utts}
    assert all(c["seen"] == (c["id"] in cli_["user_train"]) for c in clients.values())
    assert all(set(c["new_terms"]) == {t for u in user_utts if u.client == c["id"] for t in u.terms}
               for c in clients.values())
    # audio: 16 kHz FLAC referenced in place, Allison's 8 kHz files converted under the corpus folder
    allison = [u for us in splits.values() for u in us if u.speaker == "librispeech:" + _ids(speakers)["allison"]]
    assert len(allison) == 6 and all(Path(u.path).resolve().is_relative_to(out.resolve()) for u in allison)
    assert record["audio"] == {"in_place": n - 6, "converted_to_flac_16k": 6}
    x = data.load_audio(allison[0])
    assert abs(len(x) / 16000 - allison[0].duration) < 1e-3
    in_place = next(u for u in splits["user_train"] if u not in allison)
    assert Path(in_place.path).resolve().is_relative_to(src.resolve())
    assert record["sha256"]["manifests/user_train.jsonl"] and record["splits"]["user_train"]["utterances"] == len(
        splits["user_train"])


def test_imported_corpus_evaluates_and_federates(libri, tmp_path):
    """The committed seed model decodes an imported split, and one FedSGD round of the real ASR task runs on it."""
    from test_federated_flower import InProcessGrid

    from fedasr.federated import checkpoint
    from fedasr.federated.client_app import make_client_app
    from fedasr.federated.config import FedConfig, FederatedConfig, RunSpec, TaskSpec
    from fedasr.federated.server_app import checkpoint_path, run_server

    _, out, _ = libri
    model, tok, fcfg, _ = train.load_checkpoint(SEED)
    utts = data.load_corpus(out, splits=["user_test"])["user_test"]
    rep = train.evaluate(model, tok, utts, fcfg)
    assert rep["utterances"] == len(utts) > 0 and rep["skipped"] == 0 and np.isfinite(rep["wer"])

    # labels "truth" (the references, an oracle): the round does not depend on the seed's hypotheses
    params = {"corpus": str(out), "seed-model": str(SEED), "labels": "truth", "eval-max-utterances": 3}
    cfg = FederatedConfig(fed=FedConfig(num_rounds=1, clients_per_round=2, micro_batch=4),
                          task=TaskSpec("asr", params),
                          run=RunSpec(experiment="imp", run_id="r", results_root=str(tmp_path), progress=False,
                                      server_threads=1))
    run = run_server(InProcessGrid(make_client_app(cfg)), cfg)
    (r1,) = [r for r in run.rounds() if r["round"] == 1]
    assert r1["status"] == "ok" and r1["num_sampled"] == 2 and not r1.get("failed")
    after = checkpoint.load_checkpoint(checkpoint_path(run.path))["weights"]
    assert any(not torch.equal(after[k].float(), v.float()) for k, v in model.state_dict().items() if k in after)


def test_librispeech_tree_with_named_subsets_via_the_command_line(speakers, tmp_path, capsys):
    src = tmp_path / "LibriSpeech"
    users = [s for s in speakers if s.startswith("user")]
    _librispeech(src, speakers, {"train-clean-100": [f"proxy{i}" for i in range(4)], "train-other-500": users,
                                 "dev-clean": ["allison"]})
    out = tmp_path / "corpus"
    cli.main(["librispeech", str(tmp_path), "--out", str(out), "--workers", "2", "--proxy-subsets", "train-clean-100",
              "--user-subsets", "train-other-500", "--proxy-test-subsets", "dev-clean", "--seed", "3"])
    printed = json.loads(capsys.readouterr().out)
    record = json.loads((out / "corpus.json").read_text())
    assert printed["splits"] == record["splits"] and record["config"]["seed"] == 3
    assert record["source"]["subsets"] == {"dev-clean": "proxy_test", "train-clean-100": "proxy",
                                           "train-other-500": "user"}
    ids = {name: f"librispeech:{i}" for name, i in _ids(speakers).items()}
    assert {u.speaker for u in _split(out, "proxy_test")} == {ids["allison"]}  # the named subset
    proxy = {u.speaker for s in ("proxy_train", "proxy_dev") for u in _split(out, s)}
    assert proxy == {ids[f"proxy{i}"] for i in range(4)}
    assert {u.speaker for s in IMPORT_SPLITS if s.startswith("user") for u in _split(out, s)} == \
        {ids[name] for name in users}


@pytest.mark.parametrize("ext", ["mp3", "wav"])
def test_commonvoice_clips_bad_rows_counted(speakers, tmp_path, ext):
    src = tmp_path / "en"
    (src / "clips").mkdir(parents=True)
    rows = []
    for i, name in enumerate(sorted(speakers)):
        cid = f"{i:02x}" * 64  # 128 hex digits, as Common Voice writes them
        for n, (path, text) in enumerate(speakers[name][:4]):
            x, sr = sf.read(path, dtype="float32")
            clip = f"common_voice_en_{i}{n:03d}.{ext}"
            sf.write(src / "clips" / clip, x, sr)  # wav: tiny's 16 kHz in place, Allison's 8 kHz converted
            rows.append([cid, clip, text.capitalize() + ".", "2", "0", "en"])
    good = len(rows)
    cid = rows[0][0]
    (src / "clips" / f"broken.{ext}").write_bytes(b"\x00garbage" * 64)
    sf.write(src / "clips" / f"silent.{ext}", np.zeros(16000, dtype="float32"), 16000)
    for name in ("empty", "cyrillic"):  # good audio, bad transcripts
        shutil.copy(src / "clips" / rows[0][1], src / "clips" / f"{name}.{ext}")
    rows += [[cid, f"broken.{ext}", "call mom", "2", "0", "en"], [cid, f"silent.{ext}", "call mom", "2", "0", "en"],
             [cid, f"empty.{ext}", " ", "2", "0", "en"], [cid, f"cyrillic.{ext}", "Привет, мир", "2", "0", "en"]]
    with open(src / "validated.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["client_id", "path", "sentence", "up_votes", "down_votes", "locale"])
        w.writerows(rows)
        f.write(f"{cid}\tonly-two-fields\n")
    out = tmp_path / "corpus"
    record = import_commonvoice(src, out, ImportConfig(seed=1))
    skipped = record["source"]["skipped"]
    assert skipped == {"empty transcript": 1, "malformed row": 1, "non-Latin script": 1, "silent audio": 1,
                       "unreadable audio": 1}, skipped
    assert record["source"]["utterances_in"] == good + 5 and record["source"]["utterances_kept"] == good
    assert any("broken" in w for w in record["source"]["skipped_examples"]["unreadable audio"])
    corpus = data.load_corpus(out)
    utts = [u for us in corpus.values() for u in us]
    assert {u.voice for u in utts} == {"real:commonvoice"} and all(len(u.speaker) == len("commonvoice:") + 12
                                                                    for u in utts)
    assert record["audio"]["converted_to_flac_16k"] == (good if ext == "mp3" else 4)  # mp3 / Allison's 8 kHz
    for u in utts[:3]:
        assert data.load_audio(u).ndim == 1


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_manifest_formats(speakers, tmp_path, fmt):
    rows = [{"path": str(Path(p).resolve()), "text": t, "speaker": name}
            for name in sorted(speakers) if name != "allison" for p, t in speakers[name][:3]]
    rows[0]["path"] = "missing.flac"  # relative to the manifest's folder, and absent: skipped, counted
    path = tmp_path / f"list.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, ["path", "text", "speaker"], delimiter="\t" if fmt == "tsv" else ",")
            w.writeheader()
            w.writerows(rows)
    record = import_manifest(path, tmp_path / "corpus", ImportConfig(seed=2))
    assert record["source"]["skipped"] == {"unreadable audio": 1}
    written = sum(len(_split(tmp_path / "corpus", s)) for s in IMPORT_SPLITS)
    assert record["source"]["utterances_kept"] == len(rows) - 1 == written


def test_roles_are_deterministic_and_follow_the_fractions():
    utts = [Kept(f"u{k:03d}_{i:02d}", f"u{k:03d}", f"s{k}", "real:x", "a b", 1.0, "a.flac")
            for k in range(200) for i in range(1 + k % 7)]
    cfg = ImportConfig(seed=5)
    a, seen = assign_roles(utts, cfg)
    assert a == assign_roles(list(reversed(utts)), cfg)[0]  # the source's order does not matter
    assert a != assign_roles(utts, ImportConfig(seed=6))[0]
    n = len(utts)
    proxy = sum(len(a[s]) for s in ("proxy_train", "proxy_dev", "proxy_test"))
    assert abs(proxy / n - 0.5) < 0.03 and abs(len(a["proxy_test"]) / proxy - 0.05) < 0.03
    unseen = {u.unit for s in ("user_test", "user_dev") for u in a[s]}
    assert abs(len(unseen) / len(seen) - 0.2) < 0.02 and len(seen) - len(unseen) == sum(seen.values())
    held = {u.unit for s in ("user_heldout", "user_heldout_dev") for u in a[s]}
    multi = {u.unit for u in a["user_train"] if sum(v.unit == u.unit for v in utts) >= 2}
    assert held == multi  # every seen client with 2+ utterances keeps at least one back, and trains on one


def test_source_problems_fail_naming_the_file(speakers, tmp_path):
    _librispeech(tmp_path / "ls", speakers, {"train-clean-100": ["user0", "user1"]})
    trans = next((tmp_path / "ls").rglob("*.trans.txt"))
    trans.unlink()
    with pytest.raises(SourceError, match=rf"{trans.name}: transcript file missing"):
        import_librispeech(tmp_path / "ls", tmp_path / "o1")
    cv = tmp_path / "cv"
    (cv / "clips").mkdir(parents=True)
    (cv / "validated.tsv").write_text("client_id\tpath\tup_votes\nabc\tx.mp3\t2\n")
    with pytest.raises(SourceError, match=r"validated.tsv: missing column\(s\) \['sentence'\]"):
        import_commonvoice(cv, tmp_path / "o2")
    (tmp_path / "m.csv").write_text("file,words,speaker\na.wav,hello,s\n")
    with pytest.raises(SourceError, match=r"m.csv: missing column\(s\) \['text'\]"):
        import_manifest(tmp_path / "m.csv", tmp_path / "o3")
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


def test_an_interrupted_import_leaves_no_corpus(speakers, tmp_path, monkeypatch):
    _librispeech(tmp_path / "ls", speakers, {"train-clean-100": ["user0", "user1", "user2", "proxy0"]})
    out = tmp_path / "corpus"

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_librispeech(tmp_path / "ls", out)
    assert not out.exists() and not list(tmp_path.glob(".corpus*"))
    monkeypatch.undo()
    first = import_librispeech(tmp_path / "ls", out)
    with pytest.raises(SourceError, match="--overwrite"):
        import_librispeech(tmp_path / "ls", out)
    again = import_librispeech(tmp_path / "ls", out, overwrite=True)
    assert again == first  # byte-stable: same source and seed, same record (hashes included)
    assert not list(tmp_path.glob(".corpus*"))


@pytest.mark.parametrize("raw, expected", [
    ("CHAPTER ONE MISSUS RACHEL LYNDE IS SURPRISED", "chapter one missus rachel lynde is surprised"),
    ("Müller’s café opens at nine.", "muller's cafe opens at nine"),  # digits: fedasr.data's tests
    ("Straße, Œuvre & co-op", "strasse oeuvre and co op"),
    ("Привет, мир", "non-Latin script"),
    ("東京へ行く", "non-Latin script"),
    (" ... !? ", "empty transcript"),
])
def test_transcripts_to_the_normal_form(raw, expected):
    from fedasr.importers.common import Skip, transcript_normal_form

    try:
        got = transcript_normal_form(raw)
    except Skip as s:
        got = s.reason
    assert got == expected
