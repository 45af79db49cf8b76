r"""Kraskov-Stögbauer-Grassberger (KSG) estimator of mutual information, algorithm 1.

For samples :math:`z_i = (x_i, y_i)`, ``i = 1..N``, let :math:`\varepsilon_i` be the max-norm
distance from :math:`z_i` to its ``k``-th nearest neighbour in the joint space
(:math:`\lVert z - z'\rVert = \max(\lVert x - x'\rVert_\infty, \lVert y - y'\rVert_\infty)`), and
:math:`n_x(i)`, :math:`n_y(i)` the numbers of other samples strictly closer than
:math:`\varepsilon_i` in the marginal spaces. Then (nats)

.. math::

   \hat I(X;Y) = \psi(k) + \psi(N)
       - \frac1N \sum_i \big[\psi(n_x(i)+1) + \psi(n_y(i)+1)\big].

Good in low dimension, biased towards 0 in high dimension; can be slightly negative for
independent variables. Ties (repeated values) break its assumptions: add tiny noise to discrete
data first.

Two exact implementations (the same counts, so the same estimate to rounding of the final mean):

* ``algorithm="tree"`` (CPU tensors, needs scipy): the ``k``-th neighbour distances from a
  :class:`scipy.spatial.cKDTree` of the joint samples; marginal counts in one dimension from a
  sorted array (two binary searches per sample, the few samples within a rounding error of
  :math:`\varepsilon_i` checked exactly), in two dimensions by orthogonal range counting (a
  merge sort tree over one coordinate's order, :math:`O(N \log^2 N)` however many neighbours
  there are), in more from a tree of the marginal (``query_ball_point`` with radius just below
  :math:`\varepsilon_i`).
* ``algorithm="brute"``: all pairwise max-norm distances, chunked over rows, on the tensors'
  device (GPU tensors use this). Time :math:`O(N^2 (d_x + d_y))`, memory
  :math:`O(\text{rows} \cdot N)`.

``"auto"`` (the default) takes the tree for CPU tensors when scipy is installed, else brute force.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from foresight._optional import available, require
from foresight._progress import bar as progress_bar
from foresight.ib._samples import chunk_rows

ALGORITHMS = ("auto", "tree", "brute")


def _maxnorm_block(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``out[i, j] = max_c |a[i, c] - b[j, c]|`` for ``a [M, d]``, ``b [N, d]`` (exact)."""
    return torch.cdist(a, b, p=float("inf"))


def _brute_counts(x: torch.Tensor, y: torch.Tensor, k: int, chunk_size: int | None,
                  progress: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0]
    rows = chunk_rows(n, 3 * n, chunk_size)
    nx = torch.empty(n, dtype=torch.float64, device=x.device)
    ny = torch.empty(n, dtype=torch.float64, device=x.device)
    bar = progress_bar(n, desc="ksg", enabled=progress, unit="sample")
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        r = torch.arange(stop - start, device=x.device)
        self_cols = r + start
        dx = _maxnorm_block(x[start:stop], x)
        dy = _maxnorm_block(y[start:stop], y)
        dx[r, self_cols] = math.inf
        dy[r, self_cols] = math.inf
        dz = torch.maximum(dx, dy)
        eps = dz.topk(k, dim=1, largest=False).values[:, -1:]
        nx[start:stop] = (dx < eps).sum(dim=1)
        ny[start:stop] = (dy < eps).sum(dim=1)
        bar.update(stop - start)
    bar.close()
    return nx, ny


def _ranges(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat ``(owner, index)`` of every index in the half-open ranges ``[starts, stops)``."""
    lengths = np.maximum(stops - starts, 0)
    owner = np.repeat(np.arange(len(starts)), lengths)
    offset = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, np.repeat(starts, lengths) + offset


def _near_ranges(x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted order of ``x`` and, for each ``i``, the index range ``[lo, hi)`` in it of the
    samples with ``|x_j - x_i| < eps_i`` (exact: contiguous, since ``|x_j - x_i|`` computed in
    floating point is monotone in ``x_j`` on each side of ``x_i``).

    Binary searches with a small margin find the samples surely inside and the few within a
    rounding error of the boundary, which are compared exactly.
    """
    order = np.argsort(x, kind="stable")
    xs = x[order]
    n = len(x)
    margin = 4.0 * np.finfo(np.float64).eps * (np.abs(x) + eps) + np.finfo(np.float64).tiny

    def search(keys: np.ndarray, side: str) -> np.ndarray:
        out = np.empty(n, dtype=np.int64)  # keys in the sorted order: nearly sorted, fast
        out[order] = np.searchsorted(xs, keys[order], side=side)
        return out

    lo_out = search(x - eps - margin, "left")
    lo_in = search(x - eps + margin, "right")
    hi_in = search(x + eps - margin, "left")
    hi_out = search(x + eps + margin, "right")
    inner = hi_in > lo_in
    lo = np.where(inner, lo_in, n).astype(np.int64)  # narrowed below by the checked samples
    hi = np.where(inner, hi_in - 1, -1).astype(np.int64)  # last index inside
    first_stop = np.where(inner, lo_in, hi_out)
    second_start = np.where(inner, hi_in, hi_out)
    for starts, stops in ((lo_out, first_stop), (second_start, hi_out)):
        owner, idx = _ranges(starts, stops)
        if owner.size:
            hit = np.abs(xs[idx] - x[owner]) < eps[owner]
            np.minimum.at(lo, owner[hit], idx[hit])
            np.maximum.at(hi, owner[hit], idx[hit])
    empty = hi < lo
    hi = np.where(empty, lo_out, hi + 1)
    lo = np.where(empty, lo_out, lo)
    return order, lo, hi


def count_within_1d(x: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """For each ``i``, the number of ``j != i`` with ``|x_j - x_i| < eps_i`` (exact).

    >>> count_within_1d(np.array([0.0, 0.25, 0.5, 1.0]), np.array([0.5, 0.25, 0.5, 0.5]))
    array([1, 0, 1, 0])
    """
    _, lo, hi = _near_ranges(x, eps)
    return hi - lo - (eps > 0)  # the sample itself, at distance 0 < eps


def count_within_2d(v: np.ndarray, eps: np.ndarray) -> np.ndarray:
    r"""For each ``i``, the number of ``j != i`` with ``max_c |v_jc - v_ic| < eps_i`` (exact).

    Each coordinate's condition is an index range in that coordinate's sorted order; the count
    of samples in both is an orthogonal range count, answered for all samples at once by a merge
    sort tree (one level per bit of N: sorted blocks and two binary searches per query), in
    :math:`O(N \log^2 N)` whatever the number of neighbours (a KD-tree ball query costs their
    number).

    >>> v = np.array([[0.0, 0.0], [0.1, 0.4], [0.2, 0.1], [1.0, 1.0]])
    >>> count_within_2d(v, np.array([0.3, 0.5, 0.3, 0.1])).tolist()
    [1, 2, 1, 0]
    """
    n = v.shape[0]
    order0, lo0, hi0 = _near_ranges(v[:, 0], eps)  # positions in the first coordinate's order
    order1, lo1, hi1 = _near_ranges(v[:, 1], eps)  # ranks in the second coordinate's order
    rank1 = np.empty(n, dtype=np.int64)
    rank1[order1] = np.arange(n)
    ranks = rank1[order0]  # second-coordinate rank of the sample at each first-order position
    size = 1 << max(1, (n - 1).bit_length())
    padded = np.full(size, n, dtype=np.int64)  # padding ranks n never fall in [lo1, hi1)
    padded[:n] = ranks
    total = np.zeros(n, dtype=np.int64)
    # queries in the order of their range ends: the blocks they search then come in order, and
    # the binary searches stay within a few cache lines of each other
    ends = [(t, np.argsort(t, kind="stable"), sign) for t, sign in ((hi0, 1), (lo0, -1))]
    level, width = 0, 1
    while width <= size:
        blocks = np.sort(padded.reshape(-1, width), axis=1)
        flat = (blocks + (np.arange(size // width) * (n + 1))[:, None]).ravel()
        for t, by_t, sign in ends:  # count in [0, hi0) minus count in [0, lo0)
            sel = by_t[((t[by_t] >> level) & 1).astype(bool)]
            if sel.size:
                base = ((t[sel] >> level) - 1) * (n + 1)
                found = (np.searchsorted(flat, base + hi1[sel], side="left")
                         - np.searchsorted(flat, base + lo1[sel], side="left"))
                total[sel] += sign * found
        level, width = level + 1, width * 2
    return total - (eps > 0)


def _tree_counts(x: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    spatial = require("scipy.spatial", "mutual_information(method='ksg', algorithm='tree')")
    xn = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float64)
    yn = np.ascontiguousarray(y.detach().cpu().numpy(), dtype=np.float64)
    z = np.hstack([xn, yn])
    tree = spatial.cKDTree(z, balanced_tree=False, compact_nodes=False)
    # k + 1 neighbours: the sample itself comes at distance 0
    dist, _ = tree.query(z, k=[k + 1], p=np.inf)
    eps = dist[:, 0]
    radius = np.nextafter(eps, 0.0)  # distance <= radius  <=>  distance < eps

    def count(v: np.ndarray) -> np.ndarray:
        if v.shape[1] == 1:
            return count_within_1d(v[:, 0], eps)
        if v.shape[1] == 2:
            return count_within_2d(v, eps)
        marginal = spatial.cKDTree(v, balanced_tree=False, compact_nodes=False)
        inside = marginal.query_ball_point(v, radius, p=np.inf, return_length=True)
        return np.where(eps > 0, inside - 1, 0)  # minus the sample itself

    return (torch.from_numpy(count(xn).astype(np.float64)),
            torch.from_numpy(count(yn).astype(np.float64)))


def ksg_mi_bits(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int = 3,
    chunk_size: int | None = None,
    algorithm: str = "auto",
    progress: bool | None = None,
) -> float:
    """KSG (algorithm 1) estimate in bits for float ``x [N, dx]``, ``y [N, dy]``."""
    n = x.shape[0]
    if not k < n:
        raise ValueError(f"k must be smaller than the number of samples ({n}), got k={k}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    x64, y64 = x.to(torch.float64), y.to(torch.float64)
    use_tree = algorithm == "tree" or (
        algorithm == "auto" and x.device.type == "cpu" and available("scipy.spatial"))
    if use_tree:
        nx, ny = _tree_counts(x64, y64, k)
    else:
        nx, ny = _brute_counts(x64, y64, k, chunk_size, progress)
    psi = torch.special.digamma
    k_t = torch.tensor(float(k), dtype=torch.float64)
    n_t = torch.tensor(float(n), dtype=torch.float64)
    est = psi(k_t) + psi(n_t) - (psi(nx + 1) + psi(ny + 1)).mean().cpu()
    return float(est) / math.log(2)
