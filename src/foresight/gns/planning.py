"""Batch-size planning from the empirical model of large-batch training (McCandlish et al. 2018).

With :math:`B_\\text{crit}` the critical batch size (estimated by :math:`B_\\text{simple}` or
:math:`B_\\text{noise}`), training to a given loss at batch size :math:`B` takes

.. math::

    S = S_\\min\\Big(1 + \\frac{B_\\text{crit}}{B}\\Big) \\text{ steps}, \\qquad
    E = E_\\min\\Big(1 + \\frac{B}{B_\\text{crit}}\\Big) \\text{ examples},

and the optimal SGD learning rate is
:math:`\\epsilon_\\text{opt}(B) = \\epsilon_\\max / (1 + B_\\text{noise}/B)`. At
:math:`B = B_\\text{crit}` both the steps and the examples are twice their minimum.
"""

from __future__ import annotations

import math

__all__ = ["steps_needed", "examples_needed", "optimal_lr", "suggested_batch_size"]


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def steps_needed(batch_size: float, b_crit: float, s_min: float = 1.0) -> float:
    """:math:`S = S_\\min (1 + B_\\text{crit}/B)`.

    >>> steps_needed(batch_size=100, b_crit=100, s_min=1000)
    2000.0
    """
    _check_positive(batch_size=batch_size, b_crit=b_crit, s_min=s_min)
    return s_min * (1.0 + b_crit / batch_size)


def examples_needed(batch_size: float, b_crit: float, e_min: float = 1.0) -> float:
    """:math:`E = E_\\min (1 + B/B_\\text{crit})`.

    >>> examples_needed(batch_size=300, b_crit=100, e_min=1e5)
    400000.0
    """
    _check_positive(batch_size=batch_size, b_crit=b_crit, e_min=e_min)
    return e_min * (1.0 + batch_size / b_crit)


def optimal_lr(batch_size: float, b_noise: float, lr_max: float) -> float:
    """:math:`\\epsilon_\\text{opt}(B) = \\epsilon_\\max / (1 + B_\\text{noise}/B)`.

    >>> optimal_lr(batch_size=64, b_noise=64, lr_max=0.2)
    0.1
    """
    _check_positive(batch_size=batch_size, b_noise=b_noise, lr_max=lr_max)
    return lr_max / (1.0 + b_noise / batch_size)


def suggested_batch_size(estimate: object, *, multiple_of: int = 1) -> int:
    """The batch size to train at: :math:`B_\\text{crit} \\approx B_\\text{simple}`, rounded to a
    multiple of ``multiple_of`` (at least one multiple).

    ``estimate`` is a number or anything with a ``b_simple`` attribute (a
    :class:`~foresight.gns.NoiseScale`, e.g. from :class:`~foresight.gns.GradientNoiseScale`).
    At this batch size, steps and examples are both twice their minimum (the paper's compromise).

    Raises:
        ValueError: the estimate is unresolved (``resolved`` false: :math:`|G|^2` is not
            distinguished from zero, the message gives the reason and any lower bound), or not a
            positive finite number, or ``multiple_of < 1``.

    >>> suggested_batch_size(900.0, multiple_of=64)
    896
    """
    if getattr(estimate, "resolved", True) is False:
        lower = float(getattr(estimate, "b_simple_lower", math.nan))
        hint = (
            f"; the data only say B_simple >= {lower:.4g}" if math.isfinite(lower) else ""
        )
        raise ValueError(
            "suggested_batch_size: the noise-scale estimate is unresolved, so it does not give a "
            f"batch size ({getattr(estimate, 'reason', '') or 'no reason given'}){hint}. Smooth "
            "over more steps (larger beta), measure on a larger batch, or wait until the "
            "gradient is resolved."
        )
    value = float(getattr(estimate, "b_simple", estimate))
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(
            f"the noise-scale estimate must be positive and finite to suggest a batch size, "
            f"got {value!r} (too few steps smoothed yet?)"
        )
    if multiple_of < 1:
        raise ValueError(f"multiple_of must be >= 1, got {multiple_of}")
    return max(multiple_of, int(round(value / multiple_of)) * multiple_of)
