"""One figure with a panel per measured quantity against epoch (or step), losses alongside.

The panels are found from the record keys a :class:`~foresight.Monitor` writes (see
:mod:`foresight.monitor.metrics`): whole-model values (``ei``, ``b_simple`` ...) and per-layer
families (``i_xt/<layer>`` ...) each get a panel; any other numeric column gets its own. The loss
columns are drawn, dashed, on a second y axis of every panel so each metric can be read against the
course of training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from foresight._optional import require
from foresight.plot._history import Columns, columns, series
from foresight.plot.ei import EI_COLOR, LOSS_COLORS


@dataclass(frozen=True)
class Panel:
    """A dashboard panel: the columns it draws (exact keys or ``prefix/`` families)."""

    title: str
    ylabel: str
    keys: tuple[str, ...] = ()
    prefix: str | None = None
    logy: bool = False

    def select(self, cols: Columns) -> list[str]:
        if self.prefix is not None:
            return [k for k in cols if k.startswith(self.prefix)]
        return [k for k in self.keys if k in cols]


#: The panels for the library's metrics, in display order.
PANELS: tuple[Panel, ...] = (
    Panel("Effective information (weight graph)", "bits", keys=("ei",)),
    Panel("Determinism and degeneracy", "bits", keys=("determinism", "degeneracy")),
    Panel("EI per layer", "bits", prefix="ei/"),
    Panel("Gradient noise scale", "B_simple (examples)", keys=("b_simple",), logy=True),
    Panel("Gradient noise scale per layer", "B_simple (examples)", prefix="b_simple/", logy=True),
    Panel("|G|² and tr(Σ)", "squared norm", keys=("grad_sq_norm", "trace_sigma"), logy=True),
    Panel("I(X;T) per layer", "bits", prefix="i_xt/"),
    Panel("I(T;Y) per layer", "bits", prefix="i_ty/"),
    Panel("Causal EI per layer", "bits", prefix="causal_ei/"),
    Panel("EI_parts per layer", "bits", prefix="ei_parts/"),
    Panel("Sensitivity per layer", "bits", prefix="sensitivity/"),
    Panel("Causal degeneracy per layer", "bits", prefix="causal_degeneracy/"),
)


def training_dashboard(
    history: Any,
    *,
    x: str = "epoch",
    losses: Sequence[str] = ("train_loss", "test_loss"),
    losses_for: Mapping[str, Sequence[str]] | None = None,
    exclude: Sequence[str] = (),
    planes: bool = True,
    ncols: int = 2,
    logx: bool = False,
    title: str | None = None,
):
    """A grid of panels, one per measured quantity, against ``x``, with the losses alongside.

    Args:
        history: ``monitor.history``, a list of records, a ``pandas.DataFrame`` or a dict of
            columns.
        x: the horizontal axis column (``"epoch"`` or ``"step"``).
        losses: loss columns drawn (dashed, right axis) in every panel; those missing are skipped.
        losses_for: other loss columns for the panels whose keys start with a given prefix, e.g.
            ``{"i_xt/": ("hidden_train_loss",)}`` when two networks share one history.
        exclude: columns not to draw as panels of their own.
        planes: also draw the information plane (I(X;T), I(T;Y)) and the causal plane
            (sensitivity, degeneracy) of each layer, points coloured by ``x``, when present.
        ncols: panels per row.
        logx: ``symlog`` x axis (linear below 1) to show early and late training together.
        title: the figure title.

    Returns:
        The matplotlib ``Figure``.

    Example:
        >>> records = [{"epoch": e, "ei": 1.0 + e, "b_simple": 10.0 * (e + 1), "train_loss": 1.0}
        ...            for e in range(4)]
        >>> fig = training_dashboard(records)
        >>> [a.get_title() for a in fig.axes if a.get_title()]
        ['Effective information (weight graph)', 'Gradient noise scale']
    """
    plt = require("matplotlib.pyplot", "foresight.plot")
    cols = columns(history)
    if x not in cols:
        raise ValueError(f"training_dashboard: history has no {x!r} column (has {sorted(cols)})")
    loss_keys = [k for k in losses if k in cols]
    special = {p: [k for k in ks if k in cols] for p, ks in (losses_for or {}).items()}
    drawn: list[tuple[Panel, list[str]]] = []
    used = {x, "step", "epoch", *loss_keys, *exclude, *(k for ks in special.values() for k in ks)}
    for panel in PANELS:
        keys = panel.select(cols)
        if keys:
            drawn.append((panel, keys))
            used.update(keys)
    for key in cols:
        if key not in used:
            drawn.append((Panel(key, key, keys=(key,)), [key]))
    plane_specs = _planes(cols) if planes else []
    if not drawn and not loss_keys:
        raise ValueError("training_dashboard: nothing to draw (no numeric column besides x)")
    if not drawn:
        drawn.append((Panel("Loss", "loss"), []))
    n = len(drawn) + len(plane_specs)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(5.2 * ncols, 3.3 * nrows), layout="constrained", squeeze=False
    )
    flat = list(axes.flat)
    for ax, (panel, keys) in zip(flat, drawn):
        own = next((ks for p, ks in special.items() if keys and keys[0].startswith(p)), loss_keys)
        _draw_panel(ax, cols, x, panel, keys, own, logx)
    for ax, (ptitle, xlabel, ylabel, pairs) in zip(flat[len(drawn):], plane_specs):
        _draw_plane(fig, ax, cols, x, ptitle, xlabel, ylabel, pairs)
    for ax in flat[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def _draw_panel(ax, cols, x, panel, keys, loss_keys, logx) -> None:
    for i, key in enumerate(keys):
        xs, ys = series(cols, x, key)
        label = key[len(panel.prefix):] if panel.prefix else key.replace("_", " ")
        color = EI_COLOR if key == "ei" else f"C{i}"
        ax.plot(xs, ys, lw=1.8, color=color, label=label)
    ax.set_title(panel.title, fontsize="medium")
    ax.set_xlabel(x)
    ax.set_ylabel(panel.ylabel)
    if panel.logy:
        values = [abs(v) for k in keys for v in series(cols, x, k)[1]]
        if values and min(values) > 0 and all(v > 0 for k in keys for v in series(cols, x, k)[1]):
            ax.set_yscale("log")
        elif values and max(values) > 0:  # unbiased estimates can be negative: symmetric log
            positive = sorted(v for v in values if v > 0)
            ax.set_yscale("symlog", linthresh=positive[len(positive) // 10])
    if logx:
        ax.set_xscale("symlog", linthresh=1.0)
    handles = list(ax.get_lines())
    if loss_keys:
        twin = ax.twinx()
        for key in loss_keys:
            lx, ly = series(cols, x, key)
            color = LOSS_COLORS.get(key.split("_", 1)[-1] if key not in LOSS_COLORS else key, "k")
            twin.plot(lx, ly, lw=1.0, ls="--", color=color,
                      label=key.replace("_", " "))
        twin.set_ylabel("loss", fontsize="small")
        twin.tick_params(labelsize="small")
        handles += list(twin.get_lines())
    if len(handles) > 1:
        ax.legend(handles, [h.get_label() for h in handles], fontsize="x-small", loc="best")


def _planes(cols: Columns) -> list[tuple[str, str, str, list[tuple[str, str, str]]]]:
    specs = []
    for title, xp, yp, xl, yl in (
        ("Information plane", "i_xt/", "i_ty/", "I(X;T) (bits)", "I(T;Y) (bits)"),
        ("Causal plane", "sensitivity/", "causal_degeneracy/", "sensitivity (bits)",
         "degeneracy (bits)"),
    ):
        pairs = [
            (k[len(xp):], k, yp + k[len(xp):]) for k in cols
            if k.startswith(xp) and yp + k[len(xp):] in cols
        ]
        if pairs:
            specs.append((title, xl, yl, pairs))
    return specs


def _draw_plane(fig, ax, cols, x, title, xlabel, ylabel, pairs) -> None:
    markers = "os^Dv<>ph*"
    scatter = None
    for i, (layer, kx, ky) in enumerate(pairs):
        pts = [
            (t, a, b) for t, a, b in zip(cols[x], cols[kx], cols[ky])
            if all(math.isfinite(v) for v in (t, a, b))
        ]
        if not pts:
            continue
        t, a, b = zip(*pts)
        ax.plot(a, b, color="0.8", lw=0.6, zorder=1)
        scatter = ax.scatter(a, b, c=t, cmap="viridis", s=14, marker=markers[i % len(markers)],
                             label=layer, zorder=2)
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if scatter is not None:
        fig.colorbar(scatter, ax=ax, label=x)
        ax.legend(fontsize="x-small", loc="best")
