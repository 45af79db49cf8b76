r"""Binning estimator: discretise float samples, then the plug-in estimate on the bin labels.

Three ways to choose the bins (one per call):

* ``bins=b`` (default 30): ``b`` equal-width bins spanning the data range :math:`[\min, \max]`
  of the whole tensor (all samples and units), :math:`k = \lfloor b (t - \min)/(\max - \min)
  \rfloor` clipped to ``b - 1``; a constant tensor falls into one bin;
* ``range=(lo, hi)`` with ``bins=b``: the same on a fixed interval, values outside clipped into the
  end bins (Shwartz-Ziv & Tishby 2017: 30 bins on :math:`[-1, 1]` for tanh units);
* ``bin_size=s``: :math:`k = \lfloor t / s \rfloor`, unbounded (Saxe et al. 2018: ``s = 0.07``,
  suitable for ReLU units).

Arithmetic is done in the tensor's own precision (at least float32), so a float32 value
that prints as ``-0.1`` is in bin ``-1`` for ``bin_size=0.1``. Each row of bin indices is one symbol
(:func:`foresight.ib.discrete.row_labels`).
"""

from __future__ import annotations

import math

import torch

from foresight.ib._samples import positive_float, positive_int

_MAX_INDEX = float(2**62)  # bin indices stay well inside int64


def check_range(range: object) -> tuple[float, float]:  # noqa: A002
    """``range`` as finite ``(lo, hi)`` with ``lo < hi``, or a :class:`ValueError` saying why.

    An infinite end would put every value into one bin and make every estimate 0 bits, a silent
    wrong number; it is refused.

    >>> check_range((-1, 1))
    (-1.0, 1.0)
    >>> check_range((0, float("inf")))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: range=(0, inf) must have finite ends...
    """
    try:
        lo, hi = (float(v) for v in range)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"range must be a pair (lo, hi) of numbers, got {range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(
            f"range={range!r} must have finite ends (not inf or NaN): with an infinite end every "
            "value falls into one bin and every estimate is 0 bits; give the interval the values "
            "lie in "
            "(e.g. range=(-1, 1) for tanh units) or use bin_size= for unbounded units (e.g. "
            "bin_size=0.07 for ReLU)"
        )
    if not lo < hi:
        raise ValueError(f"range=(lo, hi) needs lo < hi, got {range!r}")
    if not math.isfinite(hi - lo):
        raise ValueError(f"range={range!r} is wider than the largest float; narrow it")
    return lo, hi


def _check_span(lo: float, hi: float) -> None:
    if not math.isfinite(hi - lo):
        raise ValueError(
            f"the values span {lo:g} to {hi:g}, wider than the largest float: rescale them, or "
            "give range=(lo, hi) or bin_size="
        )


def _working(t: torch.Tensor) -> torch.Tensor:
    """Float tensors are binned in their own precision (at least float32), as numpy would."""
    return t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float32)


def bin_indices(
    t: torch.Tensor,
    bins: int | None = None,
    bin_size: float | None = None,
    range: tuple[float, float] | None = None,  # noqa: A002 - the papers' and numpy's name
    groups: list[int] | None = None,
) -> torch.Tensor:
    """Integer bin index of every entry of a float tensor (same shape, ``int64``).

    ``groups`` (widths of consecutive column groups of a 2-D ``t``) gives each group its own data
    range, as if each were binned on its own (used to bin all layers of a network at once).

    >>> bin_indices(torch.tensor([-1.0, -0.2, 0.3, 1.0]), bins=2, range=(-1.0, 1.0))
    tensor([0, 0, 1, 1])
    >>> bin_indices(torch.tensor([-0.1, 0.0, 0.15]), bin_size=0.1)
    tensor([-1,  0,  1])
    """
    tw = _working(t)
    if bin_size is not None:
        if bins is not None or range is not None:
            raise ValueError("pass either bin_size= or bins=/range=, not both")
        size = positive_float(bin_size, "bin_size")
        largest = float(tw.abs().max()) if tw.numel() else 0.0
        if largest / size >= _MAX_INDEX:
            raise ValueError(
                f"bin_size={bin_size!r} is too small for values as large as {largest:g}: the bin "
                "indices would overflow int64; use a larger bin_size (e.g. 0.07 for ReLU units)"
            )
        return torch.floor(tw / size).to(torch.int64)
    b = positive_int(30 if bins is None else bins, "bins")
    if range is not None:
        lo, hi = check_range(range)
        los, scales = [lo], [b / (hi - lo)]
    elif groups is None:
        los, his = [float(tw.min())], [float(tw.max())]
        _check_span(los[0], his[0])
        scales = [b / (h - lo) if h > lo else 0.0 for lo, h in zip(los, his)]
    else:
        col_lo, col_hi = tw.amin(dim=0).tolist(), tw.amax(dim=0).tolist()
        los, scales, start = [], [], 0
        for width in groups:
            lo, hi = min(col_lo[start : start + width]), max(col_hi[start : start + width])
            _check_span(lo, hi)
            los += [lo] * width
            scales += [b / (hi - lo) if hi > lo else 0.0] * width  # constant group: one bin
            start += width
    if max(los, default=0.0) - min(los, default=0.0) > torch.finfo(tw.dtype).max / 4 or any(
        abs(lo) > torch.finfo(tw.dtype).max / 4 for lo in los
    ):
        tw = tw.to(torch.float64)  # t - lo would overflow the tensor's own precision
    lo_t = torch.tensor(los, dtype=tw.dtype, device=tw.device)
    scale_t = torch.tensor(scales, dtype=tw.dtype, device=tw.device)
    if lo_t.numel() == 1:
        lo_t, scale_t = lo_t.reshape(()), scale_t.reshape(())
    scaled = torch.floor((tw - lo_t) * scale_t)
    return scaled.clamp_(0, b - 1).to(torch.int64)
