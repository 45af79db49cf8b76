"""Figures of the causal measures (:mod:`foresight.causal`) over training.

Histories are ``monitor.history`` (with the ``"causal"`` metric), :attr:`CausalTracker.history
<foresight.causal.CausalTracker>`, a list of records, a ``pandas.DataFrame`` or a dict of columns,
with keys ``causal_ei/<layer>``, ``ei_parts/<layer>``, ``sensitivity/<layer>`` and
``causal_degeneracy/<layer>`` (bits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from foresight._optional import require
from foresight.plot._history import Columns, columns, series

__all__ = ["causal_plane", "layer_ei_training", "MEASURE_KEYS"]

#: Measure name -> record key prefix.
MEASURE_KEYS = {
    "ei": "causal_ei",
    "ei_parts": "ei_parts",
    "sensitivity": "sensitivity",
    "degeneracy": "causal_degeneracy",
}

_LABELS = {
    "ei": "EI (bits)",
    "ei_parts": r"EI$_\mathrm{parts}$ (bits)",
    "sensitivity": "sensitivity (bits)",
    "degeneracy": "degeneracy (bits)",
}


def _layers(cols: Columns, prefix: str, layers: Sequence[str] | None) -> list[str]:
    found = [k[len(prefix) + 1 :] for k in cols if k.startswith(prefix + "/")]
    if layers is None:
        return found
    missing = [name for name in layers if name not in found]
    if missing:
        raise ValueError(f"history has no {prefix!r} values for layers {missing} (has {found})")
    return list(layers)


def _axes(ax: Any, figsize: tuple[float, float]):
    plt = require("matplotlib.pyplot", "foresight.plot")
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    else:
        fig = ax.figure
    return fig, ax


def layer_ei_training(
    history: Any,
    *,
    measure: str = "ei_parts",
    x: str = "epoch",
    layers: Sequence[str] | None = None,
    ax: Any = None,
    logx: bool = True,
    title: str | None = None,
):
    """One causal measure of each layer against ``x`` (one line per layer).

    Args:
        history: the measurements (see the module docs).
        measure: ``"ei"``, ``"ei_parts"``, ``"sensitivity"`` or ``"degeneracy"``.
        x: the column on the horizontal axis.
        layers: which layers (default: all in the history).
        ax: a matplotlib ``Axes`` to draw into (default: a new figure).
        logx: ``symlog`` x axis (linear below 1, so epoch 0 stays).
        title: the axes title (default: names the measure).

    Returns:
        The matplotlib ``Figure``.

    Example:
        >>> rows = [{"epoch": e, "ei_parts/0": 1 + e, "ei_parts/2": 2.0} for e in range(4)]
        >>> fig = layer_ei_training(rows)
        >>> [line.get_label() for line in fig.axes[0].get_lines()]
        ['layer 0', 'layer 2']
    """
    if measure not in MEASURE_KEYS:
        raise ValueError(f"measure must be one of {sorted(MEASURE_KEYS)}, got {measure!r}")
    cols = columns(history)
    if x not in cols:
        raise ValueError(f"layer_ei_training: history has no {x!r} column (has {sorted(cols)})")
    prefix = MEASURE_KEYS[measure]
    names = _layers(cols, prefix, layers)
    if not names:
        raise ValueError(f"layer_ei_training: history has no {prefix}/<layer> columns")
    fig, ax = _axes(ax, (7, 4))
    for name in names:
        xs, ys = series(cols, x, f"{prefix}/{name}")
        ax.plot(xs, ys, marker=".", lw=1.5, label=f"layer {name}")
    if logx:
        ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel(x)
    ax.set_ylabel(_LABELS[measure])
    ax.set_title(title if title is not None else f"{_LABELS[measure][:-7]} of each layer")
    ax.legend(loc="best")
    return fig


def causal_plane(
    history: Any,
    *,
    x: str = "epoch",
    layers: Sequence[str] | None = None,
    ax: Any = None,
    title: str | None = "Causal plane",
):
    """Each layer's path through the (sensitivity, degeneracy) plane as training goes on.

    One colour per layer; points darken with ``x`` (training time), the first is an open
    circle and the last a star. The diagonal ``degeneracy = sensitivity`` (EI_parts = 0) is
    dotted: a layer's EI_parts is its horizontal distance to it.

    Args:
        history: the measurements (see the module docs).
        x: the column giving training time (orders the points).
        layers: which layers (default: all in the history).
        ax: a matplotlib ``Axes`` to draw into (default: a new figure).
        title: the axes title (``None`` for none).

    Returns:
        The matplotlib ``Figure``.

    Example:
        >>> rows = [{"epoch": e, "sensitivity/0": 5.0 + e, "causal_degeneracy/0": 3.0 - e / 2}
        ...         for e in range(4)]
        >>> fig = causal_plane(rows)
        >>> fig.axes[0].get_xlabel()
        'sensitivity (bits)'
    """
    cols = columns(history)
    if x not in cols:
        raise ValueError(f"causal_plane: history has no {x!r} column (has {sorted(cols)})")
    names = _layers(cols, "sensitivity", layers)
    names = [n for n in names if f"causal_degeneracy/{n}" in cols]
    if not names:
        raise ValueError("causal_plane: history has no sensitivity/<layer> and "
                         "causal_degeneracy/<layer> columns")
    fig, ax = _axes(ax, (5.5, 5))
    colors = require("matplotlib", "foresight.plot").colormaps["tab10"]
    top = 0.0
    for i, name in enumerate(names):
        sens, degen = f"sensitivity/{name}", f"causal_degeneracy/{name}"
        pts = [
            (t, s, d) for t, s, d in zip(cols[x], cols[sens], cols[degen])
            if all(math.isfinite(v) for v in (t, s, d))
        ]
        if not pts:
            continue
        pts.sort()
        s_vals = [p[1] for p in pts]
        d_vals = [p[2] for p in pts]
        color = colors(i % 10)
        ax.plot(s_vals, d_vals, color=color, lw=1, alpha=0.6)
        n = len(pts)
        alphas = [0.25 + 0.75 * k / max(1, n - 1) for k in range(n)]
        for s, d, a in zip(s_vals, d_vals, alphas):
            ax.plot(s, d, "o", ms=3, color=color, alpha=a)
        ax.plot(s_vals[0], d_vals[0], "o", ms=8, mfc="none", color=color)
        ax.plot(s_vals[-1], d_vals[-1], "*", ms=12, color=color, label=f"layer {name}")
        top = max(top, max(s_vals), max(d_vals))
    ax.plot([0, top], [0, top], ":", color="gray", lw=1)
    ax.set_xlabel("sensitivity (bits)")
    ax.set_ylabel("degeneracy (bits)")
    if title:
        ax.set_title(title)
    ax.legend(loc="best", title=f"o start, * end ({x})")
    return fig
