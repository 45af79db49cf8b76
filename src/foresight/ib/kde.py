r"""Pairwise-distance (KDE) bounds on entropy and mutual information (Kolchinsky & Tracey 2017).

The continuous variable :math:`T` is modelled as the sample points :math:`h_i` (``i = 1..N``) plus
Gaussian noise :math:`\mathcal N(0, \sigma^2 I_d)`, a mixture of :math:`N` equal-weight Gaussians.
With :math:`D_{ij} = \lVert h_i - h_j \rVert^2` its entropy (nats) is bracketed by

.. math::

   H_{\rm upper}(T) = \frac d2 \ln(2\pi e\sigma^2)
       - \frac1N \sum_i \ln \frac1N \sum_j e^{-D_{ij} / 2\sigma^2},
   \qquad
   H_{\rm lower}(T) = \frac d2 \ln(2\pi e\sigma^2)
       - \frac1N \sum_i \ln \frac1N \sum_j e^{-D_{ij} / 8\sigma^2}

(the KL-divergence and Bhattacharyya-distance pairwise bounds). With a symbolic variable :math:`S`
taking value :math:`s` on :math:`n_s` samples, :math:`I(S;T) = H(T) - \sum_s p(s) H(T \mid S=s)`,
each term with the same bound; the constant cancels, so

.. math::

   I(S;T) = \frac1N \sum_i \Big[\ln \frac{1}{n_{s(i)}} \sum_{j: s(j)=s(i)} e^{-D_{ij}/c}
       - \ln \frac1N \sum_j e^{-D_{ij}/c}\Big], \qquad c = 2\sigma^2 \text{ or } 8\sigma^2.

The :math:`N \times N` distances are never held at once: rows are processed in chunks of about
``2**21`` entries (``chunk_size`` rows if given), on the device of the input, in float64.
"""

from __future__ import annotations

import math

import torch

from foresight.ib._samples import chunk_rows, positive_float

_BOUND_SCALE = {"upper": 2.0, "lower": 8.0}
_MANY_CLASSES = 64


def kernel_scale(noise_var: float, bound: str) -> float:
    """The divisor :math:`c` of :math:`D_{ij}` for ``bound`` (``2σ²`` upper, ``8σ²`` lower)."""
    if bound not in _BOUND_SCALE:
        raise ValueError(f"bound must be 'upper' or 'lower', got {bound!r}")
    return _BOUND_SCALE[bound] * positive_float(noise_var, "noise_var")


def log_kernel_sums(
    a: torch.Tensor, b: torch.Tensor, scale: float, chunk_size: int | None = None
) -> torch.Tensor:
    r"""``out[i] = ln sum_j exp(-|a_i - b_j|^2 / scale)`` for float64 ``a [M, d]``, ``b [N, d]``.

    Chunked over the rows of ``a``; memory stays ``O(rows * N)``.
    """
    rows = chunk_rows(a.shape[0], b.shape[0], chunk_size)
    sq_a = (a * a).sum(dim=1)
    sq_b = (b * b).sum(dim=1)
    bt = b.t()
    out = torch.empty(a.shape[0], dtype=a.dtype, device=a.device)
    for start in range(0, a.shape[0], rows):
        stop = min(start + rows, a.shape[0])
        d = torch.addmm(sq_b.unsqueeze(0), a[start:stop], bt, beta=1.0, alpha=-2.0)
        d.add_(sq_a[start:stop].unsqueeze(1)).clamp_(min=0.0).mul_(-1.0 / scale)
        out[start:stop] = torch.logsumexp(d, dim=1)
    return out


def _within_class_sums(
    t: torch.Tensor, labels: torch.Tensor, k: int, scale: float, chunk_size: int | None
) -> torch.Tensor:
    """``ln sum_{j: s_j = s_i} exp(-D_ij / scale)`` for every ``i``."""
    n = t.shape[0]
    out = torch.empty(n, dtype=t.dtype, device=t.device)
    if k <= _MANY_CLASSES:
        for c in range(k):
            idx = torch.nonzero(labels == c).squeeze(1)
            if idx.numel():
                sub = t.index_select(0, idx)
                out[idx] = log_kernel_sums(sub, sub, scale, chunk_size)
        return out
    rows = chunk_rows(n, n, chunk_size)
    sq = (t * t).sum(dim=1)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        d = torch.addmm(sq.unsqueeze(0), t[start:stop], t.t(), beta=1.0, alpha=-2.0)
        d.add_(sq[start:stop].unsqueeze(1)).clamp_(min=0.0).mul_(-1.0 / scale)
        d.masked_fill_(labels[start:stop].unsqueeze(1) != labels.unsqueeze(0), -math.inf)
        out[start:stop] = torch.logsumexp(d, dim=1)
    return out


def kde_entropy_nats(
    t: torch.Tensor, noise_var: float, bound: str = "upper", chunk_size: int | None = None
) -> float:
    """The pairwise bound on the differential entropy (nats) of ``t [N, d]`` plus noise."""
    scale = kernel_scale(noise_var, bound)
    t64 = t.to(torch.float64)
    n, d = t64.shape
    lse = log_kernel_sums(t64, t64, scale, chunk_size)
    const = 0.5 * d * math.log(2 * math.pi * math.e * positive_float(noise_var, "noise_var"))
    return const - float((lse - math.log(n)).mean())


def kde_information_bits(
    t: torch.Tensor,
    label_sets: list[tuple[torch.Tensor, int]],
    noise_var: float,
    bound: str = "upper",
    chunk_size: int | None = None,
) -> tuple[list[float], float]:
    """``([I(S_1;T), I(S_2;T), ...], H(T))`` in bits, sharing one pass over all pairs.

    ``label_sets`` holds ``(labels, k)``: dense labels ``0..k-1`` of each symbolic variable.
    """
    scale = kernel_scale(noise_var, bound)
    t64 = t.to(torch.float64)
    n, d = t64.shape
    lse_all = log_kernel_sums(t64, t64, scale, chunk_size)
    centred_all = lse_all - math.log(n)
    mis = []
    for labels, k in label_sets:
        counts = torch.bincount(labels, minlength=k).to(torch.float64)
        if k == n:  # every symbol is one sample: the within-class sum is exp(0) = 1
            within = torch.zeros(n, dtype=torch.float64, device=t64.device)
        else:
            within = _within_class_sums(t64, labels, k, scale, chunk_size)
        mi = float(((within - torch.log(counts[labels])) - centred_all).mean())
        mis.append(mi / math.log(2))
    const = 0.5 * d * math.log(2 * math.pi * math.e * positive_float(noise_var, "noise_var"))
    h = (const - float(centred_all.mean())) / math.log(2)
    return mis, h


def kde_mi_bits(
    t: torch.Tensor,
    labels: torch.Tensor,
    k: int,
    noise_var: float,
    bound: str = "upper",
    chunk_size: int | None = None,
) -> tuple[float, float]:
    """``(I(S;T), H(T))`` in bits for continuous ``t [N, d]`` and dense labels ``0..k-1`` of S."""
    mis, h = kde_information_bits(t, [(labels, k)], noise_var, bound, chunk_size)
    return mis[0], h
