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


def _kernel_sums(
    t: torch.Tensor,
    scale: float,
    chunk_size: int | None = None,
    bounds: list[int] | None = None,
    labels: torch.Tensor | None = None,
    masked: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Row sums of the kernel :math:`K_{ij} = e^{-D_{ij}/c}` over all ``j`` and over ``j``'s class.

    ``t`` is ``[N, d]``. Returns ``(log sum_j K_ij, log sum_{j in class(i)} K_ij or None)``.
    With ``bounds``, the rows of ``t`` are sorted by class and class ``c`` occupies rows
    ``bounds[c]:bounds[c+1]``: the within-class sums are segment sums of the same block. With
    ``masked``, other classes are masked out instead (any number of classes, one extra pass).
    Every row includes ``K_ii = 1``, so the sums are at least 1 and need no max-shift. Chunks of
    ``rows x N`` (about ``2**18`` entries) stay in cache.
    """
    n = t.shape[0]
    rows = chunk_rows(n, n, chunk_size, budget=1 << 18)
    sq = (t * t).sum(dim=1) / scale
    neg_sq = -sq.unsqueeze(0)
    bt = t.t() * (2.0 / scale)
    total = torch.empty(n, dtype=torch.float64, device=t.device)
    within = None if bounds is None and not masked else torch.empty_like(total)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        k = torch.mm(t[start:stop], bt)
        k.add_(neg_sq).sub_(sq[start:stop].unsqueeze(1)).clamp_(max=0.0).exp_()
        if bounds is not None and within is not None and labels is not None:
            seg = torch.stack(
                [k[:, lo:hi].sum(dim=1) for lo, hi in zip(bounds[:-1], bounds[1:])], dim=1
            )
            total[start:stop] = seg.sum(dim=1)
            within[start:stop] = seg.gather(1, labels[start:stop].unsqueeze(1)).squeeze(1)
        else:
            total[start:stop] = k.sum(dim=1)
            if within is not None and labels is not None:
                k.masked_fill_(labels[start:stop].unsqueeze(1) != labels.unsqueeze(0), 0.0)
                within[start:stop] = k.sum(dim=1)
    return total.log_(), None if within is None else within.log_()


def _within_class(
    t: torch.Tensor, labels: torch.Tensor, k: int, scale: float, chunk_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log all-sums, log within-class sums)`` per sample, in the original sample order."""
    n = t.shape[0]
    if k > _MANY_CLASSES:
        total, within = _kernel_sums(t, scale, chunk_size, labels=labels, masked=True)
        assert within is not None
        return total, within
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=k)
    bounds = [0, *torch.cumsum(counts, 0).tolist()]
    total_s, within_s = _kernel_sums(
        t.index_select(0, order), scale, chunk_size, bounds, labels.index_select(0, order)
    )
    assert within_s is not None
    total = torch.empty(n, dtype=torch.float64, device=t.device)
    within = torch.empty_like(total)
    total[order] = total_s
    within[order] = within_s
    return total, within


def _working(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float64)


def kde_entropy_nats(
    t: torch.Tensor, noise_var: float, bound: str = "upper", chunk_size: int | None = None
) -> float:
    """The pairwise bound on the differential entropy (nats) of ``t [N, d]`` plus noise."""
    scale = kernel_scale(noise_var, bound)
    t64 = _working(t)
    n, d = t64.shape
    lse, _ = _kernel_sums(t64, scale, chunk_size)
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
    t64 = _working(t)
    n, d = t64.shape
    lse_all: torch.Tensor | None = None
    withins: list[torch.Tensor | None] = []
    for labels, k in label_sets:
        if k == n:  # every symbol is one sample: the within-class sum is K_ii = 1
            withins.append(torch.zeros(n, dtype=torch.float64, device=t64.device))
        elif k == 1:  # one class: within-class sums are the full sums
            withins.append(None)
        else:
            total, within = _within_class(t64, labels.to(t64.device), k, scale, chunk_size)
            lse_all = total if lse_all is None else lse_all
            withins.append(within)
    if lse_all is None:
        lse_all, _ = _kernel_sums(t64, scale, chunk_size)
    centred_all = lse_all - math.log(n)
    mis = []
    for (labels, k), within in zip(label_sets, withins):
        if within is None:
            mis.append(0.0)
            continue
        counts = torch.bincount(labels.to(t64.device), minlength=k).to(torch.float64)
        log_counts = torch.log(counts)[labels.to(t64.device)]
        mis.append(float(((within - log_counts) - centred_all).mean()) / math.log(2))
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
