"""The audio side of the TTS corpus: voices, Debian packages, channels and rendering (DESIGN.md §2; data.md).

`fedasr.corpus` plans every utterance (text, voice, pitch, rate, channel, seed); here each planned `Job` becomes
a 16 kHz FLAC, in worker processes that `init_worker` sets up and `render_chunk` runs in.
"""

from __future__ import annotations

import gzip
import math
import os
import random
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from fedasr.data import SAMPLE_RATE, normalize_text

if TYPE_CHECKING:  # annotations only: fedasr.corpus imports this module
    from fedasr.corpus import Job

__all__ = ["CorpusError", "Channel", "check_requirements", "asterisk_prompts", "sample_channel", "apply_channel",
           "init_worker", "render_chunk"]

# ---------------------------------------------------------------- voices and packages
# A voice is engine:name; espeak-ng names are accent+variant. Server and user variants are disjoint.
# ("en" is en-gb: espeak-ng 1.51 silently drops the variant of "en-gb+m2".)
SERVER_ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-us-nyc", "en-gb-x-gbcwmd",
                  "en-gb-x-gbclan")
SERVER_VARIANTS = ("m1", "m3", "m4", "m6", "m8", "f1", "f3", "f5", "klatt", "Andy", "Annie", "Lee", "Michael",
                   "steph", "Gene", "paul", "robert", "anika", "edward", "john", "max", "linda", "benjamin", "shelby")
USER_ACCENTS = ("en-029", "en-gb-scotland", "en-us-nyc", "en-gb-x-gbcwmd", "en-gb-x-gbclan")
USER_VARIANTS = ("m2", "m5", "m7", "f2", "f4", "Alicia")  # case matters: unknown variants fall back silently
# Every other female espeak-ng variant (steph2/3 left out: steph with small formant changes): SERVER_VARIANTS has
# 8 female voices of 24, the users 3 of 6; Profile.train_extra_variants adds these to server training.
MORE_SERVER_VARIANTS = ("Andrea", "belinda", "aunty", "grandma", "whisperf", "zac")
FLITE_VOICES = {"kal16": 96, "awb": 130, "rms": None, "slt": 173}  # voice -> median F0 Hz (None: no F0 control)
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
SERVER_ENGINES = {"espeak": 0.5, "flite": 0.25, "festival": 0.25}  # engine family drawn first, then the voice
MBROLA_VOICES = ("us1", "us2", "us3", "en1", "de1-en", "de2-en", "fr1-en", "fr4-en", "nl2-en", "sw1-en", "sw2-en",
                 "hu1-en", "pl1-en", "af1-en", "gr2-en", "ro1-en")  # nonfree: espeak-ng voice mb-<name>
PICO_VOICES = ("en-US", "en-GB")  # nonfree
NOISES = {"alsa_noise": ("alsa-utils", "Noise.wav")} | {
    n: ("sonic-pi-samples", f"{n}.flac") for n in ("vinyl_hiss", "ambi_sauna", "ambi_glass_hum", "ambi_haunted_hum",
                                                    "ambi_drone", "ambi_lunar_land", "loop_3d_printer", "loop_industrial")}
REQUIRED = {  # Debian package -> program it provides (None: data only)
    "espeak-ng": "espeak-ng", "flite": "flite", "festival": "festival", "festvox-kallpc16k": None,
    "festvox-kdlpc16k": None, "festvox-us-slt-hts": None, "asterisk-core-sounds-en-wav": None,
    "asterisk-core-sounds-en": None, "alsa-utils": None, "sonic-pi-samples": None,
}
RECORDED = tuple(REQUIRED) + ("espeak-ng-data", "libespeak-ng1", "libflite1", "festlex-cmu", "festlex-poslex")
PYTHON_PACKAGES = ("faker", "inflect", "pyroomacoustics", "numpy", "scipy", "soundfile")
MAX_IMAGE_ORDER = 12  # caps pyroomacoustics' image order for speed (~4 ms per RIR): the late tail is cut short


class CorpusError(RuntimeError):
    """The corpus cannot be built; the message says what is missing or which utterance failed."""


def _dpkg_version(pkg: str) -> str | None:
    """Installed version of a Debian package, or None."""
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Status}\t${Version}", pkg], capture_output=True, text=True)
    status, _, version = r.stdout.partition("\t")
    return version if r.returncode == 0 and status.endswith(" installed") else None


def _package_files(pkg: str) -> list[str]:
    return subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True).stdout.split("\n")


def check_requirements(nonfree: bool = False) -> dict:
    """Check every program and Debian package up front; raise `CorpusError` with one apt-get line.

    Returns:
        ``{"packages": {pkg: version}, "noises": {name: path}, "nonfree_voices": [(engine, voice)]}``.
    """
    if shutil.which("dpkg-query") is None:
        raise CorpusError("the corpus generator finds its TTS voices, prompts and noises with dpkg: it needs Debian")
    missing = [pkg for pkg, prog in REQUIRED.items()
               if (prog is not None and shutil.which(prog) is None) or _dpkg_version(pkg) is None]
    if missing:
        raise CorpusError(f"missing Debian package(s) {', '.join(missing)}; install them with:\n"
                          f"  sudo apt-get install -y {' '.join(missing)}")
    nonfree_voices, packages = [], list(RECORDED)
    if nonfree:
        if shutil.which("mbrola"):
            for v in MBROLA_VOICES:
                if _dpkg_version(f"mbrola-{v.split('-')[0]}"):
                    nonfree_voices.append(("mbrola", f"mb-{v}"))
                    packages.append(f"mbrola-{v.split('-')[0]}")
            packages.append("mbrola")
        if shutil.which("pico2wave"):
            nonfree_voices += [("pico", v) for v in PICO_VOICES]
            packages.append("libttspico-utils")
    noises = {}
    for name, (pkg, base) in NOISES.items():
        noises[name] = next(f for f in _package_files(pkg) if f.endswith("/" + base))
    versions = {p: v for p in sorted(set(packages)) if (v := _dpkg_version(p)) is not None}
    return {"packages": versions, "noises": noises, "nonfree_voices": sorted(set(nonfree_voices))}


def asterisk_prompts() -> tuple[list[tuple[str, str, str]], int]:
    """Multi-word Asterisk prompts as sorted ``(key, normalised text, wav path)``, and how many lack a wav."""
    root = "en_US_f_Allison/"
    wavs = {f.split(root, 1)[1][:-4]: f for f in _package_files("asterisk-core-sounds-en-wav")
            if root in f and f.endswith(".wav")}
    if "please-try-call-later" in wavs:  # the transcript's key differs from the file name
        wavs.setdefault("pls-try-call-later", wavs["please-try-call-later"])
    listing = next(f for f in _package_files("asterisk-core-sounds-en") if f.endswith("core-sounds-en.txt.gz"))
    prompts, missing = [], 0
    for line in gzip.open(listing, "rt", encoding="utf-8", errors="replace"):
        key, sep, text = (s.strip() for s in line.partition(":"))
        if line.startswith(";") or not sep or re.fullmatch(r"\[.*\]", text):
            continue  # comments and [tone] entries
        text = re.sub(r"\[.*?\]", " ", text)  # "at [@]" -> "at"
        text = normalize_text(re.sub(r"(\d)\.(\d)", r"\1 point \2", text))  # "28.8" -> "28 point 8"
        if len(text.split()) <= 2:
            continue
        if key in wavs:
            prompts.append((key, text, wavs[key]))
        else:
            missing += 1
    return sorted(prompts), missing


# ---------------------------------------------------------------- channels


@dataclass(frozen=True)
class Channel:
    """A device/room channel: room impulse response, band-limit, additive noise, gain."""

    rt60: float = 0.0  # nominal reverberation time in s (0: no room)
    room: tuple[float, ...] | None = None  # ShoeBox size in m
    source: tuple[float, ...] | None = None
    mic: tuple[float, ...] | None = None
    band: tuple[int, int] | None = None  # Butterworth band-pass in Hz
    noise: str | None = None  # "white" or a name in NOISES
    snr: float | None = None  # dB
    gain: float = 1.0  # peak level is 0.9 * gain


def sample_channel(rng: random.Random) -> Channel:
    """Draw a channel: RT60 in {0, 0.3, 0.6} s, band in {none, 300-3400, 100-7000} Hz, noise at 20/10/5 dB."""
    rt60 = rng.choice((0.0, 0.3, 0.6))
    room = source = mic = None
    if rt60:
        room = (round(rng.uniform(3, 7), 2), round(rng.uniform(3, 6), 2), 2.8)
        source = (round(room[0] * rng.uniform(0.2, 0.4), 2), round(room[1] * rng.uniform(0.2, 0.4), 2), 1.5)
        mic = (round(room[0] * rng.uniform(0.55, 0.8), 2), round(room[1] * rng.uniform(0.55, 0.8), 2),
               round(rng.uniform(0.8, 1.4), 2))
    band = rng.choice((None, (300, 3400), (100, 7000)))
    noise = rng.choice((None, None, "white", "white") + tuple(sorted(NOISES)))
    snr = rng.choice((20, 10, 5)) if noise else None
    return Channel(rt60, room, source, mic, band, noise, snr, round(rng.uniform(0.3, 1.0), 2))


# ---------------------------------------------------------------- rendering (runs in worker processes)

_WORKER: dict = {}  # set by init_worker: out folder, private temp folder, noise file paths


def init_worker(out: str, tmp: str, noises: dict) -> None:
    """Give each worker process its folders and one BLAS/torch thread (2 cores, 2 workers)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    _WORKER.update(out=Path(out), tmp=Path(tmp), noises=noises)


def _run(cmd: list[str], job: Job | str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        what = job if isinstance(job, str) else f"utterance {job.id} (voice {job.voice_id})"
        raise CorpusError(f"TTS failed for {what}: `{' '.join(cmd)}` exited {r.returncode}: {r.stderr.strip()[-500:]}")


def _semitones(pitch: int) -> float:
    return (pitch - 50) / 10  # espeak -p 30..70 <-> -2..+2 semitones for flite / HTS


def _festival_batch(jobs: list[Job], tmp: Path) -> dict[str, Path]:
    """Synthesise all festival jobs of a chunk in one process (start-up dominates otherwise)."""
    lines, wavs, previous = [], {}, None
    for job in sorted(jobs, key=lambda j: j.voice):  # one voice switch per voice
        wavs[job.id] = tmp / f"{job.id}.wav"
        text = job.text.replace('"', "").replace("\\", "")
        if job.voice != previous:
            lines.append(f"(voice_{job.voice})")
            previous = job.voice
        if job.voice.endswith("_hts"):  # HTS ignores Duration_Stretch; hts_engine takes -r speed and -fm half-tones
            lines.append(f'(set! hts_engine_params (append (list (list "-r" {job.rate / 175:.4f}) '
                         f'(list "-fm" {_semitones(job.pitch):.2f})) {job.voice}::hts_engine_params))')
        else:
            lines.append(f"(Parameter.set 'Duration_Stretch {175 / job.rate:.4f})")
        lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{text}")) "{wavs[job.id]}" \'riff)')
    script = tmp / f"{jobs[0].id}.scm"
    script.write_text("\n".join(lines) + "\n")
    _run(["festival", "-b", str(script)], f"festival batch {script.name} ({', '.join(wavs)})")
    script.unlink()
    return wavs


def _tts_command(job: Job, wav: Path) -> list[str]:
    if job.engine in ("espeak", "mbrola"):  # "--": text is never read as an option
        return ["espeak-ng", "-v", job.voice, "-p", str(job.pitch), "-s", str(job.rate), "-w", str(wav), "--", job.text]
    if job.engine == "flite":
        cmd = ["flite", "-voice", job.voice, "--setf", f"duration_stretch={175 / job.rate:.4f}"]
        if job.pitch is not None:
            f0 = FLITE_VOICES[job.voice] * 2 ** (_semitones(job.pitch) / 12)
            cmd += ["--setf", f"int_f0_target_mean={f0:.1f}"]
        return cmd + ["-t", job.text, "-o", str(wav)]
    if job.engine == "pico":
        return ["pico2wave", "-l", job.voice, "-w", str(wav), job.text]
    raise CorpusError(f"utterance {job.id}: unknown engine {job.engine!r}")


def _read_16k(path: Path | str) -> np.ndarray:
    """Read audio as float mono at 16 kHz (polyphase resampling)."""
    from scipy.signal import resample_poly

    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != SAMPLE_RATE:
        g = math.gcd(sr, SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, sr // g)
    return x.astype(np.float32)


@lru_cache(maxsize=None)
def _noise(name: str) -> np.ndarray:
    return _read_16k(_WORKER["noises"][name])


@lru_cache(maxsize=256)
def _rir(rt60: float, room: tuple, source: tuple, mic: tuple) -> np.ndarray:
    import pyroomacoustics as pra

    absorption, order = pra.inverse_sabine(rt60, room)
    shoebox = pra.ShoeBox(list(room), fs=SAMPLE_RATE, materials=pra.Material(absorption),
                          max_order=min(order, MAX_IMAGE_ORDER))
    shoebox.add_source(list(source))
    shoebox.add_microphone(list(mic))
    shoebox.compute_rir()
    return np.asarray(shoebox.rir[0][0], dtype=np.float64)


def apply_channel(x: np.ndarray, ch: Channel, rng: np.random.Generator) -> np.ndarray:
    """Pass clean speech through a room, a band-limit and additive noise (before the gain)."""
    from scipy.signal import butter, fftconvolve, sosfilt

    x = x.astype(np.float64)
    if ch.rt60:
        x = fftconvolve(x, _rir(ch.rt60, ch.room, ch.source, ch.mic))[: len(x) + SAMPLE_RATE // 4]
    if ch.band:
        x = sosfilt(butter(4, ch.band, btype="band", fs=SAMPLE_RATE, output="sos"), x)
    if ch.noise:
        if ch.noise == "white":
            n = rng.standard_normal(len(x))
        else:
            n = _noise(ch.noise).astype(np.float64)
            n = np.tile(n, len(x) // len(n) + 1)
            start = rng.integers(0, len(n) - len(x) + 1)
            n = n[start:start + len(x)]
        scale = math.sqrt(np.mean(x ** 2) / (np.mean(n ** 2) * 10 ** (ch.snr / 10) + 1e-20))
        x = x + scale * n
    return x


def _render(job: Job, wav: Path | None) -> int:
    """Turn one synthesised (or real) wav into the corpus FLAC; return its length in samples."""
    if job.engine == "real":
        x = np.clip(_read_16k(job.source), -1, 1)
    else:
        if wav is None:
            wav = _WORKER["tmp"] / f"{job.id}.wav"
            _run(_tts_command(job, wav), job)
        if not wav.exists() or wav.stat().st_size <= 44:
            raise CorpusError(f"TTS wrote no audio for utterance {job.id} (voice {job.voice_id}, text {job.text!r})")
        x = _read_16k(wav)
        wav.unlink()
        if job.channel is not None:
            x = apply_channel(x, job.channel, np.random.default_rng(job.seed))
        peak = float(np.max(np.abs(x))) if len(x) else 0.0
        if not peak > 1e-4 or not math.isfinite(peak):
            raise CorpusError(f"utterance {job.id} (voice {job.voice_id}) is silent or not finite")
        x = x / peak * 0.9 * (job.channel.gain if job.channel else 1.0)
    sf.write(str(_WORKER["out"] / job.path), x.astype(np.float32), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return len(x)


def render_chunk(jobs: list[Job]) -> list[int]:
    festival = [j for j in jobs if j.engine == "festival"]
    wavs = _festival_batch(festival, _WORKER["tmp"]) if festival else {}
    return [_render(job, wavs.get(job.id)) for job in jobs]
