"""What the figures share: one epoch colour scale, legends that cover no data, unresolved marks.

* :func:`epoch_norm` / :data:`EPOCH_CMAP`: every figure that colours points by epoch (the
  information plane, the causal plane, the dashboard's planes) uses this one scale -- ``viridis``
  on a symmetric-log axis, linear from 0 to 1 and logarithmic above, as training slows down -- so
  one colour means one epoch in every figure;
* :func:`place_legend`: a legend inside the axes where it covers no drawn point or line (of the
  axes and of its twins), else outside, below the axes;
* :func:`mark_unresolved`: estimates that are not a number of examples (a gradient noise scale
  :math:`\\le 0`, NaN or infinite: the unbiased :math:`|G|^2` estimate fell below its noise) are
  drawn as shaded "unresolved" stretches, never as values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: The colour map of the epoch (or step) scale in every figure.
EPOCH_CMAP = "viridis"
#: Colour of the "unresolved" marks.
UNRESOLVED_COLOR = "0.45"
UNRESOLVED_LABEL = "unresolved (estimate ≤ 0 or not finite)"

_INSIDE = ("upper right", "upper left", "lower left", "lower right", "center right",
           "center left", "upper center", "lower center", "center")


def epoch_norm(values: Sequence[float], vmin: float | None = None, vmax: float | None = None):
    """The colour normalisation of epochs: symmetric-log (linear on [0, 1]) over ``[vmin, vmax]``
    (default: the range of ``values``).

    >>> norm = epoch_norm([0, 3, 299])
    >>> (norm.vmin, norm.vmax, round(float(norm(0)), 3), round(float(norm(299)), 3))
    (0.0, 299.0, 0.0, 1.0)
    """
    from matplotlib.colors import SymLogNorm

    finite = [float(v) for v in values if math.isfinite(float(v))]
    lo = float(min(finite)) if vmin is None and finite else float(vmin or 0.0)
    hi = float(max(finite)) if vmax is None and finite else float(vmax if vmax is not None else 1)
    if not hi > lo:
        hi = lo + 1.0
    # linscale 0.9 = 1 - 1/base: the linear stretch 0..1 gets the colour width of one decade
    return SymLogNorm(linthresh=1.0, linscale=0.9, vmin=lo, vmax=hi, base=10)


def _line_points(artist: Any) -> np.ndarray:
    """Display coordinates of a line's path, sampled every ~2 px along each segment."""
    xy = np.asarray(artist.get_xydata(), dtype=float)
    if xy.size == 0:
        return np.empty((0, 2))
    pts = artist.get_transform().transform(xy)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if artist.get_linestyle() in ("None", "", " ", "none") or len(pts) < 2:
        return pts
    out = [pts[:1]]
    for a, b in zip(pts[:-1], pts[1:]):
        n = int(min(2000, max(1, np.hypot(*(b - a)) // 2)))
        t = np.linspace(0.0, 1.0, n + 1)[1:, None]
        out.append(a + t * (b - a))
    return np.concatenate(out)


def data_points(axes: Sequence[Any]) -> np.ndarray:
    """Display coordinates of everything drawn in ``axes`` (lines sampled densely, scatter
    offsets), for checking what a legend would cover."""
    chunks = [np.empty((0, 2))]
    for ax in axes:
        for line in ax.get_lines():
            if line.get_visible():
                chunks.append(_line_points(line))
        for coll in ax.collections:
            offsets = np.asarray(coll.get_offsets(), dtype=float)
            if coll.get_visible() and offsets.size:
                pts = coll.get_offset_transform().transform(offsets)
                chunks.append(pts[np.isfinite(pts).all(axis=1)])
    return np.concatenate(chunks)


def covered(bbox: Any, points: np.ndarray, pad: float = 3.0) -> int:
    """How many of ``points`` lie inside ``bbox`` (display coordinates, grown by ``pad`` px)."""
    if points.size == 0:
        return 0
    inside = ((points[:, 0] >= bbox.x0 - pad) & (points[:, 0] <= bbox.x1 + pad)
              & (points[:, 1] >= bbox.y0 - pad) & (points[:, 1] <= bbox.y1 + pad))
    return int(inside.sum())


def twins_of(ax: Any) -> list[Any]:
    """The axes sharing ``ax``'s position (``twinx``/``twiny``), ``ax`` included."""
    return [ax, *(a for a in ax.figure.axes if a is not ax and a.bbox.bounds == ax.bbox.bounds)]


def place_legend(ax: Any, handles: Sequence[Any], labels: Sequence[str], **kwargs: Any):
    """Put the legend where it covers nothing drawn in ``ax`` or its twins.

    Tries the nine inside positions; if each covers some point or line, the legend goes outside,
    centred below the axes (where the layout makes room for it). Call it after the data are drawn
    and the figure laid out (``fig.canvas.draw()``), as the positions are measured in pixels.
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    points = data_points(twins_of(ax))
    kwargs.setdefault("fontsize", "x-small")
    for loc in _INSIDE:
        legend = ax.legend(handles, labels, loc=loc, **kwargs)
        if covered(legend.get_window_extent(renderer), points) == 0:
            return legend
    return ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                     ncols=min(len(labels), 3), frameon=False, **kwargs)


def mark_unresolved(ax: Any, xs: Sequence[float], measured: Sequence[float]):
    """Shade, in light grey, the stretches of ``ax`` where the estimates at ``xs`` (a subset of
    the ``measured`` x values) were unresolved: measured, but no value to draw. Each shaded span
    reaches halfway to the neighbouring measurements. Returns a legend handle (or ``None``)."""
    from matplotlib.patches import Patch

    bad = set(xs)
    if not bad:
        return None
    grid = sorted(set(measured) | bad)
    spans: list[list[float]] = []
    for i, x in enumerate(grid):
        if x not in bad:
            continue
        lo = (grid[i - 1] + x) / 2 if i > 0 else x
        hi = (x + grid[i + 1]) / 2 if i + 1 < len(grid) else x
        if spans and grid[i - 1] in bad:
            spans[-1][1] = hi
        else:
            spans.append([lo, hi])
    for lo, hi in spans:
        if hi > lo:
            ax.axvspan(lo, hi, color=UNRESOLVED_COLOR, alpha=0.18, lw=0, zorder=0)
        else:
            ax.axvline(lo, color=UNRESOLVED_COLOR, alpha=0.4, lw=1.5, zorder=0)
    return Patch(facecolor=UNRESOLVED_COLOR, alpha=0.3, label=UNRESOLVED_LABEL)


def split_resolved(
    xs: Sequence[float], ys: Sequence[float]
) -> tuple[list[float], list[float], list[float]]:
    """``(x, y with NaN where unresolved, x of the unresolved)`` of a positive quantity: values
    that are not finite or not > 0 are unresolved; the NaN breaks the line there.

    >>> split_resolved([0, 1, 2, 3], [5.0, -2.0, float("inf"), 7.0])
    ([0, 1, 2, 3], [5.0, nan, nan, 7.0], [1, 2])
    """
    good = [y if (math.isfinite(y) and y > 0) else math.nan for y in ys]
    bad = [x for x, y in zip(xs, good) if math.isnan(y)]
    return list(xs), good, bad
