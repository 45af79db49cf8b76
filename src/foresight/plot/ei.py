"""The seed's headline figure: effective information with train and test loss against epoch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from foresight._optional import require
from foresight.plot._history import columns, series

#: Colours shared by the EI figure and the dashboard.
EI_COLOR = "tab:blue"
LOSS_COLORS = {"train_loss": "tab:gray", "test_loss": "tab:red"}


def ei_training(
    history: Any,
    *,
    x: str = "epoch",
    ei: str = "ei",
    losses: Sequence[str] = ("train_loss", "test_loss"),
    ax: Any = None,
    logx: bool = False,
    title: str | None = "Effective information during training",
    legend_loc: str = "best",
):
    """EI (left axis, bits) and the losses (right axis) against ``x``.

    Args:
        history: ``monitor.history``, a list of records, a ``pandas.DataFrame`` or a dict of
            columns.
        x: the column on the horizontal axis (``"epoch"`` or ``"step"``).
        ei: the EI column.
        losses: loss columns drawn on a second y axis (those missing are skipped).
        ax: a matplotlib ``Axes`` to draw into (default: a new figure).
        logx: logarithmic x axis (``symlog``: linear between 0 and 1, so epoch 0 stays); shows
            the early and the late phases of training together.
        title: the axes title (``None`` for none).
        legend_loc: where the legend goes (a matplotlib ``loc``).

    Returns:
        The matplotlib ``Figure``.

    Example:
        >>> fig = ei_training([{"epoch": e, "ei": 1 + e / 10, "train_loss": 1 / (e + 1)}
        ...                    for e in range(5)])
        >>> [a.get_ylabel() for a in fig.axes]
        ['EI (bits)', 'loss']
    """
    plt = require("matplotlib.pyplot", "foresight.plot")
    cols = columns(history)
    for key in (x, ei):
        if key not in cols:
            raise ValueError(f"ei_training: history has no {key!r} column (has {sorted(cols)})")
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    else:
        fig = ax.figure
    xs, ys = series(cols, x, ei)
    ax.plot(xs, ys, color=EI_COLOR, lw=2, label="EI")
    ax.set_xlabel(x)
    ax.set_ylabel("EI (bits)", color=EI_COLOR)
    ax.tick_params(axis="y", colors=EI_COLOR)
    if logx:
        ax.set_xscale("symlog", linthresh=1.0)
    present = [k for k in losses if k in cols]
    if present:
        twin = ax.twinx()
        for key in present:
            lx, ly = series(cols, x, key)
            twin.plot(lx, ly, color=LOSS_COLORS.get(key), lw=1.2, ls="--", label=_label(key))
        twin.set_ylabel("loss")
        lines = ax.get_lines() + twin.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], loc=legend_loc, fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def _label(key: str) -> str:
    return key.replace("_", " ")
