r"""Fixed-range binning, exact hashing of joint states, and plug-in mutual information from counts.

Everything here works on integer *bin indices*. A value :math:`v` is put into bin

.. math::
    k(v) = \min\bigl(b - 1, \max\bigl(0, \lfloor b\,(v - \ell)/(u - \ell) \rfloor\bigr)\bigr)

of ``b`` equal bins over ``[l, u]``: values outside the range are **clipped into the edge bins**
(the one convention used by every measure of :mod:`foresight.causal`), and ``u`` itself falls
into the last bin.

The plug-in mutual information of two discrete variables observed ``N`` times, with joint counts
:math:`c_{xy}` and marginal counts :math:`c_x, c_y`, is (bits)

.. math::
    \hat I = \log_2 N - \frac{1}{N}\Bigl(\sum_x c_x\log_2 c_x + \sum_y c_y \log_2 c_y
    - \sum_{xy} c_{xy}\log_2 c_{xy}\Bigr).

>>> import torch
>>> x = torch.tensor([0, 0, 1, 1])
>>> plugin_mi(x, x), plugin_mi(x, torch.tensor([0, 1, 0, 1]))
(1.0, 0.0)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["bin_indices", "pack_rows", "joint_labels", "plugin_mi", "pairwise_mi", "PairCounts"]

#: Largest number of int64 elements one bincount call builds at a time (32 MiB).
CHUNK_ELEMENTS = 1 << 22


def bin_indices(values: Tensor, lo: float, hi: float, bins: int) -> Tensor:
    """Bin index (``int64``, in ``[0, bins)``) of every element, out-of-range values clipped."""
    scaled = (values.double() - lo) * (bins / (hi - lo))
    return scaled.floor_().clamp_(0, bins - 1).long()


def pack_rows(indices: Tensor, bins: int) -> Tensor:
    """Pack each row of bin indices (``[N, n]``, values in ``[0, bins)``) into 64-bit words.

    As many columns as fit go into one word (base ``bins``), giving ``[N, ceil(n / per_word)]``
    ``int64``: equal rows give equal words and different rows different words (no hashing
    collisions, no ``bins ** n`` table).
    """
    n_rows, n_cols = indices.shape
    per_word = max(1, int(62 // math.log2(bins)))
    words = []
    for start in range(0, max(n_cols, 1), per_word):
        word = torch.zeros(n_rows, dtype=torch.long, device=indices.device)
        for j in range(start, min(start + per_word, n_cols)):
            word.mul_(bins).add_(indices[:, j])
        words.append(word)
    return torch.stack(words, dim=1)


def joint_labels(packed: Tensor) -> Tensor:
    """Number the distinct rows of packed states (:func:`pack_rows`) ``0, 1, ...``."""
    if packed.shape[1] == 1:
        _, labels = torch.unique(packed[:, 0], return_inverse=True)
    else:
        _, labels = torch.unique(packed, dim=0, return_inverse=True)
    return labels


def _xlogx_sum(counts: Tensor, dims: tuple[int, ...]) -> Tensor:
    c = counts.double()
    return torch.xlogy(c, c).sum(dim=dims)


def _mi_bits(n: Tensor, joint: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    # (N ln N - S(rows) - S(cols) + S(joint)) / (N ln 2), S(c) = sum c ln c: exactly 0 when one
    # side is constant (its S equals N ln N, computed the same way)
    nats = (joint - rows) + (torch.xlogy(n, n) - cols)
    return (nats / (n * math.log(2.0))).clamp_(min=0.0)


def plugin_mi(a: Tensor, b: Tensor) -> float:
    """Plug-in mutual information (bits) of two label vectors of equal length."""
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"plugin_mi: need two 1-D label vectors of equal length, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    n = torch.tensor(float(a.numel()), dtype=torch.float64)
    _, a = torch.unique(a, return_inverse=True)
    _, b = torch.unique(b, return_inverse=True)
    nb = int(b.max()) + 1
    _, joint = torch.unique(a * nb + b, return_counts=True)
    mi = _mi_bits(n, _xlogx_sum(joint, (0,)), _xlogx_sum(torch.bincount(a), (0,)),
                  _xlogx_sum(torch.bincount(b), (0,)))
    return float(mi)


def pairwise_mi(counts: Tensor) -> Tensor:
    """Plug-in MI (bits) of each 2-D histogram in ``counts`` (``[..., b_x, b_y]``), float64."""
    n = counts.sum(dim=(-2, -1)).double()
    return _mi_bits(
        n,
        _xlogx_sum(counts, (-1,)).sum(dim=-1),  # row by row: bit-equal to the rows' sum when
        # each row has one non-empty cell, so a constant output gives exactly 0
        _xlogx_sum(counts.sum(dim=-1), (-1,)),
        _xlogx_sum(counts.sum(dim=-2), (-1,)),
    )


class PairCounts:
    """Accumulated 2-D histograms ``[n_in, n_out, bins, bins]`` of (input bin, output bin) pairs.

    :meth:`add` takes input indices ``[S, n_in]`` and output indices either ``[S, n_out]`` (one
    experiment in which all inputs vary: every pair sees the same samples) or ``[S, n_in, n_out]``
    (one experiment per input). All pairs are counted by one ``bincount`` over combined indices
    ``((A * n_out + B) * bins + x_A) * bins + y_B``, in chunks of samples.
    """

    def __init__(self, n_in: int, n_out: int, bins: int, device: torch.device | None = None):
        self.n_in, self.n_out, self.bins = n_in, n_out, bins
        size = n_in * n_out * bins * bins
        self.counts = torch.zeros(size, dtype=torch.long, device=device)
        pairs = torch.arange(n_in * n_out, device=device).view(n_in, n_out)
        self._base = pairs * (bins * bins)

    def add(self, x_idx: Tensor, y_idx: Tensor) -> None:
        """Count one batch of binned samples."""
        n = x_idx.shape[0]
        per_sample = self.n_in * self.n_out
        step = max(1, CHUNK_ELEMENTS // max(1, per_sample))
        b = self.bins
        for s in range(0, n, step):
            xs = x_idx[s : s + step]
            ys = y_idx[s : s + step]
            y_part = ys.unsqueeze(1) if ys.dim() == 2 else ys
            key = self._base + xs.unsqueeze(2) * b + y_part
            self.counts += torch.bincount(key.reshape(-1), minlength=self.counts.numel())

    def mi(self) -> Tensor:
        """Plug-in MI (bits) of every pair, ``[n_in, n_out]`` float64."""
        b = self.bins
        return pairwise_mi(self.counts.view(self.n_in, self.n_out, b, b))
