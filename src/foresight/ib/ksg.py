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
  :class:`scipy.spatial.cKDTree` of the joint samples; marginal counts from a sorted array
  (one-dimensional marginals: two binary searches per sample, the few samples within a rounding
  error of :math:`\varepsilon_i` checked exactly) or from a tree of the marginal
  (``query_ball_point`` with radius just below :math:`\varepsilon_i`). Time
  :math:`O(N \log N)` in low dimension.
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


def count_within_1d(x: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """For each ``i``, the number of ``j != i`` with ``|x_j - x_i| < eps_i`` (exact).

    Two binary searches per sample in the sorted values find the samples surely inside and the
    few within a rounding error of the boundary, which are compared exactly.

    >>> count_within_1d(np.array([0.0, 0.25, 0.5, 1.0]), np.array([0.5, 0.25, 0.5, 0.5]))
    array([1, 0, 1, 0])
    """
    xs = np.sort(x)
    margin = 4.0 * np.finfo(np.float64).eps * (np.abs(x) + eps) + np.finfo(np.float64).tiny
    lo_out = np.searchsorted(xs, x - eps - margin, side="left")
    lo_in = np.searchsorted(xs, x - eps + margin, side="right")
    hi_in = np.searchsorted(xs, x + eps - margin, side="left")
    hi_out = np.searchsorted(xs, x + eps + margin, side="right")
    inner = hi_in > lo_in
    sure = np.where(inner, hi_in - lo_in, 0)
    # ambiguous: [lo_out, lo_in) and [hi_in, hi_out) when there is an inside, else all of it
    first_stop = np.where(inner, lo_in, hi_out)
    second_start = np.where(inner, hi_in, hi_out)
    count = sure.astype(np.int64)
    for starts, stops in ((lo_out, first_stop), (second_start, hi_out)):
        owner, idx = _ranges(starts, stops)
        if owner.size:
            hit = np.abs(xs[idx] - x[owner]) < eps[owner]
            count += np.bincount(owner[hit], minlength=len(x))
    return count - (eps > 0)  # the sample itself, at distance 0 < eps


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
