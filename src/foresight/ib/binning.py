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

import torch

from foresight.ib._samples import positive_float, positive_int


def _working(t: torch.Tensor) -> torch.Tensor:
    """Float tensors are binned in their own precision (at least float32), as numpy would."""
    return t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float32)


def bin_indices(
    t: torch.Tensor,
    bins: int | None = None,
    bin_size: float | None = None,
    range: tuple[float, float] | None = None,  # noqa: A002 - the papers' and numpy's name
) -> torch.Tensor:
    """Integer bin index of every entry of a float tensor (same shape, ``int64``).

    >>> bin_indices(torch.tensor([-1.0, -0.2, 0.3, 1.0]), bins=2, range=(-1.0, 1.0))
    tensor([0, 0, 1, 1])
    >>> bin_indices(torch.tensor([-0.1, 0.0, 0.15]), bin_size=0.1)
    tensor([-1,  0,  1])
    """
    if bin_size is not None:
        if bins is not None or range is not None:
            raise ValueError("pass either bin_size= or bins=/range=, not both")
        size = positive_float(bin_size, "bin_size")
        return torch.floor(_working(t) / size).to(torch.int64)
    b = positive_int(30 if bins is None else bins, "bins")
    t64 = _working(t)
    if range is not None:
        try:
            lo, hi = (float(v) for v in range)
        except (TypeError, ValueError):
            raise ValueError(f"range must be a pair (lo, hi) of numbers, got {range!r}") from None
        if not lo < hi:
            raise ValueError(f"range=(lo, hi) needs lo < hi, got {range!r}")
    else:
        lo, hi = float(t64.min()), float(t64.max())
        if lo == hi:
            return torch.zeros(t.shape, dtype=torch.int64, device=t.device)
    scaled = torch.floor((t64 - lo) * (b / (hi - lo)))
    return scaled.clamp_(0, b - 1).to(torch.int64)
