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

#: (sample, pair) entries counted per chunk: small enough to stay in cache.
CHUNK_ELEMENTS = 1 << 19


def bin_indices(
    values: Tensor, lo: float, hi: float, bins: int, *, inplace: bool = False
) -> Tensor:
    """Bin index (``int32``, in ``[0, bins)``) of every element, out-of-range values clipped.

    Computed in the dtype of ``values`` (float32 layers bin in float32); ``inplace=True`` reuses
    ``values`` as scratch space.
    """
    scaled = values if inplace else values.clone()
    if lo != 0.0:  # (v - 0) == v: skip a pass over the data
        scaled.sub_(lo)
    scaled.mul_(bins / (hi - lo)).clamp_(0, bins - 1)
    return scaled.to(torch.int32)  # truncation == floor for non-negative values


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
    """Number the distinct rows of packed states (:func:`pack_rows`) ``0, 1, ...`` (``int64``).

    One 1-D :func:`torch.unique` per word: the labels so far times the number of distinct values
    of the next word, plus its label, stays below ``N ** 2``.
    """
    _, labels = torch.unique(packed[:, 0], return_inverse=True)
    for j in range(1, packed.shape[1]):
        uniq, nxt = torch.unique(packed[:, j], return_inverse=True)
        _, labels = torch.unique(labels * len(uniq) + nxt, return_inverse=True)
    return labels


def _xlogx_sum(counts: Tensor, dims: tuple[int, ...]) -> Tensor:
    c = counts.double()
    return torch.xlogy(c, c).sum(dim=dims)


def _mi_bits(n: Tensor, joint: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    # (N ln N - S(rows) - S(cols) + S(joint)) / (N ln 2), S(c) = sum c ln c: exactly 0 when one
    # side is constant (its S equals N ln N, computed the same way)
    nats = (joint - rows) + (torch.xlogy(n, n) - cols)
    return (nats / (n * math.log(2.0))).clamp_(min=0.0)


def plugin_mi(a: Tensor, b: Tensor, *, dense: bool = False) -> float:
    """Plug-in mutual information (bits) of two label vectors of equal length.

    ``dense=True`` promises labels ``0 .. K-1`` with every label used (as :func:`joint_labels`
    gives), skipping their renumbering.
    """
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"plugin_mi: need two 1-D label vectors of equal length, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    n = torch.tensor(float(a.numel()), dtype=torch.float64)
    if not dense:
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

    :meth:`add` takes ``int32`` input indices ``[S, n_in]`` and output indices either
    ``[S, n_out]`` (one experiment in which all inputs vary: every pair sees the same samples) or
    ``[S, n_in, n_out]`` (one experiment per input). All pairs are counted at once through the
    combined index ``((A * n_out + B) * bins + x_A) * bins + y_B``, in cache-sized chunks of
    samples, by ``index_add_`` into one count vector. The counting runs in float32 (the fast path
    of ``index_add_``), exact because it is moved into the ``int64`` total before any cell can
    pass :math:`2^{24}`.
    """

    _EXACT = 1 << 24  # float32 counts are exact integers up to here

    def __init__(self, n_in: int, n_out: int, bins: int, device: torch.device | None = None):
        self.n_in, self.n_out, self.bins = n_in, n_out, bins
        cells = n_in * n_out * bins * bins
        if cells >= 2**31:
            raise ValueError(f"{cells} histogram cells do not fit 32-bit indices")
        self.total = torch.zeros(cells, dtype=torch.long, device=device)
        self._recent = torch.zeros(cells, dtype=torch.float32, device=device)
        self._recent_samples = 0
        b2 = bins * bins
        # int32 throughout (cells < 2**31): half the memory traffic of int64 keys
        kw = {"dtype": torch.int32, "device": device}
        self._in_offset = torch.arange(n_in, **kw) * (n_out * b2)  # [n_in]
        self._out_offset = torch.arange(n_out, **kw) * b2  # [n_out]
        self._ones = torch.ones(0, dtype=torch.float32, device=device)
        self._keys = torch.empty((0, n_in, n_out), dtype=torch.int32, device=device)

    def chunk(self) -> int:
        """Samples per chunk (about :data:`CHUNK_ELEMENTS` pair entries)."""
        return max(1, CHUNK_ELEMENTS // (self.n_in * self.n_out))

    def _count(self, key: Tensor, samples: int) -> None:
        if self._recent_samples + samples > self._EXACT:
            self._flush()
        n = key.numel()
        if self._ones.numel() < n:
            self._ones = torch.ones(n, dtype=torch.float32, device=self.total.device)
        self._recent.index_add_(0, key.reshape(-1), self._ones[:n])
        self._recent_samples += samples

    def _flush(self) -> None:
        self.total += self._recent.long()
        self._recent.zero_()
        self._recent_samples = 0

    def add(self, x_idx: Tensor, y_idx: Tensor) -> None:
        """Count one batch of binned samples (``y_idx`` is not modified)."""
        step = self.chunk()
        for s in range(0, x_idx.shape[0], step):
            xa = (x_idx[s : s + step] * self.bins).add_(self._in_offset)  # [S, n_in] int32
            ys = y_idx[s : s + step]
            key = self._key_buffer(ys.shape[0])
            if ys.dim() == 2:
                torch.add(xa.unsqueeze(2), (ys + self._out_offset).unsqueeze(1), out=key)
            else:
                torch.add(xa.unsqueeze(2), self._out_offset, out=key).add_(ys)
            self._count(key, ys.shape[0])

    def _key_buffer(self, rows: int) -> Tensor:
        if self._keys.shape[0] < rows:
            self._keys = torch.empty((rows, self.n_in, self.n_out), dtype=torch.int32,
                                     device=self.total.device)
        return self._keys[:rows]

    @property
    def counts(self) -> Tensor:
        """All counts so far, ``int64`` of length ``n_in * n_out * bins ** 2``."""
        self._flush()
        return self.total

    def mi(self) -> Tensor:
        """Plug-in MI (bits) of every pair, ``[n_in, n_out]`` float64."""
        b = self.bins
        return pairwise_mi(self.counts.view(self.n_in, self.n_out, b, b))
