"""Text of the TTS corpus: proxy (server) sentences, client names and places, and user commands.

The proxy domain is everyday voice-assistant and dictation text filled from small hand-written
lists (``data/text/``), so its vocabulary stays moderate and learnable (calibration.md). The user
domain is voice commands of ten intents spoken with each client's own contacts and places, drawn
from Faker and kept only when none of their words can occur in server text: these are the
client-specific "new terms" a server-trained seed model has never heard (DESIGN.md §2).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping

from fedasr.data import is_normalized, normalize_text

__all__ = [
    "TEXT_DIR",
    "USER_INTENTS",
    "ENTITY_SLOTS",
    "LOCALES",
    "TextBank",
    "ClientText",
    "load_text_bank",
    "fill",
    "proxy_sentence",
    "make_client_text",
    "user_command",
    "vocabulary",
    "oov_rate",
]

TEXT_DIR = Path(__file__).resolve().parent.parent / "data" / "text"
USER_INTENTS = ("call", "message", "alarm", "navigate", "weather", "remind", "timer", "music", "lights", "distance")
ENTITY_SLOTS = ("contact", "first", "place", "city")  # slots a client fills with its own names/places
LOCALES = ("en_US", "en_GB", "en_IN", "en_AU", "en_IE", "en_NZ", "en_CA", "en_PH")
ASSISTANT_FRAC = 0.6  # share of proxy sentences that are assistant commands (the rest is dictation)

_SLOT = re.compile(r"\{([a-z_]+)\}")
_ALTERNATIVES = re.compile(r"\(([^()]*)\)")
_FAKER_NAME = re.compile(r"[A-Za-z][A-Za-z' -]*")  # ASCII names only: accents would not survive normalisation


class TextError(ValueError):
    """A text resource is malformed; the message names the file and entry."""


def _read_sections(path: Path) -> dict[str, list[str]]:
    """Read ``[section]`` lists whose entries are separated by commas or line ends."""
    sections: dict[str, list[str]] = {}
    current = None
    for i, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        elif current is None:
            raise TextError(f"{path}:{i}: entry before the first [section]")
        else:
            current.extend(e.strip() for e in line.split(",") if e.strip())
    return sections


def _number_words(n: int) -> str:
    return normalize_text(str(n))


def _builtin_slots(months: Iterable[str]) -> dict[str, list[str]]:
    """Spelled-out numbers, clock times and dates (inflect via `normalize_text`)."""
    import inflect

    eng = inflect.engine()
    hours = [_number_words(h) for h in range(1, 13)]
    times = ["noon", "midnight"]
    for h, nxt in zip(hours, hours[1:] + hours[:1]):
        times += [h, f"{h} o'clock", f"{h} oh five", f"{h} fifteen", f"{h} twenty", f"{h} thirty",
                  f"{h} forty five", f"half past {h}", f"quarter past {h}", f"quarter to {nxt}"]
    ordinals = [normalize_text(eng.number_to_words(eng.ordinal(d))) for d in range(1, 32)]
    return {
        "time": times,
        "minutes": [_number_words(m) for m in range(2, 60)],
        "number": [_number_words(n) for n in range(2, 13)],
        "temp": [_number_words(t) for t in range(12, 33)],
        "percent": [_number_words(p) for p in (10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90)],
        "date": [f"{o} of {m}" for m in months for o in ordinals],
    }


@dataclass(frozen=True)
class TextBank:
    """Templates and server slot fillers.

    Attributes:
        slots: filler lists by slot name (server names and places included).
        assistant: ``(intent, template)`` pairs; intent ``"-"`` is server only.
        dictation: dictation templates (server only).
    """

    slots: Mapping[str, tuple[str, ...]]
    assistant: tuple[tuple[str, str], ...]
    dictation: tuple[str, ...]

    @cached_property
    def by_intent(self) -> dict[str, tuple[str, ...]]:
        """Assistant templates of each user intent."""
        return {i: tuple(t for it, t in self.assistant if it == i) for i in USER_INTENTS}

    @cached_property
    def lexicon(self) -> frozenset[str]:
        """Every word that server text can contain (a superset of any proxy split's vocabulary)."""
        words = set()
        for t in tuple(t for _, t in self.assistant) + self.dictation:
            words.update(re.sub(r"[()|]", " ", _SLOT.sub(" ", t)).split())
        for values in self.slots.values():
            for v in values:
                words.update(v.split())
        return frozenset(words)


def load_text_bank(text_dir: str | Path = TEXT_DIR) -> TextBank:
    """Load ``templates.txt``, ``slots.txt`` and ``server_names.txt`` and check them."""
    text_dir = Path(text_dir)
    names = _read_sections(text_dir / "server_names.txt")
    slots = _read_sections(text_dir / "slots.txt")
    templates = _read_sections_lines(text_dir / "templates.txt")
    slots.update(names)
    slots.update(_builtin_slots(slots["month"]))
    slots["contact"] = [f"{f} {last}" for f in names["first"] for last in names["last"]]
    slots["place"] = names["city"] + names["street"] + names["landmark"]
    for name, values in slots.items():
        for v in values:
            if not is_normalized(v):
                raise TextError(f"{text_dir}: slot {name!r} entry {v!r} is not normalised text")
    assistant = []
    for line in templates["assistant"]:
        intent, sep, template = (s.strip() for s in line.partition("|"))
        if not sep or (intent != "-" and intent not in USER_INTENTS):
            raise TextError(f"{text_dir / 'templates.txt'}: bad assistant line {line!r} (want 'intent | template')")
        assistant.append((intent, template))
    for t in [t for _, t in assistant] + templates["dictation"]:
        unknown = set(_SLOT.findall(t)) - set(slots)
        if unknown:
            raise TextError(f"{text_dir / 'templates.txt'}: template {t!r} uses unknown slot(s) {sorted(unknown)}")
    bank = TextBank(MappingProxyType({k: tuple(v) for k, v in slots.items()}), tuple(assistant), tuple(templates["dictation"]))
    missing = [i for i, ts in bank.by_intent.items() if not ts]
    if missing:
        raise TextError(f"{text_dir / 'templates.txt'}: no assistant template for user intent(s) {missing}")
    return bank


def _read_sections_lines(path: Path) -> dict[str, list[str]]:
    """Read ``[section]`` blocks with one entry per line (templates contain commas)."""
    sections: dict[str, list[str]] = {}
    current = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        elif line and current is not None:
            current.append(line)
    return sections


def fill(template: str, rng: random.Random, slots: Mapping[str, tuple[str, ...]],
         term_slots: Iterable[str] = ()) -> tuple[str, tuple[str, ...]]:
    """Fill a template: choose among ``(a|b)`` alternatives, then fill each ``{slot}``.

    Returns:
        the sentence and the fillers of ``term_slots`` it contains, in order of appearance.
    """
    term_slots = set(term_slots)
    terms: list[str] = []

    def slot(m: re.Match) -> str:
        value = rng.choice(slots[m.group(1)])
        if m.group(1) in term_slots and value not in terms:
            terms.append(value)
        return value

    text = template
    while "(" in text:  # innermost alternatives first, so they may nest
        text = _ALTERNATIVES.sub(lambda m: rng.choice(m.group(1).split("|")), text)
    text = _SLOT.sub(slot, text)
    return " ".join(text.split()), tuple(terms)


def proxy_sentence(rng: random.Random, bank: TextBank) -> str:
    """Draw one server sentence: an assistant command or a dictated message."""
    if rng.random() < ASSISTANT_FRAC:
        template = rng.choice(bank.assistant)[1]
    else:
        template = rng.choice(bank.dictation)
    return fill(template, rng, bank.slots)[0]


@dataclass(frozen=True)
class ClientText:
    """One simulated user's text profile.

    Attributes:
        locale: Faker locale the names and places come from.
        contacts: ``"first last"`` names; neither word occurs in server text.
        places: city or street names; no word occurs in server text.
        intent_weights: probability of each of `USER_INTENTS` (Dirichlet draw).
    """

    locale: str
    contacts: tuple[str, ...]
    places: tuple[str, ...]
    intent_weights: tuple[float, ...]

    @cached_property
    def slots(self) -> dict[str, tuple[str, ...]]:
        """The entity slots this client fills with its own names and places."""
        firsts = tuple(c.split()[0] for c in self.contacts)
        return {"contact": self.contacts, "first": firsts, "place": self.places, "city": self.places}


_FAKERS: dict = {}


def _new_term(raw: str, lexicon: frozenset[str], taken: set[str]) -> str | None:
    """Normalise a Faker name; None if it is not ASCII, already taken or shares a word with the server."""
    if not _FAKER_NAME.fullmatch(raw):
        return None
    term = normalize_text(raw)
    if not term or term in taken or any(w in lexicon for w in term.split()):
        return None
    return term


def make_client_text(rng: random.Random, locale: str, lexicon: frozenset[str],
                     n_contacts: int = 6, n_places: int = 7, alpha: float = 0.5,
                     max_tries: int = 2000) -> ClientText:
    """Draw a client's contacts, places and intent mix (Faker seeded from ``rng``).

    Candidates having any word in ``lexicon`` (the server vocabulary) are rejected, so every
    contact and place is a new term for a server-trained model.
    """
    from faker import Faker

    fake = _FAKERS.get(locale) or _FAKERS.setdefault(locale, Faker(locale))
    fake.seed_instance(rng.getrandbits(63))
    taken: set[str] = set()
    contacts: list[str] = []
    places: list[str] = []
    for _ in range(max_tries):
        if len(contacts) == n_contacts:
            break
        first, last = _new_term(fake.first_name(), lexicon, taken), _new_term(fake.last_name(), lexicon, set())
        if first and last:
            contacts.append(f"{first} {last}")
            taken.update((first, contacts[-1]))
    for i in range(max_tries):
        if len(places) == n_places:
            break
        place = _new_term(fake.city() if i % 2 == 0 else fake.street_name(), lexicon, taken)
        if place:
            places.append(place)
            taken.add(place)
    if len(contacts) < n_contacts or len(places) < n_places:
        raise TextError(f"locale {locale}: found only {len(contacts)} contacts and {len(places)} places "
                        f"with no word in server text after {max_tries} tries")
    gammas = [rng.gammavariate(alpha, 1.0) for _ in USER_INTENTS]
    total = sum(gammas)
    return ClientText(locale, tuple(contacts), tuple(places), tuple(round(g / total, 6) for g in gammas))


def user_command(rng: random.Random, bank: TextBank, client: ClientText) -> tuple[str, tuple[str, ...]]:
    """Draw one command of ``client``: an intent from its mix, a template, its own names and places.

    Returns:
        the sentence and the client's terms (contacts, first names, places) it contains.
    """
    intent = rng.choices(USER_INTENTS, weights=client.intent_weights)[0]
    template = rng.choice(bank.by_intent[intent])
    return fill(template, rng, {**bank.slots, **client.slots}, ENTITY_SLOTS)


def vocabulary(texts: Iterable[str]) -> Counter:
    """Word counts over ``texts``."""
    counts: Counter = Counter()
    for t in texts:
        counts.update(t.split())
    return counts


def oov_rate(texts: Iterable[str], vocab: Iterable[str]) -> float:
    """Share of word tokens in ``texts`` that are not in ``vocab``."""
    vocab = set(vocab)
    counts = vocabulary(texts)
    total = sum(counts.values())
    return sum(n for w, n in counts.items() if w not in vocab) / max(total, 1)
