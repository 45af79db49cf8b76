r"""Sample-free (infinite-sample) EI_parts and sensitivity for monotone activations.

The pairwise measures of :mod:`foresight.causal.measures` are sums of the mutual information of
the :math:`b \times b` histogram of (bin of input :math:`A`, bin of output :math:`B`) under a
uniform intervention. Their *infinite-sample* value is the mutual information of the exact cell
probabilities :math:`P(i, j)`, which this module computes without drawing a single sample.

**Thresholds.** For a non-decreasing activation :math:`f` and the output bin edges
:math:`e_j = \ell + j (u - \ell)/b` (``j = 1 .. b-1``), the output lands in bin :math:`\ge j`
exactly when the pre-activation :math:`s` reaches :math:`p_j = \inf\{s : f(s) \ge e_j\}` (found by
bisection in float64; :math:`\pm\infty` when :math:`f` never or always reaches :math:`e_j` on the
layer's range). Values outside ``out_range`` fall into the edge bins, as in the sampled estimator.

**Sensitivity.** With only input :math:`A` set, :math:`s = c_B + w_{AB} x_A`, a monotone function of
:math:`x_A`, so :math:`\{x_A : \text{bin} \ge j\}` is a half-line with end
:math:`(p_j - c_B)/w_{AB}`, and the mass of input bin :math:`i` beyond it is an overlap of two
intervals: :math:`P(i, \ge j)` in closed form, cost :math:`O(n_{in} n_{out} b^2)`.

**EI_parts.** With every input set, :math:`s = c_B + \sum_k w_{kB} x_k`. Given that :math:`x_A` lies
in bin :math:`i`, :math:`s = \mu_B + m_{A,i} + Z_A`, where :math:`\mu_B` is the mean of :math:`s`,
:math:`m_{A,i}` the offset of bin :math:`i`'s centre, and :math:`Z_A` a sum of independent centred
uniforms (one of width :math:`|v_k|` per other input, :math:`v = (\text{high} - \text{low})\,w`,
and one of width :math:`|v_A|/b` for the position inside the bin). Then

.. math::
    P(i, \ge j) = \tfrac1b \bigl(1 - F_{Z_A}(p_j - \mu_B - m_{A,i})\bigr),

with :math:`F_{Z_A}` the distribution function of :math:`Z_A`, computed one of two ways:

* a Fourier series on a period :math:`L = \sum_k |v_k| + \max_k |v_k|` that holds the whole
  support and every bin offset, so the periodic extension is exact there: with
  :math:`\omega_n = 2\pi n / L` and the characteristic function
  :math:`\psi(\omega) = \prod \operatorname{sinc}(\omega a / 2)` over the widths :math:`a`,

  .. math::
      F(z) = \tfrac12 + \frac zL
          + \sum_{n \ge 1} \frac{\psi(\omega_n)}{\pi n}\sin(\omega_n z),

  truncated at the first :math:`N` whose tail is provably below :data:`TAIL`
  (:math:`|\operatorname{sinc} x| \le \min(1, 1/|x|)`); for every pair of an output at once
  this is one matrix product;
* when that needs more than :data:`MAX_TERMS` terms (few inputs: slow decay), the exact
  piecewise-polynomial distribution of a sum of uniforms (inclusion--exclusion over the
  :math:`2^K` corners), used while its rounding error stays below :data:`POLY_ERROR`
  (:math:`10^{-9}`; summands narrower than :math:`10^{-11}` of the widest are left out, which
  moves :math:`F` by less than that).

A layer where neither applies (many inputs, but only two or three with weights far above the
rest) has no exact value here: :func:`pairwise_exact` returns ``None`` and the caller samples.

**Accuracy.** :math:`F` is accurate to :math:`10^{-12}` (Fourier) or :math:`10^{-9}`
(polynomial) everywhere, so each cell probability to twice that over :math:`b`, and each pair's
mutual information to about :math:`10^{-8}` (Fourier) or :math:`10^{-5}` (polynomial) bits at
worst -- far inside the sampling error of any feasible sample count (tested against
:math:`10^7` samples within their plug-in bias). Sensitivity is exact up to rounding.

Monotone activations (non-decreasing on the whole real line), :func:`monotone`:

========================  ===================================================================
activation                why it is non-decreasing
========================  ===================================================================
identity (``None``)       :math:`f(s) = s`
``Sigmoid``               :math:`\sigma' = \sigma (1 - \sigma) > 0`
``Tanh``                  :math:`\tanh' = 1 - \tanh^2 > 0`
``ReLU``, ``ReLU6``       :math:`\max(0, s)`, :math:`\min(\max(0, s), 6)`: flat or slope 1
``LeakyReLU``             slope 1 or ``negative_slope``; only for ``negative_slope >= 0``
``PReLU``                 as LeakyReLU, one shared parameter :math:`\ge 0` (checked when measured)
``ELU``                   slope 1, or :math:`\alpha e^s \ge 0` for :math:`s < 0` (``alpha >= 0``)
``CELU``                  slope 1, or :math:`e^{s/\alpha} > 0` for :math:`s < 0`
``SELU``                  ELU with fixed :math:`\lambda, \alpha > 0`
``Softplus``              :math:`\sigma(\beta s) > 0` (``beta > 0``; the linear switch above
                          ``threshold`` is continuous to :math:`10^{-8}`)
``Softsign``              :math:`1/(1 + |s|)^2 > 0`
``Hardtanh``              clamp to ``[min_val, max_val]``
``Hardsigmoid``           :math:`\min(\max(0, s/6 + 1/2), 1)`
``LogSigmoid``            :math:`\sigma(-s) > 0`
``Tanhshrink``            :math:`s - \tanh s`, derivative :math:`\tanh^2 s \ge 0`
========================  ===================================================================

and the functional forms ``torch.sigmoid``, ``torch.tanh``, ``torch.relu`` and
``torch.nn.functional``'s ``sigmoid, tanh, relu, relu6, leaky_relu, elu, selu, celu, softplus,
softsign, hardtanh, hardsigmoid, logsigmoid, tanhshrink``. GELU, SiLU, Mish and Hardswish dip
below zero before rising (not monotone): they, and any other callable, are sampled.

>>> import torch
>>> w, b = torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
>>> f = monotone(None)
>>> p = thresholds(f, (0.0, 1.0), 4, (-1.0, 2.0))
>>> [round(float(v), 6) for v in p]  # identity: the thresholds are the bin edges
[0.25, 0.5, 0.75]
>>> float(sensitivity_pairs(w, b, (0.0, 1.0), p, 4).sum())  # two copies of a 4-bin uniform
4.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

__all__ = [
    "MONOTONE_TYPES",
    "TAIL",
    "MAX_TERMS",
    "monotone",
    "thresholds",
    "sensitivity_pairs",
    "ei_parts_pairs",
    "pairwise_exact",
    "pair_mi",
]

#: Bound on the truncation error of the Fourier series of a distribution function (absolute).
TAIL = 1e-12
#: Largest accepted rounding error of the polynomial form of a distribution function.
POLY_ERROR = 1e-9
#: Summands narrower than this fraction of the widest are dropped by the polynomial form (each
#: moves the distribution function by at most a quarter of that fraction).
NEGLIGIBLE_WIDTH = 1e-11
#: Most Fourier terms per output neuron before the polynomial form is tried.
MAX_TERMS = 4096
#: Most uniform summands for the inclusion-exclusion form (2**K corners).
MAX_CORNERS_LOG2 = 14
#: Pair cells (input bin x output bin) evaluated per block, bounding memory.
BLOCK_CELLS = 1 << 16
#: The same for the outputs EI_parts evaluates together (its per-block overhead is larger).
PARTS_BLOCK_CELLS = 1 << 19

Fn = Callable[[Tensor], Tensor]

#: Stateless activation modules that are non-decreasing (parameterised ones are checked apart).
MONOTONE_TYPES: tuple[type, ...] = (
    nn.Identity, nn.Sigmoid, nn.Tanh, nn.ReLU, nn.ReLU6, nn.SELU, nn.Softsign, nn.Hardtanh,
    nn.Hardsigmoid, nn.LogSigmoid, nn.Tanhshrink,
)

_MONOTONE_FUNCTIONS = (
    torch.sigmoid, torch.tanh, torch.relu, torch.selu, F.sigmoid, F.tanh, F.relu, F.relu6,
    F.leaky_relu, F.elu, F.selu, F.celu, F.softplus, F.softsign, F.hardtanh, F.hardsigmoid,
    F.logsigmoid, F.tanhshrink,
)


def monotone(activation: Any) -> Fn | None:
    """A float64 version of ``activation`` if it is non-decreasing, else ``None``.

    ``None`` (the identity) and the types and functions listed in the module docs qualify;
    parameterised modules only with parameters that keep them monotone (``LeakyReLU`` with
    ``negative_slope >= 0``, ``ELU``/``CELU`` with ``alpha >= 0``, ``Softplus`` with
    ``beta > 0``, ``PReLU`` with one parameter ``>= 0``). Subclasses do not qualify (their
    ``forward`` may differ).
    """
    if activation is None:
        return lambda s: s
    kind = type(activation)
    if kind in MONOTONE_TYPES:
        return activation
    if kind is nn.LeakyReLU:
        return activation if activation.negative_slope >= 0 else None
    if kind in (nn.ELU, nn.CELU):
        return activation if activation.alpha >= 0 else None
    if kind is nn.Softplus:
        return activation if activation.beta > 0 else None
    if kind is nn.PReLU:
        weight = activation.weight.detach()
        if weight.numel() != 1 or float(weight) < 0:
            return None
        slope = weight.double().cpu()
        return lambda s: F.prelu(s, slope)
    try:
        if any(activation is fn for fn in _MONOTONE_FUNCTIONS):
            return activation
    except TypeError:  # pragma: no cover - exotic callables
        return None
    return None


def thresholds(f: Fn, out_range: tuple[float, float], bins: int,
               bracket: tuple[float, float]) -> Tensor:
    r"""Pre-activation thresholds :math:`p_j = \inf\{s : f(s) \ge e_j\}`, ``j = 1 .. bins-1``.

    Searched on ``bracket`` (the pre-activations the layer can reach): ``-inf`` where
    :math:`f` reaches :math:`e_j` already at the lower end, ``+inf`` where it never does.
    Float64 bisection (80 halvings of the bracket).
    """
    lo, hi = out_range
    edges = lo + torch.arange(1, bins, dtype=torch.float64) * ((hi - lo) / bins)
    a = torch.full_like(edges, float(bracket[0]))
    b = torch.full_like(edges, float(bracket[1]))
    with torch.no_grad():
        below = f(a) >= edges  # already at the bracket's lower end
        never = f(b) < edges
        for _ in range(80):  # 2^-80 of the bracket: below the float64 resolution of its ends
            mid = 0.5 * (a + b)
            up = f(mid) >= edges
            b = torch.where(up, mid, b)
            a = torch.where(up, a, mid)
    p = b.clone()
    p[below] = -math.inf
    p[never] = math.inf
    return p


def pair_mi(joint: Tensor) -> Tensor:
    """Mutual information (bits) of each probability table ``joint [..., b_x, b_y]`` (float64).

    Row by row like :func:`foresight.causal.histogram.pairwise_mi`, so a table with one nonzero
    cell per row (a constant output) gives exactly 0.
    """
    joint = joint.clamp(min=0.0)
    rows, cols = joint.sum(-1), joint.sum(-2)
    total = rows.sum(-1)
    nats = (torch.xlogy(joint, joint).sum(-1).sum(-1) - torch.xlogy(rows, rows).sum(-1)
            - torch.xlogy(cols, cols).sum(-1) + torch.xlogy(total, total))
    return (nats / math.log(2.0)).clamp_(min=0.0)


def _cells(cdf: Tensor, bins: int) -> Tensor:
    """``P(i, j)`` from ``F_j = P(out < j | i)`` for ``j = 1 .. b-1`` along the last dimension."""
    zero = torch.zeros((*cdf.shape[:-1], 1), dtype=cdf.dtype)
    return torch.diff(cdf, dim=-1, prepend=zero, append=zero + 1.0) / bins


def sensitivity_pairs(w: Tensor, b: Tensor, in_range: tuple[float, float], p: Tensor,
                      bins: int) -> Tensor:
    """Exact sensitivity MI of every pair, ``[n_in, n_out]`` bits (only input ``A`` set).

    ``w [n_in, n_out]``, ``b [n_out]`` float64; ``p`` the thresholds of :func:`thresholds`.
    """
    lo, hi = in_range
    n_in, n_out = w.shape
    left = (torch.arange(bins, dtype=torch.float64) / bins).view(1, 1, bins, 1)  # bin [i/b, ..)
    out = torch.zeros(n_in, n_out, dtype=torch.float64)
    step = max(1, BLOCK_CELLS // max(1, n_out * bins * bins))
    for a0 in range(0, n_in, step):
        wa = w[a0 : a0 + step].unsqueeze(-1)  # [A, B, 1]
        # position u in [0, 1) of the input where the pre-activation reaches p_j (w = 0: masked)
        tau = ((p - b.unsqueeze(-1) - wa * lo) / (wa * (hi - lo))).nan_to_num(nan=0.0)
        t = tau.unsqueeze(-2)  # [A, B, 1, b-1]
        # F_j = P(output bin < j | input bin i) * b: the part of the bin before (w > 0) or
        # after (w < 0) tau
        before = (t - left).clamp_(0.0, 1.0 / bins)
        after = (left + 1.0 / bins - t).clamp_(0.0, 1.0 / bins)
        cdf = torch.where(wa.unsqueeze(-1) > 0, before, after) * bins  # [A, B, b, b-1]
        mi = pair_mi(_cells(cdf, bins))
        out[a0 : a0 + step] = torch.where(w[a0 : a0 + step] == 0, 0.0, mi)
    return out


# --------------------------------------------------------------------------- EI_parts
def _log_factor_bounds(scale: Tensor, grid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Per factor with :math:`x = \text{scale} \cdot n`: the log of its largest possible
    :math:`|\operatorname{sinc} x|` on each grid segment ``[..., G-1]``, and at the last grid
    point its ``log min(1, 1/x)`` and whether it already falls like ``1/n``."""
    lo = scale.unsqueeze(-1) * grid[:-1]  # x at a segment's start
    hi = scale.unsqueeze(-1) * grid[1:]
    gauss = -(lo**2) / 6.0
    inverse = -torch.log(lo.clamp(min=1e-300))
    straddle = torch.maximum(gauss, torch.full_like(gauss, -math.log(math.pi)))
    seg = torch.where(hi <= math.pi, gauss, torch.where(lo >= math.pi, inverse, straddle))
    x_last = scale * grid[-1]
    return seg, -torch.log(x_last.clamp(min=1.0)), (x_last > 1).double()


def _tail_terms(a: Tensor, period: Tensor, bins: int) -> Tensor:
    r"""Fewest Fourier terms for every (input A, output) of a block, ``[n_in, C]``, with a
    provable tail below TAIL (``MAX_TERMS + 1`` where no ``N <= MAX_TERMS`` suffices).

    The summands of :math:`Z_A` are the other inputs' uniforms (widths ``a[k]``) and A's own bin
    (width ``a[A] / b``). Each factor obeys :math:`|\operatorname{sinc} x| \le e^{-x^2/6}` for
    :math:`|x| \le \pi` (from :math:`\operatorname{sinc} x = \prod_m (1 - x^2/m^2\pi^2)`) and
    :math:`\le 1/|x|` beyond, with :math:`x = \pi n a / L`. On each segment
    :math:`(n_s, n_{s+1}]` of a geometric grid the product of the factors' largest values there
    bounds :math:`|\psi|`, and :math:`\sum 1/(\pi n) \le \ln(n_{s+1}/n_s)/\pi`; beyond the
    last grid point the factors past their knee fall like :math:`1/n`. The product over the
    other inputs is the product over all inputs of one output with A's factor divided out.
    """
    top = 8 * math.ceil(math.log2(max(2, MAX_TERMS)))
    grid = torch.unique(torch.round(2.0 ** (torch.arange(0, top + 1) / 8.0))).double()
    grid = grid[grid <= max(2, MAX_TERMS)]
    scale = math.pi * a / period  # [K, C]
    seg_k, last_k, fall_k = _log_factor_bounds(scale, grid)  # [K, C, G-1], [K, C], [K, C]
    seg_own, last_own, fall_own = _log_factor_bounds(scale / bins, grid)
    seg = seg_k.sum(0) - seg_k + seg_own  # [A, C, G-1]: the others and A's own bin
    last = last_k.sum(0) - last_k + last_own
    falling = fall_k.sum(0) - fall_k + fall_own
    seg = torch.exp(seg) * (torch.log(grid[1:] / grid[:-1]) / math.pi)
    final = torch.where(falling > 0.5, torch.exp(last) / (math.pi * falling.clamp(min=1.0)),
                        torch.full_like(last, math.inf))
    tail = torch.cat([seg.flip(-1).cumsum(-1).flip(-1), torch.zeros_like(seg[..., :1])], -1)
    tail = tail + final.unsqueeze(-1)  # bound on sum_{n > grid[g]}
    ok = tail <= TAIL
    first = torch.where(ok.any(-1), ok.double().argmax(-1), torch.tensor(-1))
    terms = torch.where(first >= 0, grid[first.clamp(min=0)], torch.tensor(MAX_TERMS + 1.0))
    return torch.where(terms > MAX_TERMS, MAX_TERMS + 1, terms.long())


def _poly_cdf(widths: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """``F(z)`` of a sum of centred uniforms (inclusion-exclusion) and its rounding error bound.

    ``widths [R, K]`` (all > 0), ``z [R, P]``. ``F(z) = sum_S (-1)^|S| (z + W/2 - a_S)_+^K /
    (K! prod a)`` over the subsets ``S`` of the summands.
    """
    rows, k = widths.shape
    if k == 1:  # one uniform: a straight line (exact in floating point for simple numbers)
        a = widths[:, :1]
        return (z / a + 0.5).clamp(0.0, 1.0), torch.full((rows,), 4e-16, dtype=z.dtype)
    masks = ((torch.arange(2**k).unsqueeze(1) >> torch.arange(k)) & 1).double()  # [2^K, K]
    sign = 1.0 - 2.0 * (masks.sum(1) % 2)  # [2^K]
    total = widths.sum(1, keepdim=True)
    corners = 0.5 * total - widths @ masks.t()  # [R, 2^K]
    log_scale = math.lgamma(k + 1) + torch.log(widths).sum(1)  # log(K! prod a)
    cdf = torch.empty_like(z)
    step = max(1, (1 << 20) // max(1, z.shape[1] << k))
    for r in range(0, rows, step):
        shifted = (z[r : r + step].unsqueeze(-1) + corners[r : r + step].unsqueeze(1)).clamp_(
            min=0.0).pow_(k)  # [R, P, 2^K]: (z + W/2 - a_S)_+^K
        cdf[r : r + step] = shifted @ sign
    cdf /= torch.exp(log_scale).unsqueeze(1)
    biggest = torch.exp(k * torch.log(total.squeeze(1)) - log_scale)  # largest possible term
    error = biggest * (2.0**k) * 4e-16
    return cdf, error


def _own_widths(a: Tensor, bins: int) -> Tensor:
    """Widths of the summands of ``Z_A`` for every pair: ``[n_in (A), C, n_in (k)]`` from
    ``a [n_in, C]`` -- the other inputs' widths and ``A``'s own bin width ``a_A / b``."""
    n_in = a.shape[0]
    widths = a.t().unsqueeze(0).repeat(n_in, 1, 1)  # [A, C, k]
    idx = torch.arange(n_in)
    widths[idx, :, idx] = a / bins
    return widths


def _fourier_cells(a: Tensor, v: Tensor, t: Tensor, period: Tensor, terms: int,
                 bins: int) -> Tensor:
    """The cells ``P(i, j)`` of every (output, A) table, ``[C, n_in, b, J+1]`` (Fourier).

    ``a = |v|``, ``v [n_in, C]`` scaled weights, ``t [C, J]`` thresholds (clipped to the
    support), ``period [C]``. ``F_{Z_A}(t_j - m_{A,i})`` is, with
    ``sin(w (t - m)) = sin(w t) cos(w m) - cos(w t) sin(w m)``, a row of ``[cos(w m), sin(w m),
    1, 1/2 - m/L]`` (weighted by the series' coefficients) times a column of ``[sin(w t),
    -cos(w t), t/L, 1]``; the cells are differences of consecutive F (0 below the first
    threshold, 1 above the last), so differences of the columns give them all in one batched
    matrix product ``[C, n_in * b, 2N+2] @ [C, 2N+2, J+1]``.
    """
    n_in, c = a.shape
    j = t.shape[1]
    n = torch.arange(1, terms + 1, dtype=torch.float64)
    omega = 2.0 * math.pi * n.view(1, -1) / period.view(-1, 1)  # [C, N]
    sinc = torch.sinc(a.unsqueeze(-1) * omega / (2.0 * math.pi))  # [k, C, N]
    ones = torch.ones_like(sinc[:1])
    before = torch.cat([ones, sinc[:-1]]).cumprod(0)  # prod over k < A
    after = torch.cat([sinc[1:], ones]).flip(0).cumprod(0).flip(0)  # prod over k > A
    own = torch.sinc(a.unsqueeze(-1) * omega / (2.0 * math.pi * bins))
    coef = (before * after * own / (math.pi * n)).transpose(0, 1).unsqueeze(2)  # [C, A, 1, N]
    centres = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins - 0.5
    shift = v.t().unsqueeze(-1) * centres  # [C, A, b]: m_{A,i}
    # the centres are symmetric (c_{b-1-i} = -c_i): cosines of the upper half mirror to the
    # lower half, sines mirror with a sign
    half = bins // 2
    upper = shift[..., half:].unsqueeze(-1) * omega.view(c, 1, 1, -1)  # [C, A, b - b//2, N]
    right = torch.empty(c, n_in, bins, 2 * terms + 2, dtype=torch.float64)
    cos_part, sin_part = right[..., :terms], right[..., terms : 2 * terms]
    torch.mul(torch.cos(upper), coef, out=cos_part[:, :, half:])
    torch.mul(torch.sin(upper), coef, out=sin_part[:, :, half:])
    mirror = torch.arange(bins - 1, bins - 1 - half, -1)  # i -> b - 1 - i for i < b//2
    cos_part[:, :, :half] = cos_part[:, :, mirror]
    torch.neg(sin_part[:, :, mirror], out=sin_part[:, :, :half])
    right[..., 2 * terms] = 1.0
    right[..., 2 * terms + 1] = 0.5 - shift / period.view(-1, 1, 1)
    wt = t.unsqueeze(-1) * omega.unsqueeze(1)  # [C, J, N]
    left = torch.zeros(c, 2 * terms + 2, j + 2, dtype=torch.float64)  # F = 0, F_1..F_J, F = 1
    torch.sin(wt, out=left[:, :terms, 1 : j + 1].transpose(1, 2))
    torch.cos(wt, out=left[:, terms : 2 * terms, 1 : j + 1].transpose(1, 2))
    left[:, terms : 2 * terms, 1 : j + 1].neg_()
    left[:, 2 * terms, 1 : j + 1] = t / period.view(-1, 1)
    left[:, 2 * terms + 1, 1 : j + 1] = 1.0
    left[:, 2 * terms, j + 1] = 1.0  # the constant 1, through right's column of ones
    cells = torch.diff(left, dim=-1).div_(bins)  # [C, 2N+2, J+1]
    out = torch.bmm(right.view(c, n_in * bins, -1), cells)  # [C, A * b, J+1]
    return out.view(c, n_in, bins, j + 1)


def _cells_of(cdf: Tensor, bins: int) -> Tensor:
    """Cells ``P(i, j)`` ``[..., J+1]`` from ``F [..., J]`` = P(output bin <= k | input bin i) for
    the thresholds ``k`` in play (below them F is 0, above 1)."""
    j = cdf.shape[-1]
    joint = torch.empty((*cdf.shape[:-1], j + 1), dtype=cdf.dtype)
    joint[..., 0] = cdf[..., 0]
    torch.sub(cdf[..., 1:], cdf[..., :-1], out=joint[..., 1:j])
    torch.sub(1.0, cdf[..., -1], out=joint[..., j])
    return joint.div_(bins)


def _layout_mi(joint: Tensor) -> Tensor:
    """Pair MI (bits) ``[C, A]`` of the cells ``[C, A, b, J+1]`` (rounding below 0 dropped)."""
    joint = joint.clamp_(min=0.0)
    rows = joint.sum(-1)  # [C, A, b_i]
    cols = joint.sum(-2)  # [C, A, J+1]
    total = rows.sum(-1)
    plogp = joint.clamp(min=1e-300).log_().mul_(joint)  # 0 log 0 = 0
    nats = (plogp.sum(-1).sum(-1) - torch.xlogy(rows, rows).sum(-1)
            - torch.xlogy(cols, cols).sum(-1) + torch.xlogy(total, total))
    return (nats / math.log(2.0)).clamp_(min=0.0)


def _kept(widths: Tensor) -> Tensor:
    """The summands the polynomial form keeps (not negligibly narrow), ``[R, K]`` bool."""
    return widths > NEGLIGIBLE_WIDTH * widths.amax(-1, keepdim=True)


def _poly_cost(widths: Tensor) -> tuple[Tensor, Tensor]:
    """Per row of ``widths [..., K]``: the number of kept summands and the rounding error bound
    of the polynomial form (its largest term times the number of terms times 2 ulp)."""
    keep = _kept(widths)
    k = keep.sum(-1)
    logs = torch.where(keep, torch.log(widths.clamp(min=1e-300)), 0.0).sum(-1)
    total = torch.where(keep, widths, 0.0).sum(-1).clamp(min=1e-300)
    kd = k.double()
    error = torch.exp(kd * torch.log(total) - torch.lgamma(kd + 1) - logs
                      + kd * math.log(2.0)) * 4e-16
    return k, error


def _poly_rows(widths: Tensor, z: Tensor) -> Tensor:
    """``F`` of each row's sum of uniforms at ``z [R, P]`` by the polynomial form (rows grouped
    by their number of kept summands; the caller checked :func:`_poly_cost`)."""
    out = torch.empty_like(z)
    keep = _kept(widths)
    counts = keep.sum(1)
    for k in counts.unique().tolist():
        rows = (counts == k).nonzero().flatten()
        w = widths[rows][keep[rows]].view(rows.numel(), k)
        out[rows] = _poly_cdf(w, z[rows])[0]
    return out.clamp_(0.0, 1.0)


def _chunk_pairs(v: Tensor, mean: Tensor, p: Tensor, bins: int) -> Tensor | None:
    """EI_parts pair MI ``[n_in, C]`` for a chunk of outputs (scaled weights ``v [n_in, C]``)."""
    n_in, c = v.shape
    a = v.abs()
    support = a.sum(0)  # [C]: width of the support of the pre-activation
    out = torch.zeros(n_in, c, dtype=torch.float64)
    live = support > 0  # an output with no weights is constant: 0 bits
    if not bool(live.any()):
        return out
    cols = live.nonzero().flatten()
    v, a, support = v[:, cols], a[:, cols], support[cols]
    # thresholds relative to the mean, clipped to the support (F is 0 or 1 beyond it)
    half = 0.5 * support.view(-1, 1)
    t = (p.view(1, -1) - mean[cols].view(-1, 1)).clamp(min=-half, max=half)  # [C, b-1]
    # only thresholds inside some output's support move F; outside it F is 0 or 1 and the
    # output bins beyond them are empty, so the tables keep the bins k_lo .. k_hi + 1 only
    inside = ((t > -half) & (t < half)).any(0).nonzero().flatten()
    if inside.numel() == 0:  # every output stays in one bin: 0 bits
        return out
    t = t[:, int(inside[0]) : int(inside[-1]) + 1]
    # Fourier period: the support plus the largest bin-centre shift, so every t - m fits
    period = support + a.amax(0)
    widths = _own_widths(a, bins)  # [A, C, k]
    terms = _tail_terms(a, period, bins)  # [A, C]
    k, error = _poly_cost(widths)
    poly_ok = (k <= MAX_CORNERS_LOG2) & (error <= POLY_ERROR)
    # the polynomial form where the series is long: per cell it costs 2^K powers where the
    # series costs 2N multiply-adds in a matrix product, some 20 times cheaper each
    use_poly = poly_ok & ((terms > MAX_TERMS) | (20 * 2 ** k.clamp(max=30) < terms)) & (a > 0)
    use_fourier = (terms <= MAX_TERMS) & ~use_poly & (a > 0)
    if bool(((a > 0) & ~use_poly & ~use_fourier).any()):
        return None
    cells = torch.zeros(len(cols), n_in, bins, t.shape[1] + 1, dtype=torch.float64)
    if bool(use_fourier.any()):
        n_terms = int(terms[use_fourier].max())
        step = max(1, PARTS_BLOCK_CELLS // (n_in * bins * (2 * n_terms + 2)))
        for s in range(0, len(cols), step):
            sl = slice(s, s + step)
            cells[sl] = _fourier_cells(a[:, sl], v[:, sl], t[sl], period[sl], n_terms, bins)
    slow = use_poly.nonzero()
    if slow.numel():
        centres = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins - 0.5
        z = t[slow[:, 1]].unsqueeze(1) - (v[slow[:, 0], slow[:, 1]].view(-1, 1)
                                          * centres).unsqueeze(-1)  # [R, b, J]
        poly = _poly_rows(widths[slow[:, 0], slow[:, 1]], z.reshape(slow.shape[0], -1))
        cells[slow[:, 1], slow[:, 0]] = _cells_of(poly.view(-1, bins, t.shape[1]), bins)
    mi = _layout_mi(cells).t()  # [A, C]
    out[:, cols] = torch.where(a == 0, 0.0, mi)
    return out


def ei_parts_pairs(w: Tensor, b: Tensor, in_range: tuple[float, float], p: Tensor,
                   bins: int) -> Tensor | None:
    """Exact EI_parts MI of every pair, ``[n_in, n_out]`` bits, or ``None`` (see module docs)."""
    lo, hi = in_range
    n_in, n_out = w.shape
    v = (hi - lo) * w  # [n_in, n_out]
    mean = b + lo * w.sum(0) + 0.5 * v.sum(0)  # mean pre-activation of each output
    out = torch.zeros_like(w)
    step = max(1, PARTS_BLOCK_CELLS // max(1, n_in * max(n_in, bins) * bins))
    for c0 in range(0, n_out, step):
        part = _chunk_pairs(v[:, c0 : c0 + step], mean[c0 : c0 + step], p, bins)
        if part is None:
            return None
        out[:, c0 : c0 + step] = part
    return out


def pairwise_exact(measure: str, w: Tensor, b: Tensor, activation: Any,
                   in_range: tuple[float, float], out_range: tuple[float, float],
                   bins: int) -> Tensor | None:
    """Exact pair MI ``[n_in, n_out]`` of ``"sensitivity"`` or ``"ei_parts"``, or ``None`` when
    the activation is not monotone or the layer has no exact form."""
    f = monotone(activation)
    if f is None:
        return None
    w64, b64 = w.detach().double().cpu(), b.detach().double().cpu()
    lo, hi = in_range
    at_lo, at_hi = w64 * lo, w64 * hi
    small, large = torch.minimum(at_lo, at_hi), torch.maximum(at_lo, at_hi)
    pre_lo = torch.minimum(b64 + small.sum(0), b64 + small.min(0).values)
    pre_hi = torch.maximum(b64 + large.sum(0), b64 + large.max(0).values)
    bracket = (float(pre_lo.min()) - 1.0, float(pre_hi.max()) + 1.0)
    p = thresholds(f, out_range, bins, bracket)
    if measure == "sensitivity":
        return sensitivity_pairs(w64, b64, in_range, p, bins)
    if measure == "ei_parts":
        return ei_parts_pairs(w64, b64, in_range, p, bins)
    raise ValueError(f"no exact form for {measure!r}")
