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
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "bin_indices", "pack_rows", "joint_labels", "plugin_mi", "joint_mi", "JointStats",
    "pairwise_mi", "PairCounts",
]

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


@dataclass(frozen=True)
class JointStats:
    """Plug-in MI of two dense label vectors and the counts that say how well it is sampled."""

    mi: float  #: plug-in MI (bits)
    samples: int  #: N
    states_x: int  #: distinct values of the first labels (joint input states)
    states_y: int  #: distinct values of the second labels (joint output states)
    states_xy: int  #: distinct pairs
    singletons_x: int  #: first-label values seen exactly once
    entropy_y: float  #: plug-in entropy of the second labels (bits)

    @property
    def miller_madow(self) -> float:
        r"""First-order plug-in bias (bits): :math:`(K_{xy} - K_x - K_y + 1)/(2N\ln 2)`."""
        k = self.states_xy - self.states_x - self.states_y + 1
        return k / (2.0 * self.samples * math.log(2.0))


def joint_mi(a: Tensor, b: Tensor) -> JointStats:
    """:func:`plugin_mi` of dense labels (``0 .. K-1``, all used) with its :class:`JointStats`.

    >>> s = joint_mi(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 1]))
    >>> round(s.mi, 4), s.states_x, s.singletons_x, s.states_xy
    (0.8113, 3, 2, 3)
    """
    n = torch.tensor(float(a.numel()), dtype=torch.float64)
    nb = int(b.max()) + 1
    _, joint = torch.unique(a * nb + b, return_counts=True)
    count_a, count_b = torch.bincount(a), torch.bincount(b)
    mi = _mi_bits(n, _xlogx_sum(joint, (0,)), _xlogx_sum(count_a, (0,)),
                  _xlogx_sum(count_b, (0,)))
    p_b = count_b.double() / n
    h_b = float(-(torch.xlogy(p_b, p_b).sum()) / math.log(2.0))
    return JointStats(
        mi=float(mi), samples=int(a.numel()), states_x=int(count_a.numel()),
        states_y=int(count_b.numel()), states_xy=int(joint.numel()),
        singletons_x=int((count_a == 1).sum()), entropy_y=max(h_b, 0.0),
    )


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

    Counting is organised for the cache: the histograms of one input ``A`` (and a block of
    outputs) are contiguous, and all samples of a chunk go into them before the next block, so
    every increment hits a few hundred kilobytes of counts instead of all ``n_in * n_out * b^2``
    cells (4-5x faster than one scatter over all pairs at once on a CPU). :meth:`add` takes
    ``int32`` input indices ``[S, n_in]`` and output indices ``[S, n_out]`` (one experiment in which
    all inputs vary: every pair sees the same samples); :meth:`add_column` adds the outputs of the
    experiment in which only input ``A`` varies, ``[n_out, S]``. The counting runs in float32
    (the fast path of ``index_add_``), exact because it is moved into the ``int64`` total before
    any cell can pass :math:`2^{24}`.
    """

    _EXACT = 1 << 24  # float32 counts are exact integers up to here
    #: Count cells of one block (input A x a block of outputs), about 256 kB of float32.
    BLOCK_CELLS = 1 << 16
    #: Keys built at once (samples x outputs of a block).
    KEY_ELEMENTS = 1 << 17

    def __init__(self, n_in: int, n_out: int, bins: int, device: torch.device | None = None):
        self.n_in, self.n_out, self.bins = n_in, n_out, bins
        cells = n_in * n_out * bins * bins
        if cells >= 2**31:
            raise ValueError(f"{cells} histogram cells do not fit 32-bit indices")
        self.total = torch.zeros(cells, dtype=torch.long, device=device)
        self._recent = torch.zeros(cells, dtype=torch.float32, device=device)
        self._recent_samples = [0] * n_in  # samples counted since the last flush, per input
        b2 = bins * bins
        self.out_block = max(1, min(n_out, self.BLOCK_CELLS // b2))
        # int32 keys (cells < 2**31): half the memory traffic of int64
        self._out_offset = (torch.arange(n_out, dtype=torch.int32, device=device) * b2).view(-1, 1)
        self._ones = torch.ones(0, dtype=torch.float32, device=device)

    def chunk(self) -> int:
        """Samples per chunk of keys."""
        return max(1, self.KEY_ELEMENTS // self.out_block)

    def _ones_for(self, n: int) -> Tensor:
        if self._ones.numel() < n:
            self._ones = torch.ones(n, dtype=torch.float32, device=self.total.device)
        return self._ones[:n]

    def _count_column(self, a: int, x_scaled: Tensor, y_t: Tensor) -> None:
        """Count input ``a`` (bin times ``bins``, ``[S]``) against outputs ``y_t [n_out, S]``."""
        samples = x_scaled.shape[0]
        if self._recent_samples[a] + samples > self._EXACT:
            self._flush()
        b2 = self.bins * self.bins
        base = a * self.n_out * b2
        step = self.chunk()
        for o in range(0, self.n_out, self.out_block):
            rows = slice(o, o + self.out_block)
            region = self._recent[base + o * b2 : base + min(self.n_out, o + self.out_block) * b2]
            offsets = self._out_offset[: region.numel() // b2]
            for s in range(0, samples, step):
                key = (y_t[rows, s : s + step] + offsets).add_(x_scaled[s : s + step])
                region.index_add_(0, key.reshape(-1), self._ones_for(key.numel()))
        self._recent_samples[a] += samples

    def _flush(self) -> None:
        self.total += self._recent.long()
        self._recent.zero_()
        self._recent_samples = [0] * self.n_in

    def add(self, x_idx: Tensor, y_idx: Tensor) -> None:
        """Count one batch of the full intervention: ``x_idx [S, n_in]``, ``y_idx [S, n_out]``."""
        y_t = y_idx.t().contiguous()  # [n_out, S]
        x_t = (x_idx.t() * self.bins).contiguous()  # [n_in, S], bin * bins
        for a in range(self.n_in):
            self._count_column(a, x_t[a], y_t)

    def add_column(self, a: int, x_idx: Tensor, y_t: Tensor) -> None:
        """Count input ``a``'s own experiment: ``x_idx [S]`` its bins, ``y_t [n_out, S]``."""
        self._count_column(a, x_idx * self.bins, y_t)

    @property
    def counts(self) -> Tensor:
        """All counts so far, ``int64`` of length ``n_in * n_out * bins ** 2``."""
        self._flush()
        return self.total

    def table(self) -> Tensor:
        """The counts as ``[n_in, n_out, bins, bins]``."""
        b = self.bins
        return self.counts.view(self.n_in, self.n_out, b, b)

    def mi(self) -> Tensor:
        """Plug-in MI (bits) of every pair, ``[n_in, n_out]`` float64."""
        return pairwise_mi(self.table())

    def miller_madow(self) -> Tensor:
        r"""First-order plug-in bias of every pair (bits), ``[n_in, n_out]``:
        :math:`(K_{xy} - K_x - K_y + 1) / (2 N \ln 2)` with :math:`K` the occupied cells."""
        t = self.table()
        n = t.sum(dim=(-2, -1)).double().clamp(min=1)
        k_xy = (t > 0).sum(dim=(-2, -1))
        k_x = (t.sum(-1) > 0).sum(-1)
        k_y = (t.sum(-2) > 0).sum(-1)
        return (k_xy - k_x - k_y + 1).double() / (2.0 * n * math.log(2.0))
