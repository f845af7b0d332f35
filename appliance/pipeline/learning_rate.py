"""The learning-rate schedule of training: constant at the configuration's rate, then a linear cooldown to zero.

A configuration trains at its configured Adam learning rate (the paper's method) in every slice a race may still
judge, since a race can end a trial's training after any slice; only the last stretch, after which the weights are
used rather than trained on, ends with a linear decay to zero over the last :data:`COOLDOWN` of the trial's
training: the warmup-stable-decay shape (without warmup), whose constant phase can end at any time. No torch here:
the halving plans cooldowns without loading it.
"""

from __future__ import annotations

COOLDOWN = 1 / 3
"""The last fraction of a configuration's training over which its learning rate decays linearly to zero (the
cooldown of a warmup-stable-decay schedule; docs/design.md, "The last stretch")."""


def cooldown_fraction(trained_seconds: float, slice_seconds: float) -> float:
    """The fraction of a last slice of ``slice_seconds`` to cool down over, so that the cooldown is
    :data:`COOLDOWN` of the training of the trial, which trained ``trained_seconds`` before it (all of the slice
    when that is more than the slice).

    >>> cooldown_fraction(0.0, 300.0), cooldown_fraction(120.0, 600.0), cooldown_fraction(600.0, 60.0)
    (0.3333333333333333, 0.4, 1.0)
    """
    if slice_seconds <= 0:
        return 1.0
    return min(1.0, COOLDOWN * (trained_seconds + slice_seconds) / slice_seconds)


def slice_progress(elapsed: float, steps: int, *, seconds: float | None, max_steps: int | None) -> float:
    """How far a slice is, in [0, 1]: the larger of its fraction of ``seconds`` spent and of ``max_steps`` done.

    >>> slice_progress(30.0, 10, seconds=120.0, max_steps=None), slice_progress(30.0, 10, seconds=120.0, max_steps=20)
    (0.25, 0.5)
    """
    fractions = [elapsed / seconds if seconds else 0.0, steps / max_steps if max_steps else 0.0]
    return min(max(fractions), 1.0)


def cooldown_factor(progress: float, cooldown: float) -> float:
    """The learning rate, as a fraction of the configured one, at ``progress`` (0 to 1) through a slice whose last
    ``cooldown`` fraction decays linearly to zero.

    >>> cooldown_factor(0.5, 0.25), cooldown_factor(0.875, 0.25), cooldown_factor(0.5, 1.0)
    (1.0, 0.5, 0.5)
    """
    return min(1.0, (1.0 - progress) / cooldown) if cooldown > 0 else 1.0
