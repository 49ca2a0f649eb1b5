"""How well each simulated user corrects: a per-client wrong-correction rate (issue 18; used by `fedasr.corrections`).

Clients already differ in the **amount** of their corrections (`fedasr.corrections.CorrectionConfig`):
``never_fraction`` of them never correct, the others have a propensity ``e_k ~ Beta(0.7, 0.7)`` (U-shaped: most
correct rarely or almost always), and per-client utterance counts are long-tailed. By default they do not differ
in **quality**: every correction of an erroneous transcript is wrong with one global probability ``p_wrong``.
With that, WCA has nothing to tell apart except counts (issue 18), so this module adds an opt-in spread:

    q_k ~ Beta(p_wrong · κ, (1 − p_wrong) · κ)     # client k's own wrong-correction rate, E[q_k] = p_wrong
    Var[q_k] = p_wrong (1 − p_wrong) / (κ + 1)      # κ = ``wrong_concentration``; κ = 0 means off (q_k = p_wrong)

What the papers say, and what is ours:

* The paper (§2.5, paper.md) says only that some corrections are incorrect and must be filtered out, and
  paper.md §4.1 (E6) suggests a population share ``p_bad`` of 10–30% [S]/[INF]. Neither says whether that share is
  spread evenly over users; nothing retrieved measures per-user correction quality.
* That users differ is our assumption [INF], from how people type: a careful typist who fixes a misheard name
  rarely produces a wrong correction, while a hurried one replaces the dictated text with a different message,
  clears the field, pastes a link or a long text, or appends an emoji (the wrong types of `fedasr.corrections`).
  These are habits of a person, not of an utterance, so they cluster by client. A Beta keeps the population
  mean at ``p_wrong`` (the E6-anchored default rate is unchanged; only its distribution over users moves) and
  with a small κ is skewed: most users near 0, a few careless ones with a high rate.
* The draw is seeded from ``("wrong-rate", seed, client)``, like the engagement, so a client's rate does not
  depend on which other clients are simulated, and it is independent of the engagement [INF]: nothing says
  that users who correct more correct better or worse.
* Among a client's non-wrong corrections the typo / partial / exact mix keeps the population's proportions
  (`kind_thresholds`), so only the wrong share moves per client.
"""

from __future__ import annotations

import random

from fedasr.seeding import derive_seed

__all__ = ["client_wrong_rate", "kind_thresholds"]


def client_wrong_rate(client: str | None, seed: int, p_wrong: float, concentration: float) -> float:
    """Return client ``client``'s wrong-correction rate: ``p_wrong`` when off (κ = 0), else a seeded Beta draw.

    Args:
        client: the client id (seeds the draw with ``seed``).
        seed: the simulation seed (`fedasr.corrections.CorrectionConfig.seed`).
        p_wrong: the population mean rate, in (0, 1) when ``concentration > 0``.
        concentration: κ of ``Beta(p_wrong·κ, (1 − p_wrong)·κ)``; 0 disables the spread.
    """
    if concentration <= 0 or p_wrong <= 0.0 or p_wrong >= 1.0:
        return p_wrong  # off, or a degenerate mean that has no spread
    rng = random.Random(derive_seed("wrong-rate", seed, client))
    return rng.betavariate(p_wrong * concentration, (1.0 - p_wrong) * concentration)


def kind_thresholds(q: float, p_wrong: float, p_typo: float, p_partial: float) -> tuple[float, float, float]:
    """Return the cumulative thresholds ``(wrong, + typo, + partial)`` a uniform draw is compared with.

    The typo and partial shares are scaled by ``(1 − q) / (1 − p_wrong)``, so that among a client's non-wrong
    corrections their proportions are the population's; with ``q == p_wrong`` the scale is exactly 1 and the
    thresholds are bitwise those of the uniform simulator (``p_wrong``, ``p_wrong + p_typo``, ``... + p_partial``).
    """
    scale = (1.0 - q) / (1.0 - p_wrong) if q != p_wrong else 1.0
    t_typo = q + p_typo * scale
    return q, t_typo, t_typo + p_partial * scale
