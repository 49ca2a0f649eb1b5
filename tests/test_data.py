"""Manifest and audio loader: every kind of bad input gives a clear, named error or a counted skip."""

import json

import numpy as np
import pytest
import soundfile as sf

from fedasr import data
from fedasr.data import DataError, SkipReport

SR = data.SAMPLE_RATE


def _line(**kw):
    d = dict(id="u1", path="audio/x/u1.flac", text="call mom", duration=1.0, speaker="s", voice="espeak:en-us",
             client=None, split="proxy_train", domain="proxy", terms=[])
    d.update(kw)
    return json.dumps(d)


def _write_corpus(tmp_path, lines):
    (tmp_path / "manifests").mkdir(parents=True, exist_ok=True)
    (tmp_path / "corpus.json").write_text("{}")
    p = tmp_path / "manifests" / "proxy_train.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_read_manifest_resolves_relative_paths(tmp_path):
    p = _write_corpus(tmp_path, [_line(), _line(id="u2", terms=["kathy walker"], client="c0001",
                                                    split="user_train", domain="user")])
    utts = data.read_manifest(p)
    assert [u.id for u in utts] == ["u1", "u2"]
    assert utts[0].path == str(tmp_path / "audio/x/u1.flac")
    assert utts[1].terms == ("kathy walker",) and utts[1].client == "c0001"


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"id": "u1"}), "missing field"),
        (_line(speed=3), "unknown field"),
        (_line(split="train"), "unknown split"),
        (_line(domain="web"), "unknown domain"),
        (_line(text="   "), "empty transcript"),
        (_line(text="Call Mom!"), "not normalised"),
        (_line(duration=-1), "invalid duration"),
        (_line(duration=float("nan")).replace("NaN", "NaN"), "invalid duration"),
    ],
    ids=["json", "missing", "unknown-field", "split", "domain", "empty-text", "not-normalised", "neg-dur", "nan-dur"],
)
def test_bad_manifest_lines_raise_with_location(tmp_path, line, message):
    p = _write_corpus(tmp_path, [_line(id="ok"), line])
    with pytest.raises(DataError, match=message) as e:
        data.read_manifest(p)
    assert f"{p}:2" in str(e.value)  # names file and line


def test_bad_manifest_lines_skip_and_count(tmp_path):
    p = _write_corpus(tmp_path, [_line(id="a"), _line(id="b", text=""), _line(id="a"), "{oops", _line(id="c")])
    report = SkipReport()
    utts = data.read_manifest(p, on_error="skip", report=report)
    assert [u.id for u in utts] == ["a", "c"]
    assert report.total == 3
    assert report.counts["empty transcript"] == 1 and report.counts["duplicate"] == 1
    assert f"{p}:2" in report.summary()


def _utt(path):
    return data.Utterance(id="x", path=str(path), text="hi", duration=1.0, speaker="s", voice="v", client=None,
                          split="proxy_train", domain="proxy")


def test_load_audio_ok(tmp_path):
    p = tmp_path / "ok.flac"
    x = (0.1 * np.sin(np.arange(SR) / 10)).astype("float32")
    sf.write(p, x, SR)
    y = data.load_audio(_utt(p))
    assert y.dtype == np.float32 and y.shape == (SR,)
    assert np.abs(y - x).max() < 1e-3  # 16-bit FLAC


def _bad_audio(kind, tmp_path):
    p = tmp_path / f"{kind}.flac"
    if kind == "missing":
        return p, "does not exist"
    if kind == "corrupt":
        p.write_bytes(b"fLaC" + b"\x00garbage" * 50)
        return p, "cannot be decoded"
    if kind == "truncated":
        sf.write(p, np.zeros(SR, "float32"), SR)
        p.write_bytes(p.read_bytes()[:30])
        return p, "cannot be decoded|empty audio"
    if kind == "empty":
        sf.write(p, np.zeros(0, "float32"), SR)
        return p, "empty audio|cannot be decoded"
    if kind == "wrong-rate":
        sf.write(p, np.zeros(800, "float32"), 8000)
        return p, "sample rate 8000"
    if kind == "stereo":
        sf.write(p, np.zeros((SR, 2), "float32"), SR)
        return p, "2 channels"
    if kind == "nonfinite":
        p = tmp_path / "nonfinite.wav"
        x = np.zeros(SR, "float32")
        x[5] = np.nan
        sf.write(p, x, SR, subtype="FLOAT")
        return p, "non-finite"
    raise AssertionError(kind)


BAD_KINDS = ["missing", "corrupt", "truncated", "empty", "wrong-rate", "stereo", "nonfinite"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_load_audio_bad_files_name_the_file(tmp_path, kind):
    p, message = _bad_audio(kind, tmp_path)
    with pytest.raises(DataError, match=message) as e:
        data.load_audio(_utt(p))
    assert str(p) in str(e.value) and "'x'" in str(e.value)


def test_iter_audio_skips_bad_files_and_keeps_the_rest(tmp_path):
    good = tmp_path / "good.flac"
    sf.write(good, np.zeros(SR, "float32"), SR)
    utts = [_utt(good)] + [_utt(_bad_audio(k, tmp_path)[0]) for k in BAD_KINDS] + [_utt(good)]
    report = SkipReport()
    out = list(data.iter_audio(utts, report=report))
    assert len(out) == 2 and report.total == len(BAD_KINDS)
    with pytest.raises(DataError):
        list(data.iter_audio(utts, on_error="raise"))


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("Press 1 for sales, # to repeat", "press one for sales pound to repeat"),
        ("It's 12:30 -- isn't it?", "it's twelve thirty isn't it"),
        ("'quoted' words", "quoted words"),
        ("twenty-one", "twenty one"),
        ("*", "star"),
        ("28.8 kbps", "twenty eight point eight kbps"),
    ],
)
def test_normalize_text(raw, normal):
    assert data.normalize_text(raw) == normal
    assert data.is_normalized(normal)


def test_is_normalized_rejects():
    for bad in ["", " a", "a  b", "A", "a1", "a.", "a\tb"]:
        assert not data.is_normalized(bad), bad


def test_write_then_read_manifest_round_trip(tmp_path):
    utts = [data.Utterance(id=f"u{i}", path=str(tmp_path / f"audio/u{i}.flac"), text="set a timer", duration=1.5,
                           speaker="s", voice="v", client="c0001", split="user_train", domain="user",
                           terms=("x",) if i else ()) for i in range(3)]
    (tmp_path / "corpus.json").write_text("{}")
    data.write_manifest(tmp_path / "manifests" / "user_train.jsonl", utts, root=tmp_path)
    raw = (tmp_path / "manifests" / "user_train.jsonl").read_text()
    assert str(tmp_path) not in raw  # paths stored relative to the corpus root
    assert data.load_corpus(tmp_path)["user_train"] == utts


def test_load_corpus_requires_corpus_json(tmp_path):
    with pytest.raises(DataError, match="not a corpus"):
        data.load_corpus(tmp_path)


def test_speech_note_follows_corpus_json(tmp_path):
    """Notebooks print what speech a corpus holds from its corpus.json: never "synthetic" for an imported one."""
    import json

    from fedasr import data, tables

    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "corpus.json").write_text(json.dumps({"profile": "quick"}))
    (tmp_path / "imp").mkdir()
    (tmp_path / "imp" / "corpus.json").write_text(json.dumps({"source": {"kind": "librispeech", "path": "/x"}}))
    assert "is synthetic" in data.speech_note(tmp_path / "gen")
    note = data.speech_note(tmp_path / "imp")
    assert "real speech imported from librispeech" in note and "synthetic" not in note
    for name, flag in (("seed", True), ("quality", False)):
        (tmp_path / "res" / name).mkdir(parents=True)
        (tmp_path / "res" / name / "summary.json").write_text(json.dumps({"synthetic_speech": flag}))
    assert tables.footnote(tmp_path / "res").startswith("Results on real speech: `quality`;")
    (tmp_path / "res" / "quality" / "summary.json").write_text(json.dumps({"synthetic_speech": True}))
    assert tables.footnote(tmp_path / "res").startswith("All training speech is synthetic (TTS);")
