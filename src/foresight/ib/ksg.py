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
data first. Brute force, chunked over rows: time :math:`O(N^2 (d_x + d_y))`, memory
:math:`O(\text{rows} \cdot N)`.
"""

from __future__ import annotations

import math

import torch

from foresight.ib._samples import chunk_rows


def _maxnorm_block(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``out[i, j] = max_c |a[i, c] - b[j, c]|`` for ``a [M, d]``, ``b [N, d]`` (exact)."""
    return torch.cdist(a, b, p=float("inf"))


def ksg_mi_bits(
    x: torch.Tensor, y: torch.Tensor, k: int = 3, chunk_size: int | None = None
) -> float:
    """KSG (algorithm 1) estimate in bits for float ``x [N, dx]``, ``y [N, dy]``."""
    n = x.shape[0]
    if not k < n:
        raise ValueError(f"k must be smaller than the number of samples ({n}), got k={k}")
    x64, y64 = x.to(torch.float64), y.to(torch.float64)
    rows = chunk_rows(n, 3 * n, chunk_size)
    nx = torch.empty(n, dtype=torch.float64, device=x.device)
    ny = torch.empty(n, dtype=torch.float64, device=x.device)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        r = torch.arange(stop - start, device=x.device)
        self_cols = r + start
        dx = _maxnorm_block(x64[start:stop], x64)
        dy = _maxnorm_block(y64[start:stop], y64)
        dx[r, self_cols] = math.inf
        dy[r, self_cols] = math.inf
        dz = torch.maximum(dx, dy)
        eps = dz.topk(k, dim=1, largest=False).values[:, -1:]
        nx[start:stop] = (dx < eps).sum(dim=1)
        ny[start:stop] = (dy < eps).sum(dim=1)
    psi = torch.special.digamma
    k_t = torch.tensor(float(k), dtype=torch.float64)
    n_t = torch.tensor(float(n), dtype=torch.float64)
    est = psi(k_t) + psi(n_t) - (psi(nx + 1) + psi(ny + 1)).mean().cpu()
    return float(est) / math.log(2)
