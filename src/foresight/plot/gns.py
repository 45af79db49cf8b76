"""Figure of the gradient noise scale over training (:mod:`foresight.gns`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from foresight._optional import require
from foresight.plot._style import UNRESOLVED_COLOR, mark_unresolved, place_legend, split_resolved

__all__ = ["noise_scale_over_training"]


def _value(est: Any, field: str) -> float:
    if isinstance(est, (int, float)):
        return float(est) if field == "b_simple" else math.nan
    return float(getattr(est, field, math.nan))


def noise_scale_over_training(
    steps: Sequence[float],
    estimates: Sequence[Any],
    ax: Any = None,
    *,
    multiple_of: int = 1,
    title: str | None = "Gradient noise scale",
):
    """:math:`B_\\text{simple}` against the training step, with the batch size used and the
    suggested batch size (the last finite positive estimate, see
    :func:`foresight.gns.suggested_batch_size`).

    An estimate that is not finite or not positive (the unbiased :math:`|G|^2` estimate fell below
    its noise: the gradient is not resolved at this batch size) is no batch size: it is drawn as a
    shaded "unresolved" stretch, and the curve is broken there. The y axis is logarithmic.

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
    values = [_value(e, "b_simple") for e in estimates]
    if len(steps) != len(values):
        raise ValueError(
            f"noise_scale_over_training: {len(steps)} steps but {len(values)} estimates"
        )
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    else:
        fig = ax.figure
    xs, ys, unresolved = split_resolved(steps, values)
    good = [v for v in ys if math.isfinite(v)]
    handles = []
    (line,) = ax.plot(xs, ys, color="tab:purple", lw=2, label=r"$B_\mathrm{simple}$",
                      marker="o" if len(good) < 3 else None, ms=3)
    handles.append(line)
    batch = [_value(e, "batch_size") for e in estimates]
    if any(math.isfinite(b) and b > 0 for b in batch):
        (used,) = ax.plot(steps, batch, color="tab:gray", ls=":", label="batch size used")
        handles.append(used)
    if good:
        suggested = max(multiple_of, round(good[-1] / multiple_of) * multiple_of)
        handles.append(ax.axhline(suggested, color="tab:green", ls="--",
                                  label=f"suggested batch size {suggested}"))
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
