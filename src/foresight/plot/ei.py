"""The seed's headline figure: accuracy, train/test loss and effective information against steps."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from foresight._optional import require
from foresight.plot._history import Columns, columns, series

#: Colours shared by the EI figure and the dashboard.
EI_COLOR = "tab:blue"
LOSS_COLORS = {"train_loss": "tab:gray", "test_loss": "tab:red"}
_SPLIT_COLORS = {"train": "tab:gray", "test": "tab:red"}
_MINIMUM_STYLE = {"color": "tab:red", "ls": ":", "lw": 1.2}
_PHASE_COLOR = "mistyrose"


def ei_training(
    history: Any,
    *,
    x: str | None = None,
    ei: str = "ei",
    losses: Sequence[str] = ("train_loss", "test_loss"),
    accuracies: Sequence[str] = ("train_accuracy", "test_accuracy"),
    phases: Mapping[str, Any] | None = None,
    zoom: float | None = None,
    ax: Any = None,
    logx: bool = False,
    title: str | None = "Effective information during training",
    legend_loc: str | None = None,
):
    """Accuracy, losses and EI against ``x`` in stacked panels, the test-loss minimum marked.

    Every measurement is drawn as a marker (joined by a thin line), so the spacing of the
    measurements is visible. A dotted vertical line marks the minimum of ``test_loss`` in every
    panel. The loss and accuracy panels' y axes are fitted to the part of training after ``zoom``
    (or after the first 2% of ``x``), where overfitting happens; the early fall of the loss is in
    the ``zoom`` column.

    Args:
        history: ``monitor.history``, a list of records, a ``pandas.DataFrame`` or a dict of
            columns.
        x: the column on the horizontal axis (default ``"step"`` when present, else
            ``"epoch"``).
        ei: the EI column.
        losses: loss columns, drawn in the loss panel (those missing are skipped; no panel when
            none is present). ``test_loss`` is the one whose minimum is marked.
        accuracies: accuracy columns, drawn in an accuracy panel (skipped when missing).
        phases: the turning points of the EI curve, as returned by :func:`foresight.demo.phases`:
            the first maximum and minimum are marked on the EI panel and the part after the
            test-loss minimum is shaded and labelled with EI's change and rank correlation there.
        zoom: also draw a narrow second column showing only ``x <= zoom`` (the early jump of EI,
            which a linear axis over the whole run compresses into its first pixels).
        ax: draw EI and the losses (second y axis) into this one matplotlib ``Axes`` instead
            of a new figure with panels.
        logx: ``symlog`` x axis (linear between 0 and 1, so step 0 stays).
        title: the figure title (``None`` for none).
        legend_loc: where the legend goes (a matplotlib ``loc``); by default above the top
            panel, off the curves.

    Returns:
        The matplotlib ``Figure``.

    Example:
        >>> rows = [{"step": 10 * s, "ei": 1 + s / 10, "train_loss": 1 / (s + 1),
        ...          "test_loss": 1 / (s + 1) + s / 50} for s in range(8)]
        >>> fig = ei_training(rows)
        >>> [a.get_ylabel() for a in fig.axes]
        ['loss', 'EI (bits)']
    """
    plt = require("matplotlib.pyplot", "foresight.plot")
    cols = columns(history)
    if x is None:
        x = "step" if "step" in cols else "epoch"
    for key in (x, ei):
        if key not in cols:
            raise ValueError(f"ei_training: history has no {key!r} column (has {sorted(cols)})")
    if zoom is not None and not (isinstance(zoom, (int, float)) and zoom > 0):
        raise ValueError(f"ei_training: zoom must be a positive number, got {zoom!r}")
    loss_keys = [k for k in losses if k in cols and series(cols, x, k)[0]]
    acc_keys = [k for k in accuracies if k in cols and series(cols, x, k)[0]]
    minimum = _minimum(cols, x, "test_loss") if "test_loss" in loss_keys else None
    if ax is not None:
        return _single(ax, cols, x, ei, loss_keys, minimum, logx, title, legend_loc)

    rows = [k for k, present in (("acc", acc_keys), ("loss", loss_keys), ("ei", True)) if present]
    ratios = {"acc": 1.0, "loss": 1.2, "ei": 1.6}
    ncols = 2 if zoom is not None else 1
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(9.5 if zoom is not None else 7.5, 2.3 + 2.0 * len(rows)),
        layout="constrained", squeeze=False, sharex="col",
        gridspec_kw={"height_ratios": [ratios[r] for r in rows],
                     **({"width_ratios": [3.2, 1]} if zoom is not None else {})},
    )
    xs_all = [v for v in cols[x] if math.isfinite(v)]
    late_from = zoom if zoom is not None else min(xs_all) + 0.02 * (max(xs_all) - min(xs_all))
    for r, kind in enumerate(rows):
        for c in range(ncols):
            a = axes[r][c]
            upto = zoom if c == 1 else None
            if kind == "acc":
                _curves(a, cols, x, acc_keys, upto)
                a.set_ylabel("accuracy")
            elif kind == "loss":
                _curves(a, cols, x, loss_keys, upto)
                a.set_ylabel("loss")
            else:
                xs, ys = _upto(*series(cols, x, ei), upto)
                a.plot(xs, ys, "-o", color=EI_COLOR, lw=1.0, ms=2.2, label="EI")
                a.set_ylabel("EI (bits)")
            if c == 0 and kind != "ei":
                _fit_late(a, cols, x, acc_keys if kind == "acc" else loss_keys, late_from)
            if minimum is not None and (upto is None or minimum[0] <= upto):
                a.axvline(minimum[0], **_MINIMUM_STYLE, label="test-loss minimum")
            if logx and c == 0:
                a.set_xscale("symlog", linthresh=1.0)
            a.grid(alpha=0.25)
    axes[-1][0].set_xlabel(x)
    if ncols == 2:
        axes[-1][1].set_xlabel(x)
        axes[0][1].set_title(f"the first {_int(zoom)} {x}s", fontsize="medium")
    if minimum is not None and "loss" in rows:
        la = axes[rows.index("loss")][0]
        la.plot([minimum[0]], [minimum[1]], "*", color="tab:red", ms=11, zorder=5)
        la.annotate(f"test-loss minimum\n{x} {_int(minimum[0])}: {minimum[1]:.4g}",
                    (minimum[0], minimum[1]), xytext=(8, -28), textcoords="offset points",
                    fontsize="small", color="tab:red")
    ei_axes = axes[rows.index("ei")]
    if phases:
        _annotate_phases(ei_axes, phases, x, zoom, minimum)
    top = axes[0][0]
    handles, labels = [], []
    for a in axes[:, 0]:
        for h, lab in zip(*a.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if legend_loc is None:
        top.legend(handles, labels, loc="lower left", bbox_to_anchor=(0, 1.02), ncol=len(labels),
                   fontsize="small", frameon=False, borderaxespad=0)
    else:
        top.legend(handles, labels, loc=legend_loc, fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def _single(ax, cols, x, ei, loss_keys, minimum, logx, title, legend_loc):
    """EI and the losses (second y axis) in one given ``Axes``."""
    fig = ax.figure
    xs, ys = series(cols, x, ei)
    ax.plot(xs, ys, "-o", color=EI_COLOR, lw=1.2, ms=2.2, label="EI")
    ax.set_xlabel(x)
    ax.set_ylabel("EI (bits)", color=EI_COLOR)
    ax.tick_params(axis="y", colors=EI_COLOR)
    if logx:
        ax.set_xscale("symlog", linthresh=1.0)
    if minimum is not None:
        ax.axvline(minimum[0], **_MINIMUM_STYLE, label="test-loss minimum")
    handles = list(ax.get_lines())
    if loss_keys:
        twin = ax.twinx()
        for key in loss_keys:
            lx, ly = series(cols, x, key)
            twin.plot(lx, ly, "--", color=LOSS_COLORS.get(key), lw=1.0, label=_label(key))
        twin.set_ylabel("loss")
        handles += list(twin.get_lines())
    if len(handles) > 1:
        if legend_loc is None:
            ax.legend(handles, [h.get_label() for h in handles], loc="lower left",
                      bbox_to_anchor=(0, 1.02), ncol=len(handles), fontsize="small",
                      frameon=False, borderaxespad=0)
        else:
            ax.legend(handles, [h.get_label() for h in handles], loc=legend_loc,
                      fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def _upto(xs: list[float], ys: list[float], upto: float | None) -> tuple[list, list]:
    if upto is None:
        return xs, ys
    keep = [(a, b) for a, b in zip(xs, ys) if a <= upto]
    return [a for a, _ in keep], [b for _, b in keep]


def _curves(ax, cols: Columns, x: str, keys: Sequence[str], upto: float | None) -> None:
    for key in keys:
        xs, ys = _upto(*series(cols, x, key), upto)
        split = key.split("_", 1)[0]
        ax.plot(xs, ys, "-o", lw=1.0, ms=2.0, color=_SPLIT_COLORS.get(split),
                label=split if split in _SPLIT_COLORS else _label(key))


def _fit_late(ax, cols: Columns, x: str, keys: Sequence[str], start: float) -> None:
    """Fit the y axis to the values at ``x >= start`` (the early transient runs off the top)."""
    values = [v for k in keys for t, v in zip(*series(cols, x, k)) if t >= start]
    if not values:
        return
    lo, hi = min(values), max(values)
    pad = 0.08 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-12)
    ax.set_ylim(lo - pad, hi + pad)


def _minimum(cols: Columns, x: str, key: str) -> tuple[float, float] | None:
    xs, ys = series(cols, x, key)
    if not xs:
        return None
    i = min(range(len(ys)), key=ys.__getitem__)
    return xs[i], ys[i]


def _annotate_phases(ei_axes, phases: Mapping[str, Any], x: str, zoom, minimum) -> None:
    main = ei_axes[0]
    early = ei_axes[1] if len(ei_axes) > 1 else main
    for key, label, marker in (("ei_first_max", "1 jump", "^"), ("ei_first_min", "2 decay", "v")):
        point = phases.get(key)
        if not point:
            continue
        where = early if zoom is not None and point["step"] <= zoom else main
        where.plot([point["step"]], [point["ei"]], marker, color="black", ms=7, zorder=5)
        where.annotate(f"{label} ({x} {_int(point['step'])})", (point["step"], point["ei"]),
                       xytext=(9, 0), textcoords="offset points", fontsize="small",
                       va="center")
    after = phases.get("after_min") or {}
    best = (phases.get("test_loss_min") or {}).get("step")
    if best is None or not after:
        return
    end = main.get_xlim()[1]
    main.axvspan(best, end, color=_PHASE_COLOR, alpha=0.6, zorder=0, lw=0,
                 label="after the test-loss minimum")
    main.set_xlim(right=end)
    change = after.get("ei_change", math.nan)
    rho = after.get("ei_spearman", math.nan)
    verdict = "3 EI climbs" if phases.get("phase3") else "3 no EI climb"
    text = (f"{verdict} while the test loss rises\n"
            f"after the test-loss minimum: EI {change:+.4f} bits, rank corr. {rho:.2f},\n"
            f"slope {after.get('ei_slope_per_10k', math.nan):+.4f} bits per 10k {x}s")
    before = (phases.get("before_min") or {}).get("ei_slope_per_10k")
    if before is not None and math.isfinite(before):
        text += f"\n(from {x} {_int(best / 2)} to the minimum: {before:+.4f})"
    # the label goes where the curve is not: below it if EI ends high, above it if low
    ys = [ln.get_ydata() for ln in main.get_lines() if ln.get_label() == "EI"]
    lo, hi = main.get_ylim()
    tail = [float(v) for v in ys[0][len(ys[0]) * 2 // 3:]] if ys else []
    high = bool(tail) and (sum(tail) / len(tail) - lo) > 0.5 * (hi - lo)
    main.text(0.98, 0.04 if high else 0.96, text, transform=main.transAxes, ha="right",
              va="bottom" if high else "top", fontsize="small",
              bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})


def _int(v: float) -> str:
    return f"{int(v):,}" if float(v).is_integer() else f"{v:g}"


def _label(key: str) -> str:
    return key.replace("_", " ")
