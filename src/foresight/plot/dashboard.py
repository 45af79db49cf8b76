"""One figure with a panel per measured quantity against epoch (or step), losses alongside.

The panels are found from the record keys a :class:`~foresight.Monitor` writes (see
:mod:`foresight.monitor.metrics`): whole-model values (``ei``, ``b_simple`` ...) and per-layer
families (``i_xt/<layer>`` ...) each get a panel; any other numeric column gets its own. The loss
columns are drawn, dashed, on a second y axis of every panel so each metric can be read against the
course of training; the planes (information, causal) share the last row and one epoch colour bar.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from foresight._optional import require
from foresight.plot._history import Columns, columns, series
from foresight.plot._style import (
    EPOCH_CMAP,
    UNRESOLVED_COLOR,
    epoch_norm,
    mark_unresolved,
    place_legend,
    split_resolved,
)
from foresight.plot.ei import EI_COLOR, LOSS_COLORS
from foresight.results import CAUSAL_RECORD_KEYS as _CAUSAL


@dataclass(frozen=True)
class Panel:
    """A dashboard panel: the columns it draws (exact keys or ``prefix/`` families).

    ``positive`` panels hold estimates that are meaningful only when > 0 (noise scales, squared
    norms): other values are drawn as unresolved marks, never as values.
    """

    title: str
    ylabel: str
    keys: tuple[str, ...] = ()
    prefix: str | None = None
    logy: bool = False
    positive: bool = False

    def select(self, cols: Columns) -> list[str]:
        if self.prefix is not None:
            return [k for k in cols if k.startswith(self.prefix)]
        return [k for k in self.keys if k in cols]


#: The panels for the library's metrics, in display order.
PANELS: tuple[Panel, ...] = (
    Panel("Effective information (weight graph)", "bits", keys=("ei",)),
    Panel("Determinism and degeneracy", "bits", keys=("determinism", "degeneracy")),
    Panel("EI per layer", "bits", prefix="ei/"),
    Panel("Gradient noise scale", "B_simple (examples)", keys=("b_simple",), logy=True,
          positive=True),
    Panel("Gradient noise scale per layer", "B_simple (examples)", prefix="b_simple/", logy=True,
          positive=True),
    Panel("|G|² and tr(Σ)", "squared norm", keys=("grad_sq_norm", "trace_sigma"), logy=True,
          positive=True),
    Panel("I(X;T) per layer", "bits", prefix="i_xt/"),
    Panel("I(T;Y) per layer", "bits", prefix="i_ty/"),
    Panel("Causal EI per layer", "bits", prefix=_CAUSAL["ei"] + "/"),
    Panel("EI_parts per layer", "bits", prefix=_CAUSAL["ei_parts"] + "/"),
    Panel("Sensitivity per layer", "bits", prefix=_CAUSAL["sensitivity"] + "/"),
    Panel("Causal degeneracy per layer", "bits", prefix=_CAUSAL["degeneracy"] + "/"),
)

#: Line styles of the loss curves: the default losses dashed, the ``losses_for`` ones dotted.
_LOSS_STYLES = ("--", ":")


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
    epoch_range: tuple[float, float] | None = None,
):
    """A grid of panels, one per measured quantity, against ``x``, with the losses alongside.

    Layout rules (each checked by the tests on the rendered figure): the loss curves are named
    once, in a legend at the top of the figure; a panel with several curves gets a legend where it
    covers none of them (else below the panel); tick labels do not overlap; the planes share one
    row and one epoch colour bar (:func:`foresight.plot._style.epoch_norm`, the scale of
    :func:`foresight.plot.ib.information_plane_plot`), so no column is narrower than the others;
    noise-scale estimates that are not > 0 (the unbiased :math:`|G|^2` below its noise) are drawn
    as grey marks on the panel floor, "unresolved", never as batch sizes.

    Args:
        history: ``monitor.history``, a list of records, a ``pandas.DataFrame`` or a dict of
            columns.
        x: the horizontal axis column (``"epoch"`` or ``"step"``).
        losses: loss columns drawn (dashed, right axis) in every panel; those missing are skipped.
        losses_for: other loss columns for the panels whose keys start with a given prefix, e.g.
            ``{"i_xt/": ("hidden_train_loss",)}`` when two networks share one history (dotted).
        exclude: columns not to draw as panels of their own.
        planes: also draw the information plane (I(X;T), I(T;Y)) and the causal plane
            (sensitivity, degeneracy) of each layer, points coloured by ``x``, when present.
        ncols: panels per row.
        logx: ``symlog`` x axis (linear below 1) to show early and late training together.
        title: the figure title.
        epoch_range: ``(first, last)`` of the planes' colour scale (default: the range of ``x``
            over the plane points), to match other figures.

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
    ncols = max(1, min(ncols, max(len(drawn), len(plane_specs))))
    metric_rows = math.ceil(len(drawn) / ncols)
    free = metric_rows * ncols - len(drawn)  # the planes share the last row when they fit there
    first_plane = len(drawn) if plane_specs and free >= len(plane_specs) else metric_rows * ncols
    nrows = math.ceil((first_plane + len(plane_specs)) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(5.2 * ncols, 3.4 * nrows + 0.8), layout="constrained",
        squeeze=False,
    )
    flat = list(axes.flat)
    metric_axes = flat[: len(drawn)]
    plane_axes = flat[first_plane:]
    for ax in flat[len(drawn): first_plane]:
        ax.set_visible(False)
    present = _presence(history, cols)
    legends: list[tuple[Any, list[Any]]] = []
    loss_handles: dict[str, Any] = {}
    for ax, (panel, keys) in zip(metric_axes, drawn):
        own = next((ks for p, ks in special.items() if keys and keys[0].startswith(p)), None)
        style = _LOSS_STYLES[1] if own is not None else _LOSS_STYLES[0]
        handles = _draw_panel(ax, cols, present, x, panel, keys, own or loss_keys, style, logx,
                              loss_handles)
        if len(handles) > 1:
            legends.append((ax, handles))
    if plane_specs:
        plane_x = [t for *_, pairs in plane_specs for _, kx, ky in pairs
                   for t, a, b in zip(cols[x], cols[kx], cols[ky])
                   if all(math.isfinite(v) for v in (t, a, b))]
        lo, hi = epoch_range if epoch_range is not None else (None, None)
        norm = epoch_norm(plane_x, vmin=lo, vmax=hi)
        scatter = None
        for ax, (ptitle, xlabel, ylabel, pairs) in zip(plane_axes, plane_specs):
            scatter, handles = _draw_plane(ax, cols, x, ptitle, xlabel, ylabel, pairs, norm)
            if len(handles) > 1:
                legends.append((ax, handles))
        for ax in plane_axes[len(plane_specs):]:
            ax.set_visible(False)
        if scatter is not None:
            shown = plane_axes[: len(plane_specs)]
            fig.colorbar(scatter, ax=shown, location="bottom", shrink=0.6, aspect=40,
                         pad=0.02, label=f"{x} (colour of the plane points)")
    if loss_handles:
        fig.legend(list(loss_handles.values()), list(loss_handles), loc="outside lower center",
                   ncols=min(4, len(loss_handles)), fontsize="small", frameon=False)
    if title:
        fig.suptitle(title)
    fig.canvas.draw()  # lay out, then put each legend where it covers no data
    for ax, handles in legends:
        place_legend(ax, handles, [h.get_label() for h in handles])
    return fig


def _presence(history: Any, cols: Columns) -> dict[str, list[bool]]:
    """Which entries were recorded (a record has the key), as opposed to never measured.

    Only a list of records tells the two apart; for frames and dicts of columns a NaN counts as
    not measured.
    """
    if isinstance(history, Sequence) and not isinstance(history, (str, bytes)) and all(
        isinstance(r, Mapping) for r in history
    ):
        return {k: [k in r and r[k] is not None for r in history] for k in cols}
    return {k: [not math.isnan(v) for v in vals] for k, vals in cols.items()}


def _draw_panel(ax, cols, present, x, panel, keys, loss_keys, loss_style, logx,
                loss_handles) -> list[Any]:
    handles = []
    unresolved: set[float] = set()
    any_resolved = False
    for i, key in enumerate(keys):
        label = key[len(panel.prefix):] if panel.prefix else key.replace("_", " ")
        color = EI_COLOR if key == "ei" else f"C{i}"
        if panel.positive:
            pts = [(t, v) for t, v, seen in zip(cols[x], cols[key], present[key])
                   if seen and math.isfinite(t)]
            xs, ys, bad = split_resolved([t for t, _ in pts], [v for _, v in pts])
            unresolved.update(bad)
            any_resolved |= any(math.isfinite(v) for v in ys)
            marker = "o" if sum(math.isfinite(v) for v in ys) < 3 else None
        else:
            xs, ys = series(cols, x, key)
            marker = "o" if len(xs) < 3 else None
        (line,) = ax.plot(xs, ys, lw=1.8, color=color, label=label, marker=marker, ms=3)
        handles.append(line)
    ax.set_title(panel.title, fontsize="medium")
    ax.set_xlabel(x)
    ax.set_ylabel(panel.ylabel)
    if panel.positive:
        if any_resolved and panel.logy:
            ax.set_yscale("log")
        elif not any_resolved and keys:
            ax.text(0.5, 0.5, "no resolved estimate", transform=ax.transAxes, ha="center",
                    va="center", color=UNRESOLVED_COLOR, fontsize="small")
            ax.set_yticks([])
        measured = [t for k in keys for t, seen in zip(cols[x], present[k]) if seen]
        mark = mark_unresolved(ax, sorted(unresolved), measured)
        if mark is not None:
            handles.append(mark)
    elif panel.logy:
        values = [v for k in keys for v in series(cols, x, k)[1]]
        if values and min(values) > 0:
            ax.set_yscale("log")
    if logx:
        ax.set_xscale("symlog", linthresh=1.0)
    if loss_keys:
        twin = ax.twinx()
        for key in loss_keys:
            lx, ly = series(cols, x, key)
            color = LOSS_COLORS.get(key.split("_", 1)[-1] if key not in LOSS_COLORS else key, "k")
            (line,) = twin.plot(lx, ly, lw=1.0, ls=loss_style, color=color,
                                label=key.replace("_", " "))
            loss_handles.setdefault(line.get_label(), line)
        twin.set_ylabel("loss", fontsize="small")
        twin.tick_params(labelsize="small")
    return handles


def _planes(cols: Columns) -> list[tuple[str, str, str, list[tuple[str, str, str]]]]:
    specs = []
    for title, xp, yp, xl, yl in (
        ("Information plane", "i_xt/", "i_ty/", "I(X;T) (bits)", "I(T;Y) (bits)"),
        ("Causal plane", _CAUSAL["sensitivity"] + "/", _CAUSAL["degeneracy"] + "/",
         "sensitivity (bits)", "degeneracy (bits)"),
    ):
        pairs = [
            (k[len(xp):], k, yp + k[len(xp):]) for k in cols
            if k.startswith(xp) and yp + k[len(xp):] in cols
        ]
        if pairs:
            specs.append((title, xl, yl, pairs))
    return specs


def _draw_plane(ax, cols, x, title, xlabel, ylabel, pairs, norm) -> tuple[Any, list[Any]]:
    markers = "osD^v<>ph*"  # the order of foresight.plot.ib.information_plane_plot
    scatter = None
    handles = []
    for i, (layer, kx, ky) in enumerate(pairs):
        pts = [
            (t, a, b) for t, a, b in zip(cols[x], cols[kx], cols[ky])
            if all(math.isfinite(v) for v in (t, a, b))
        ]
        if not pts:
            continue
        t, a, b = zip(*pts)
        ax.plot(a, b, color="0.8", lw=0.6, zorder=1)
        scatter = ax.scatter(a, b, c=t, cmap=EPOCH_CMAP, norm=norm, s=16,
                             marker=markers[i % len(markers)], edgecolors="none", label=layer,
                             zorder=2)
        handles.append(scatter)
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return scatter, handles
