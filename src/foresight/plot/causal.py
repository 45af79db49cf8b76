"""Figures of the causal measures (:mod:`foresight.causal`) over training.

Histories are ``monitor.history`` (with the ``"causal"`` metric), a
:class:`~foresight.causal.CausalTracker` or its ``history``, a list of records (flat or tidy,
:mod:`foresight.results`), a ``pandas.DataFrame`` or a dict of columns, with keys
``causal_ei/<layer>``, ``ei_parts/<layer>``, ``sensitivity/<layer>`` and
``causal_degeneracy/<layer>`` (bits; :data:`foresight.causal.RECORD_KEYS`). The flags
``causal_ei_converged/<layer>``, ``ei_parts_converged/<layer>`` and
``sensitivity_converged/<layer>`` (``bool``, recorded with them;
:data:`foresight.causal.CONVERGED_KEYS`) mark sample-limited values: such points are drawn hollow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from foresight._optional import require
from foresight.plot._history import Columns, _flat, columns
from foresight.results import CAUSAL_CONVERGED_KEYS, CAUSAL_RECORD_KEYS

__all__ = ["causal_plane", "layer_ei_training", "MEASURE_KEYS", "CONVERGED_KEYS"]

#: Measure name -> record key prefix: :data:`foresight.causal.RECORD_KEYS` (the same object).
MEASURE_KEYS = CAUSAL_RECORD_KEYS

#: Measure name -> the prefixes of the convergence flags its points depend on, from
#: :data:`foresight.causal.CONVERGED_KEYS` (degeneracy, which has no flag of its own: both
#: pairwise flags).
CONVERGED_KEYS = {
    **{measure: (key,) for measure, key in CAUSAL_CONVERGED_KEYS.items()},
    "degeneracy": (CAUSAL_CONVERGED_KEYS["ei_parts"], CAUSAL_CONVERGED_KEYS["sensitivity"]),
}

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")

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


def _records(history: Any) -> list[dict[str, Any]]:
    """The history as a list of records (for the boolean flags, which :func:`columns` drops)."""
    history = _flat(history)
    if hasattr(history, "to_dict") and hasattr(history, "columns"):  # pandas.DataFrame
        return history.to_dict("records")
    if isinstance(history, dict):
        keys = list(history)
        n = max((len(v) for v in history.values()), default=0)
        return [{k: history[k][i] for k in keys if i < len(history[k])} for i in range(n)]
    return list(history)


def _converged(records: list[dict[str, Any]], measure: str, layer: str) -> list[bool]:
    """Per record: False when a flag of ``measure`` for ``layer`` says not converged."""
    keys = [f"{k}/{layer}" for k in CONVERGED_KEYS[measure]]
    out = []
    for r in records:
        flags = [r.get(k) for k in keys]
        out.append(not any(f is not None and not _truth(f) for f in flags))
    return out


def _truth(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "1.0")
    try:
        return bool(value) and not (isinstance(value, float) and math.isnan(value))
    except (TypeError, ValueError):
        return True


def _finite_rows(cols: Columns, x: str, keys: Sequence[str], flags: list[bool]):
    """``(x, *values, converged)`` rows where every value is finite, in order of ``x``."""
    rows = [
        (t, *vals, ok) for t, *vals, ok in zip(cols[x], *(cols[k] for k in keys), flags)
        if all(math.isfinite(v) for v in (t, *vals))
    ]
    rows.sort(key=lambda r: r[0])
    return rows


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

    Sample-limited values (their convergence flag false) are drawn as hollow markers.

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
    records = _records(history)
    hollow_any = False
    for i, name in enumerate(names):
        key = f"{prefix}/{name}"
        rows = _finite_rows(cols, x, [key], _converged(records, measure, name))
        xs, ys = [r[0] for r in rows], [r[1] for r in rows]
        color = f"C{i % 10}"
        ax.plot(xs, ys, marker="o", ms=3.5, lw=1.5, color=color, label=f"layer {name}")
        bad = [(r[0], r[1]) for r in rows if not r[2]]
        if bad:
            hollow_any = True
            ax.plot([b[0] for b in bad], [b[1] for b in bad], "o", ms=6, mfc="white",
                    mec=color, mew=1.3, label="_nolegend_")
    if logx:
        ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel(x)
    ax.set_ylabel(_LABELS[measure])
    ax.set_title(title if title is not None else f"{_LABELS[measure][:-7]} of each layer")
    handles, labels = ax.get_legend_handles_labels()
    if hollow_any:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], ls="", marker="o", ms=6, mfc="white", mec="gray"))
        labels.append("not converged (sample-limited)")
    ax.legend(handles, labels, loc="best")
    return fig


def causal_plane(
    history: Any,
    *,
    x: str = "epoch",
    layers: Sequence[str] | None = None,
    ax: Any = None,
    title: str | None = "Causal plane",
    cmap: str = "viridis",
    colorbar: bool = True,
):
    """Each layer's path through the (sensitivity, degeneracy) plane as training goes on.

    Every point is coloured by ``x`` (training time, one colour scale for all layers, with a
    colour bar); each layer has its own marker and path colour, and its last point is labelled.
    Points whose sensitivity or EI_parts is sample-limited (convergence flag false) are hollow.
    The diagonal ``degeneracy = sensitivity`` (EI_parts = 0) is dotted: a layer's EI_parts is its
    horizontal distance to it.

    Args:
        history: the measurements (see the module docs).
        x: the column giving training time (orders and colours the points).
        layers: which layers (default: all in the history).
        ax: a matplotlib ``Axes`` to draw into (default: a new figure).
        title: the axes title (``None`` for none).
        cmap: the colour map of ``x``.
        colorbar: draw a colour bar for ``x``.

    Returns:
        The matplotlib ``Figure``.

    Example:
        >>> rows = [{"epoch": e, "sensitivity/0": 5.0 + e, "causal_degeneracy/0": 3.0 - e / 2}
        ...         for e in range(4)]
        >>> fig = causal_plane(rows)
        >>> fig.axes[0].get_xlabel(), fig.axes[1].get_ylabel()  # the plane and its colour bar
        ('sensitivity (bits)', 'epoch')
    """
    cols = columns(history)
    if x not in cols:
        raise ValueError(f"causal_plane: history has no {x!r} column (has {sorted(cols)})")
    names = _layers(cols, "sensitivity", layers)
    names = [n for n in names if f"causal_degeneracy/{n}" in cols]
    if not names:
        raise ValueError("causal_plane: history has no sensitivity/<layer> and "
                         "causal_degeneracy/<layer> columns")
    fig, ax = _axes(ax, (6.2, 5))
    mpl = require("matplotlib", "foresight.plot")
    from matplotlib.lines import Line2D

    records = _records(history)
    per_layer = {}
    for name in names:
        flags = _converged(records, "degeneracy", name)
        rows = _finite_rows(cols, x, [f"sensitivity/{name}", f"causal_degeneracy/{name}"],
                            flags)
        if rows:
            per_layer[name] = rows
    times = [r[0] for rows in per_layer.values() for r in rows]
    lo, hi = (min(times), max(times)) if times else (0.0, 1.0)
    if hi > lo and lo >= 0 and hi > 10 * max(lo, 1):  # log-spaced schedules: a symlog scale
        norm = mpl.colors.SymLogNorm(linthresh=1.0, vmin=lo, vmax=hi, base=10)
    else:
        norm = mpl.colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1)
    colormap = mpl.colormaps[cmap]
    layer_colors = mpl.colormaps["tab10"]
    handles, labels = [], []
    top, scatter, hollow_any = 0.0, None, False
    for i, (name, rows) in enumerate(per_layer.items()):
        s_vals, d_vals = [r[1] for r in rows], [r[2] for r in rows]
        color, marker = layer_colors(i % 10), _MARKERS[i % len(_MARKERS)]
        ax.plot(s_vals, d_vals, color=color, lw=1.1, alpha=0.7, zorder=1, label=f"layer {name}")
        good = [r for r in rows if r[3]]
        bad = [r for r in rows if not r[3]]
        if good:
            scatter = ax.scatter([r[1] for r in good], [r[2] for r in good],
                                 c=[r[0] for r in good], cmap=colormap, norm=norm, s=30,
                                 marker=marker, edgecolors=color, linewidths=0.6, zorder=2)
        if bad:
            hollow_any = True
            ax.scatter([r[1] for r in bad], [r[2] for r in bad], s=42, marker=marker,
                       facecolors="none", edgecolors=[colormap(norm(r[0])) for r in bad],
                       linewidths=1.4, zorder=2)
        ax.annotate(f"{name}", (s_vals[-1], d_vals[-1]), xytext=(5, 4),
                    textcoords="offset points", fontsize="small", color=color)
        handles.append(Line2D([], [], color=color, marker=marker, mfc="white", lw=1.1))
        labels.append(f"layer {name}")
        top = max(top, max(s_vals), max(d_vals))
    ax.plot([0, top], [0, top], ":", color="gray", lw=1, label="_nolegend_")
    ax.set_xlabel("sensitivity (bits)")
    ax.set_ylabel("degeneracy (bits)")
    if title:
        ax.set_title(title)
    if hollow_any:
        handles.append(Line2D([], [], ls="", marker="o", mfc="none", mec="gray", mew=1.4))
        labels.append("not converged")
    ax.legend(handles, labels, loc="best", fontsize="small")
    if colorbar:
        mappable = scatter or mpl.cm.ScalarMappable(norm=norm, cmap=colormap)
        bar = fig.colorbar(mappable, ax=ax, pad=0.02)
        bar.set_label(x)
    return fig
