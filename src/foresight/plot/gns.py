"""Figure of the gradient noise scale over training (:mod:`foresight.gns`).

Only resolved estimates are drawn as batch sizes: an estimate whose :math:`|G|^2` is not resolved
from zero (``resolved`` false, see :func:`foresight.gns.estimators.resolve`) is drawn as its lower
bound (an upward triangle) when it has one and left out otherwise; a plain number that is not
positive is left out. The figure never shows a negative batch size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from foresight._optional import require
from foresight.plot._style import UNRESOLVED_COLOR, mark_unresolved, place_legend
from foresight.plot._style import split_resolved as _split_series

__all__ = ["noise_scale_over_training", "split_resolved"]


def _value(est: Any, field: str) -> float:
    if isinstance(est, (int, float)):
        return float(est) if field == "b_simple" else math.nan
    return float(getattr(est, field, math.nan))


def split_resolved(estimates: Sequence[Any]) -> tuple[list[float], list[float], list[float]]:
    """``(values, errors, lower_bounds)``: per estimate, the resolved positive ``b_simple`` (else
    ``nan``), its standard error (else ``nan``) and, for an unresolved one, its positive lower
    bound (else ``nan``).

    >>> from foresight.gns import NoiseScale
    >>> ests = [NoiseScale.from_parts(1.0, 40.0, 8), -5.0,
    ...         NoiseScale.from_parts(0.0, 40.0, 8, grad_sq_norm_se=0.25)]
    >>> split_resolved(ests)
    ([40.0, nan, nan], [nan, nan, nan], [nan, nan, 80.0])
    """
    values, errors, lower = [], [], []
    for est in estimates:
        b = _value(est, "b_simple")
        ok = getattr(est, "resolved", True) is not False and math.isfinite(b) and b > 0
        values.append(b if ok else math.nan)
        se = _value(est, "b_simple_se")
        errors.append(se if ok and math.isfinite(se) else math.nan)
        lo = _value(est, "b_simple_lower")
        lower.append(lo if not ok and math.isfinite(lo) and lo > 0 else math.nan)
    return values, errors, lower


def noise_scale_over_training(
    steps: Sequence[float],
    estimates: Sequence[Any],
    ax: Any = None,
    *,
    multiple_of: int = 1,
    title: str | None = "Gradient noise scale",
):
    """:math:`B_\\text{simple}` against the training step, with the batch size used and the
    suggested batch size (the last resolved estimate, see
    :func:`foresight.gns.suggested_batch_size`).

    Resolved estimates are a line with a band of :math:`\\pm 1` standard error where it is known;
    unresolved ones (the unbiased :math:`|G|^2` estimate is not resolved from its noise at this
    batch size) are no batch size: their stretch is shaded "unresolved", the curve is broken
    there, and their lower bound is drawn (triangles) where one exists. Nothing negative is drawn;
    the y axis is logarithmic.

    Args:
        steps: the step of each estimate.
        estimates: :class:`~foresight.gns.NoiseScale` objects (e.g. the tracker's ``step()``
            results) or plain ``b_simple`` numbers.
        ax: a matplotlib ``Axes`` to draw into (default: a new figure).
        multiple_of: round the suggested batch size to this multiple.
        title: the axes title (``None`` for none).

    Returns:
        The matplotlib ``Figure``.

    Example:
        >>> from foresight.gns import NoiseScale
        >>> ests = [NoiseScale.from_parts(1.0 / (s + 1), 50.0, 32) for s in range(5)]
        >>> fig = noise_scale_over_training(range(5), ests)
        >>> fig.axes[0].get_ylabel()
        'noise scale (examples)'
    """
    plt = require("matplotlib.pyplot", "foresight.plot.gns")
    steps = list(steps)
    estimates = list(estimates)
    if len(steps) != len(estimates):
        raise ValueError(
            f"noise_scale_over_training: {len(steps)} steps but {len(estimates)} estimates"
        )
    values, errors, lower = split_resolved(estimates)
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    else:
        fig = ax.figure
    xs, ys, unresolved = _split_series(steps, values)
    good = [v for v in ys if math.isfinite(v)]
    handles = []
    (line,) = ax.plot(xs, ys, color="tab:purple", lw=2, label=r"$B_\mathrm{simple}$ (resolved)",
                      marker="o" if len(good) < 3 else None, ms=3)
    handles.append(line)
    band = [
        (s, max(v - e, v * 0.05), v + e)
        for s, v, e in zip(steps, values, errors)
        if math.isfinite(v) and math.isfinite(e)
    ]
    if band:
        bx, lo, hi = zip(*band)
        handles.append(ax.fill_between(bx, lo, hi, color="tab:purple", alpha=0.2, lw=0,
                                       label="± 1 s.e."))
    if any(math.isfinite(v) for v in lower):
        (tri,) = ax.plot(steps, lower, ls="none", marker="^", ms=4, color="tab:orange",
                         label="unresolved: lower bound")
        handles.append(tri)
    batch = [_value(e, "batch_size") for e in estimates]
    if any(math.isfinite(b) and b > 0 for b in batch):
        (used,) = ax.plot(steps, batch, color="tab:gray", ls=":", label="batch size used")
        handles.append(used)
    if good:
        suggested = max(multiple_of, round(good[-1] / multiple_of) * multiple_of)
        handles.append(ax.axhline(suggested, color="tab:green", ls="--",
                                  label=f"suggested batch size {suggested}"))
    if good or any(math.isfinite(v) for v in lower):
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no resolved estimate", transform=ax.transAxes, ha="center",
                va="center", color=UNRESOLVED_COLOR)
    mark = mark_unresolved(ax, unresolved, steps)
    if mark is not None:
        handles.append(mark)
    ax.set_xlabel("step")
    ax.set_ylabel("noise scale (examples)")
    if title:
        ax.set_title(title)
    fig.canvas.draw()
    place_legend(ax, handles, [h.get_label() for h in handles], fontsize="small")
    return fig
