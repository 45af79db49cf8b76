"""Information-plane figures: the plane coloured by epoch, and I(X;T), I(T;Y) against epoch.

Both read records (:func:`foresight.results.tidy`): an
:class:`foresight.ib.InformationPlaneTracker` or its ``history``, ``monitor.history`` with the
:class:`~foresight.monitor.InformationPlane` metric (keys ``i_xt/<layer>``, ``i_ty/<layer>``),
tidy records, the 0.2 per-layer rows (dicts with ``epoch``, ``layer``, ``i_xt``, ``i_ty``), or a
``pandas.DataFrame`` of any of these. ``x="step"`` puts the points on the ``step`` counter
instead of ``epoch``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from foresight._optional import require
from foresight.plot._style import EPOCH_CMAP, epoch_norm, place_legend
from foresight.results import tidy

__all__ = ["information_plane_plot", "mutual_information_curves"]

_FIELDS = ("i_xt", "i_ty")
_INDEX = ("epoch", "step")


def _records(history: Any, x: str = "epoch") -> list[dict[str, Any]]:
    """Plain points ``{x, layer, i_xt, i_ty}`` from the records of ``history``."""
    if x not in _INDEX:
        raise ValueError(f"x must be 'epoch' or 'step', got {x!r}")
    points: dict[tuple[Any, str], dict[str, Any]] = {}
    for r in tidy(history):
        if r.field not in _FIELDS or r.layer is None:
            continue
        t = getattr(r, x)
        if t is None:
            raise ValueError(f"history records need {x!r}; a record of layer {r.layer!r} "
                             f"lacks it (use x='step' or x='epoch')")
        points.setdefault((t, r.layer), {x: t, "layer": r.layer})[r.field] = r.value
    # a frame of flat records has NaN where a row was not measured: no point there
    points = {k: p for k, p in points.items()
              if not all(isinstance(p.get(f), float) and math.isnan(p[f]) for f in _FIELDS)}
    if not points:
        raise ValueError("history is empty: record the information plane first (tracker.update)")
    for p in points.values():
        missing = [k for k in _FIELDS if k not in p]
        if missing:
            raise ValueError(f"history records need {list(_FIELDS)} for every layer; a record "
                             f"lacks {missing}: {p!r}")
    return list(points.values())


def _layers_in_order(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.setdefault(str(r["layer"]), None)
    return list(seen)


def information_plane_plot(
    history: Any,
    *,
    ax: Any = None,
    cmap: str = EPOCH_CMAP,
    layers: Sequence[str] | None = None,
    title: str | None = "Information plane",
    connect: bool = True,
    epoch_range: tuple[float, float] | None = None,
    x: str = "epoch",
):
    """Each layer's (I(X;T), I(T;Y)) at every recorded epoch, coloured by epoch.

    Points of one epoch are joined input to output (``connect``). The colour scale is the one
    every foresight figure uses for epochs (:func:`foresight.plot._style.epoch_norm`: linear from
    0 to 1, logarithmic above, as training slows down), so a colour means the same epoch here and
    in :func:`foresight.plot.training_dashboard`'s planes. Markers differ by layer; the legend is
    placed where it covers no point.

    Args:
        history: records: a tracker, its ``history``, ``monitor.history``, a list of records
            or a ``pandas.DataFrame`` (see the module documentation).
        ax: a matplotlib ``Axes`` to draw into (default: a new figure).
        cmap: matplotlib colour map for the epochs.
        layers: the layers to draw (default: all, in recorded order).
        title: the axes title (``None`` for none).
        connect: join the layers of one epoch with a thin line.
        epoch_range: ``(first, last)`` epoch of the colour scale (default: the recorded epochs),
            to give several figures the same scale.
        x: the counter that colours the points, ``"epoch"`` or ``"step"`` (the colour bar's
            label).

    Returns:
        The matplotlib ``Figure``.

    >>> rows = [{"epoch": e, "layer": n, "i_xt": 4 - i + e / 10, "i_ty": 0.2 * e}
    ...         for e in range(3) for i, n in enumerate(["1", "3"])]
    >>> fig = information_plane_plot(rows)
    >>> fig.axes[0].get_xlabel()
    'I(X;T) (bits)'
    """
    plt = require("matplotlib.pyplot", "foresight.plot.ib")
    rows = _records(history, x)
    names = list(layers) if layers is not None else _layers_in_order(rows)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4.5), layout="constrained")
    else:
        fig = ax.figure
    epochs = sorted({int(r[x]) for r in rows})
    lo, hi = epoch_range if epoch_range is not None else (epochs[0], epochs[-1])
    norm = epoch_norm(epochs, vmin=lo, vmax=hi)
    colormap = plt.get_cmap(cmap)
    markers = "osD^v<>ph*"
    by_epoch: dict[int, dict[str, tuple[float, float]]] = {}
    for r in rows:
        by_epoch.setdefault(int(r[x]), {})[str(r["layer"])] = (r["i_xt"], r["i_ty"])
    for epoch in epochs:
        points = [by_epoch[epoch][n] for n in names if n in by_epoch[epoch]]
        if connect and len(points) > 1:
            ax.plot(*zip(*points), color=colormap(norm(epoch)), lw=0.6, alpha=0.5)
    scatter = None
    for i, name in enumerate(names):
        pts = [(e, *by_epoch[e][name]) for e in epochs if name in by_epoch[e]]
        if not pts:
            continue
        es, xs, ys = zip(*pts)
        scatter = ax.scatter(
            xs, ys, c=list(es), cmap=colormap, norm=norm, s=18,
            marker=markers[i % len(markers)], edgecolors="none", label=f"layer {name}",
        )
    if scatter is not None:
        fig.colorbar(scatter, ax=ax, label=x)
    ax.set_xlabel("I(X;T) (bits)")
    ax.set_ylabel("I(T;Y) (bits)")
    if title:
        ax.set_title(title)
    if len(names) <= 10 and scatter is not None:
        fig.canvas.draw()  # lay out first: the legend goes where it covers no point
        handles = [c for c in ax.collections if c.get_label().startswith("layer ")]
        place_legend(ax, handles, [h.get_label() for h in handles], fontsize="small",
                     markerscale=1.2)
    return fig


def mutual_information_curves(
    history: Any,
    *,
    quantity: str = "both",
    ax: Any = None,
    layers: Sequence[str] | None = None,
    logx: bool = True,
    title: str | None = None,
    x: str = "epoch",
):
    """I(X;T) and/or I(T;Y) of every layer against epoch (or step).

    Args:
        history: records: a tracker, its ``history``, ``monitor.history``, a list of records
            or a ``pandas.DataFrame`` (see the module documentation).
        quantity: ``"both"`` (two panels), ``"i_xt"`` or ``"i_ty"`` (one panel).
        ax: an ``Axes`` (one quantity) or a pair of ``Axes`` (``"both"``); default a new figure.
        layers: the layers to draw (default: all, in recorded order).
        logx: logarithmic epoch axis (``symlog``, so epoch 0 stays visible).
        title: a figure title (``None`` for none).
        x: the horizontal axis, ``"epoch"`` or ``"step"``.

    Returns:
        The matplotlib ``Figure``.

    >>> rows = [{"epoch": e, "i_xt/1": 3.0, "i_ty/1": 0.1 * e} for e in range(4)]
    >>> fig = mutual_information_curves(rows)
    >>> [a.get_ylabel() for a in fig.axes]
    ['I(X;T) (bits)', 'I(T;Y) (bits)']
    """
    plt = require("matplotlib.pyplot", "foresight.plot.ib")
    if quantity not in ("both", "i_xt", "i_ty"):
        raise ValueError(f"quantity must be 'both', 'i_xt' or 'i_ty', got {quantity!r}")
    rows = _records(history, x)
    names = list(layers) if layers is not None else _layers_in_order(rows)
    quantities = ["i_xt", "i_ty"] if quantity == "both" else [quantity]
    if ax is None:
        fig, axes = plt.subplots(
            1, len(quantities), figsize=(5 * len(quantities), 3.8), layout="constrained",
            squeeze=False,
        )
        axes = list(axes[0])
    else:
        axes = list(ax) if isinstance(ax, (list, tuple)) else [ax]
        if len(axes) != len(quantities):
            raise ValueError(f"quantity={quantity!r} needs {len(quantities)} Axes, got {len(axes)}")
        fig = axes[0].figure
    labels = {"i_xt": "I(X;T) (bits)", "i_ty": "I(T;Y) (bits)"}
    colormap = plt.get_cmap("plasma")
    for q, a in zip(quantities, axes):
        for i, name in enumerate(names):
            pts = sorted((int(r[x]), r[q]) for r in rows if str(r["layer"]) == name)
            if pts:
                xs, ys = zip(*pts)
                color = colormap(i / max(1, len(names) - 1) * 0.85)
                a.plot(xs, ys, color=color, lw=1.5, label=f"layer {name}")
        a.set_xlabel(x)
        a.set_ylabel(labels[q])
        if logx:
            a.set_xscale("symlog", linthresh=1.0)
        if not all(math.isfinite(r[q]) for r in rows):
            a.set_title("(non-finite values skipped)", fontsize="small")
    axes[-1].legend(fontsize="small", loc="best")
    if title:
        fig.suptitle(title)
    return fig
