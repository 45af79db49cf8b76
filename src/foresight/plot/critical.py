"""Figures of the critical batch size (:mod:`foresight.gns.critical`).

* :func:`steps_vs_examples` -- the measured (examples, steps) of every batch size with the fitted
  front :math:`S = S_\\min(1 + B_\\text{crit}/B)`, :math:`E = E_\\min(1 + B/B_\\text{crit})`, its
  asymptotes and :math:`B_\\text{crit}` marked;
* :func:`noise_scale_and_b_crit` -- the tracked :math:`B_\\text{simple}` over training in each
  batch size's run, with the measured :math:`B_\\text{crit}` beside it (and the branched
  :math:`B_\\text{crit}(t)` when given);
* :func:`critical_batch_size_figure` -- both, side by side (``foresight batch-size`` writes it).

Unresolved noise-scale estimates are drawn as their lower bounds (triangles) or not at all; no
panel shows a negative batch size.
"""

from __future__ import annotations

import math
from typing import Any

from foresight._optional import require

__all__ = ["critical_batch_size_figure", "noise_scale_and_b_crit", "steps_vs_examples"]


def _plain_ticks(ax: Any) -> None:
    """Plain numbers (40, 60, 100) instead of powers of ten on log axes."""
    ticker = require("matplotlib.ticker", "foresight.plot.critical")
    fmt = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        lo, hi = sorted(axis.get_view_interval())
        subs = (1.0, 2.0, 5.0) if hi / max(lo, 1e-300) < 1e3 else (1.0,)
        axis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
        axis.set_major_formatter(fmt)
        axis.set_minor_formatter(ticker.NullFormatter())


def _new_ax(ax: Any, size: tuple[float, float]):
    plt = require("matplotlib.pyplot", "foresight.plot.critical")
    if ax is None:
        fig, ax = plt.subplots(figsize=size, layout="constrained")
        return fig, ax
    return ax.figure, ax


def steps_vs_examples(result: Any, ax: Any = None, *, title: str | None = None):
    """Steps against examples to the target loss, one point per batch size, with the fit.

    Args:
        result: a :class:`~foresight.gns.CriticalBatchSize`.
        ax: a matplotlib ``Axes`` (default: a new figure).
        title: the axes title (default: the target loss).

    Returns:
        The matplotlib ``Figure``.

    Example:
        >>> from foresight.gns.critical import CriticalBatchSize
        >>> runs = [dict(batch_size=b, steps=100 * (1 + 64 / b), examples=100 * (b + 64),
        ...              reached=True) for b in (8, 32, 128, 512)]
        >>> res = CriticalBatchSize(64.0, 100.0, 6400.0, (50.0, 80.0), 0.9, [0.0] * 4, runs,
        ...                         [], float("nan"), float("nan"), float("nan"), float("nan"),
        ...                         0.5)
        >>> fig = steps_vs_examples(res)
        >>> fig.axes[0].get_xlabel()
        'examples to the target'
    """
    fig, ax = _new_ax(ax, (6, 4.5))
    reached = [r for r in result.runs if r.get("reached")]
    missed = [r for r in result.runs if not r.get("reached")]
    xs = [r["examples"] for r in reached]
    ys = [r["steps"] for r in reached]
    ax.plot(xs, ys, "o", color="tab:blue", ms=6, label="measured (best learning rate)", zorder=3)
    for r in reached:
        ax.annotate(f"B={r['batch_size']}", (r["examples"], r["steps"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8, color="tab:blue")
    b_crit, s_min, e_min = result.b_crit, result.s_min, result.e_min
    if math.isfinite(b_crit) and s_min > 0 and e_min > 0 and reached:
        bs = [r["batch_size"] for r in reached]
        lo, hi = min(bs) / 4.0, max(bs) * 4.0
        grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
        ax.plot([e_min * (1 + b / b_crit) for b in grid], [s_min * (1 + b_crit / b) for b in grid],
                color="tab:orange", lw=2, label="fit: $(S/S_{min}-1)(E/E_{min}-1)=1$")
        ax.axhline(s_min, color="tab:gray", ls=":", lw=1)
        ax.axvline(e_min, color="tab:gray", ls=":", lw=1)
        ax.annotate(f"$S_{{min}}$ = {s_min:.4g}", (1.0, s_min), xycoords=("axes fraction", "data"),
                    xytext=(-4, 3), textcoords="offset points", ha="right", va="bottom",
                    fontsize=8, color="tab:gray")
        ax.annotate(f"$E_{{min}}$ = {e_min:.4g}", (e_min, 0.0), xycoords=("data", "axes fraction"),
                    xytext=(3, 4), textcoords="offset points", ha="left", va="bottom",
                    rotation=90, fontsize=8, color="tab:gray")
        lo_b, hi_b = result.interval
        text = f"$B_{{crit}}$ = {b_crit:.3g}"
        if math.isfinite(lo_b):
            hi_text = f"{hi_b:.3g}" if math.isfinite(hi_b) else "∞"
            text += f" ({result.confidence:.0%}: {lo_b:.3g}–{hi_text})"
        ax.plot([2 * e_min], [2 * s_min], "*", ms=16, color="tab:red", zorder=4, label=text)
    if missed:
        ax.plot([], [], ls="none",
                label=f"not reached: B = {', '.join(str(r['batch_size']) for r in missed)}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("examples to the target")
    ax.set_ylabel("steps to the target")
    ax.set_title(title if title is not None else f"Steps vs examples to loss "
                 f"{result.target_loss:.3g}")
    ax.legend(loc="upper right", fontsize=8)
    ax.autoscale_view()
    _plain_ticks(ax)
    return fig


def noise_scale_and_b_crit(result: Any, branched: Any = None, ax: Any = None, *,
                           title: str | None = "Noise scale over training and $B_{crit}$"):
    """The tracked :math:`B_\\text{simple}` against examples seen, one line per batch size's run
    (resolved values; unresolved ones as lower-bound triangles), the measured
    :math:`B_\\text{crit}` at the target as a horizontal line with its interval, and, when
    ``branched`` (a :class:`~foresight.gns.BranchedCriticalBatchSize`) is given, the branched
    :math:`B_\\text{crit}` at each checkpoint with the reference run's :math:`B_\\text{simple}`.

    Returns:
        The matplotlib ``Figure``.
    """
    fig, ax = _new_ax(ax, (6, 4.5))
    plt = require("matplotlib.pyplot", "foresight.plot.critical")
    sizes = sorted({h["batch_size"] for h in result.history})
    cmap = plt.get_cmap("viridis")
    drew_lower = False
    for i, b in enumerate(sizes):
        color = cmap(i / max(len(sizes) - 1, 1))
        rows = [h for h in result.history if h["batch_size"] == b]
        xs = [h["examples"] for h in rows]
        vals = [h["b_simple"] if h["b_simple"] > 0 else math.nan for h in rows]
        low = [h["b_simple_lower"] if not (h["b_simple"] > 0) and h["b_simple_lower"] > 0
               else math.nan for h in rows]
        ax.plot(xs, vals, color=color, lw=1.5, label=f"$B_{{simple}}$, run at B={b}")
        if any(math.isfinite(v) for v in low):
            ax.plot(xs, low, ls="none", marker="^", ms=3, color=color, alpha=0.4)
            drew_lower = True
    if drew_lower:
        ax.plot([], [], ls="none", marker="^", color="gray", label="unresolved: lower bound")
    if math.isfinite(result.b_crit):
        ax.axhline(result.b_crit, color="tab:red", lw=2,
                   label=f"$B_{{crit}}$ at loss {result.target_loss:.3g}: {result.b_crit:.3g}")
        lo, hi = result.interval
        if math.isfinite(lo):
            top = hi if math.isfinite(hi) else result.b_crit * 100
            ax.axhspan(max(lo, 1e-12), top, color="tab:red", alpha=0.12, lw=0)
    if branched is not None:
        # examples = 0 (a checkpoint at step 0) has no place on the log axis
        pts = [r for r in branched.checkpoints if math.isfinite(r["b_crit"]) and r["examples"] > 0]
        if pts:
            ax.plot([r["examples"] for r in pts], [r["b_crit"] for r in pts], "s", color="k",
                    ms=6, mfc="none", mew=1.5, label="$B_{crit}$, branched (Merrill et al.)")
            bound = [r for r in pts if r["bound"] == "lower"]
            if bound:
                ax.plot([r["examples"] for r in bound], [r["b_crit"] for r in bound], "^",
                        color="k", ms=7, label="branched: largest k accepted (lower bound)")
        ref = [r for r in branched.checkpoints if r["b_simple"] > 0 and r["examples"] > 0]
        if ref:
            ax.plot([r["examples"] for r in ref], [r["b_simple"] for r in ref], "D", color="k",
                    ms=4, label=f"$B_{{simple}}$, reference run (B={branched.batch_size})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("examples seen")
    ax.set_ylabel("batch size (examples)")
    if title:
        ax.set_title(title)
    ax.legend(loc="best", fontsize=7)
    ax.autoscale_view()
    _plain_ticks(ax)
    return fig


def critical_batch_size_figure(result: Any, branched: Any = None):
    """:func:`steps_vs_examples` and :func:`noise_scale_and_b_crit` side by side."""
    plt = require("matplotlib.pyplot", "foresight.plot.critical")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    steps_vs_examples(result, left)
    noise_scale_and_b_crit(result, branched, right)
    return fig
