r"""Symbols and plug-in (maximum-likelihood) entropies and mutual information.

Each distinct row of an integer tensor is one symbol. Rows are packed into one ``int64`` code
(mixed radix over the column ranges), re-labelled densely whenever the next column would overflow;
this is exact (no hash collisions). Histograms of the codes then need a ``bincount`` (small
range) or one 1-D sort, never a lexicographic row sort.

The plug-in entropy of labels with counts :math:`n_k` out of :math:`N` is

.. math:: \hat H = -\sum_k \frac{n_k}{N} \log_2 \frac{n_k}{N},

and :math:`\hat I(A;B) = \hat H(A) + \hat H(B) - \hat H(A,B)`.
"""

from __future__ import annotations

import numpy as np
import torch

from foresight.ib._samples import as_samples, is_symbolic

_CODE_LIMIT = 1 << 62


def _dense(code: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Relabel a 1-D int64 code densely as ``0 .. K-1``; returns the labels and ``K``."""
    uniq, inverse = torch.unique(code, return_inverse=True)
    return inverse, int(uniq.numel())


def row_code(s: torch.Tensor, radix: list[int] | None = None) -> tuple[torch.Tensor, int]:
    """One int64 code per row of an integer ``[N, D]`` tensor, equal iff the rows are equal.

    Returns ``(code, card)`` with ``0 <= code < card``. ``radix`` (values of column ``j`` known to
    lie in ``0 .. radix[j]-1``) skips the column minima and maxima.
    """
    s = s.reshape(s.shape[0], -1).to(torch.int64)
    d = s.shape[1]
    if radix is None:
        lo_list = s.amin(dim=0).tolist()
        hi_list = s.amax(dim=0).tolist()
        radix = [hi - lo + 1 for lo, hi in zip(lo_list, hi_list)]  # Python ints: no overflow
        too_wide = torch.tensor([r >= _CODE_LIMIT for r in radix], device=s.device)
        s = s - s.amin(dim=0).masked_fill(too_wide, 0)
        for j in [j for j, r in enumerate(radix) if r >= _CODE_LIMIT]:
            s[:, j], radix[j] = _dense(s[:, j])  # a column spanning most of int64: relabel
    code: torch.Tensor | None = None
    card = 1
    j = 0
    while j < d:
        # Greedily take as many columns as fit into one int64 code together with ``card``.
        start, block_card = j, card
        while j < d and block_card * radix[j] < _CODE_LIMIT:
            block_card *= radix[j]
            j += 1
        if j == start:  # the running code must be compacted before the next column fits
            assert code is not None
            code, card = _dense(code)
            continue
        mult, m = [], 1
        for r in reversed(radix[start:j]):
            mult.append(m)
            m *= r
        mult.reverse()
        block = s[:, start:j]
        if len(mult) == 1:
            part = block[:, 0]
        else:
            part = (block * torch.tensor(mult, dtype=torch.int64, device=s.device)).sum(dim=1)
        code = part if code is None else code * m + part
        card = block_card
    assert code is not None
    return code, card


def grouped_codes(
    s: torch.Tensor, widths: list[int], radix: list[int] | None = None
) -> tuple[torch.Tensor, list[int]] | None:
    """Row codes of several column groups at once: ``(codes [N, len(widths)], cards)``.

    Group ``g`` is the next ``widths[g]`` columns of the integer ``[N, D]`` tensor ``s``; its code
    is the mixed-radix number of its row, as :func:`row_code` would give for one block. Returns
    ``None`` when some group's code would not fit into int64 (use :func:`row_code` per group).
    """
    if radix is None:
        lo = s.amin(dim=0)
        radix = [h - lo_ + 1 for lo_, h in zip(lo.tolist(), s.amax(dim=0).tolist())]
        if any(r >= _CODE_LIMIT for r in radix):
            return None
        s = s - lo
    mult: list[int] = []
    cards: list[int] = []
    group_of: list[int] = []
    start = 0
    for g, width in enumerate(widths):
        m, block = 1, []
        for r in reversed(radix[start : start + width]):
            block.append(m)
            m *= r
        if m >= _CODE_LIMIT:
            return None
        mult += block[::-1]
        cards.append(m)
        group_of += [g] * width
        start += width
    mult_t = torch.tensor(mult, dtype=torch.int64, device=s.device)
    index = torch.tensor(group_of, dtype=torch.int64, device=s.device)
    codes = torch.zeros(s.shape[0], len(widths), dtype=torch.int64, device=s.device)
    return codes.index_add_(1, index, s * mult_t), cards


def paired_entropies(
    a: torch.Tensor, b: torch.Tensor, kb: int
) -> tuple[list[float], list[float], list[int]]:
    """Entropies of many codes and of their pairs with one shared code, from one sort.

    ``a`` is ``[N, M]`` (column ``m`` one code), ``b`` is ``[N]`` in ``0 .. kb-1``, and every
    pair code ``a[:, m] * kb + b`` fits int64. Returns ``(H(A_m), H(A_m, B), distinct A_m)`` for
    each ``m``, in bits. Sorting the pair codes also sorts ``pair // kb = A_m``.

    >>> a, b = torch.tensor([[0, 5], [0, 6], [1, 7], [1, 7]]), torch.tensor([0, 1, 0, 1])
    >>> paired_entropies(a, b, 2)
    ([1.0, 1.5], [2.0, 2.0], [2, 3])
    """
    pairs = (a * kb + b.unsqueeze(1)).t().contiguous()  # [M, N]
    ordered = sort_last(pairs)
    h_ab, _ = _run_entropies(ordered)
    h_a, distinct = _run_entropies(torch.div(ordered, kb, rounding_mode="floor"))
    return h_a, h_ab, distinct


def _run_entropies(ordered: torch.Tensor) -> tuple[list[float], list[int]]:
    """Plug-in entropy (bits) and number of runs of every row of a row-sorted ``[M, N]`` code."""
    m, n = ordered.shape
    if ordered.device.type == "cpu":
        o = ordered.numpy()
        new = np.empty(o.shape, dtype=bool)
        new[:, 0] = True
        np.not_equal(o[:, 1:], o[:, :-1], out=new[:, 1:])
        rows, starts = np.nonzero(new)  # row-major: the runs in order, row by row
        ends = np.empty_like(starts)
        ends[:-1] = starts[1:]
        ends[np.append(rows[1:] != rows[:-1], True)] = n
        p = (ends - starts) / n
        h = -np.bincount(rows, weights=p * np.log2(p), minlength=m)
        return np.maximum(h, 0.0).tolist(), np.bincount(rows, minlength=m).tolist()
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = new.cumsum(dim=1) - 1 + torch.arange(m, device=ordered.device).unsqueeze(1) * n
    counts = torch.bincount(group.reshape(-1), minlength=n * m).reshape(m, n)
    p = counts.to(torch.float64) / n
    h = (-torch.special.xlogy(p, p).sum(dim=1) / np.log(2)).clamp(min=0.0)
    return h.tolist(), new.sum(dim=1).tolist()


def row_labels(s: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Label each distinct row of an integer ``[N, D]`` tensor: ``(labels [N] int64, K)``.

    Equal rows get equal labels; labels are ``0 .. K-1`` where ``K`` is the number of distinct rows.

    >>> row_labels(torch.tensor([[1, 0], [0, 1], [1, 0]]))
    (tensor([1, 0, 1]), 2)
    """
    return _dense(row_code(s)[0])


def sort_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` sorted along its last dimension (numpy's sort on CPU: several times faster)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.detach().numpy(), axis=-1))
    return torch.sort(x, dim=-1).values


def _small(card: int, n: int) -> bool:
    """Whether a code range is small enough for a ``bincount`` histogram."""
    return card <= max(1 << 16, 4 * n)


def counts_of(code: torch.Tensor, card: int) -> torch.Tensor:
    """Nonzero counts of a 1-D code in ``0 .. card-1`` (a ``bincount`` or one sort)."""
    if _small(card, code.numel()):
        counts = torch.bincount(code, minlength=card)
        return counts[counts > 0]
    return torch.unique_consecutive(sort_last(code), return_counts=True)[1]


def entropy_from_counts(counts: torch.Tensor) -> float:
    """Plug-in entropy in bits of a histogram (zero counts are ignored), summed in float64.

    >>> entropy_from_counts(torch.tensor([1, 0, 1, 2]))
    1.5
    """
    c = counts.detach().cpu().numpy().astype(np.float64)
    c = c[c > 0]
    p = c / c.sum()
    return max(float(-(p * np.log2(p)).sum()), 0.0)


def code_entropy(code: torch.Tensor, card: int) -> float:
    """Plug-in entropy in bits of a 1-D code (see :func:`row_code`)."""
    return entropy_from_counts(counts_of(code, card))


def joint_entropies(
    a: torch.Tensor, ka: int, b: torch.Tensor, kb: int
) -> tuple[float, float, float, int]:
    """``(H(A), H(B), H(A,B), number of distinct A)`` in bits from two codes.

    When the pair code ``a * kb + b`` is too wide for a histogram it is sorted once, and the
    counts of A come from the same sorted array (``pair // kb`` is sorted too).
    """
    if ka * kb >= _CODE_LIMIT:
        a, ka = _dense(a)
        b, kb = _dense(b)
    pair, kp = a * kb + b, ka * kb
    counts_b = counts_of(b, kb)
    if _small(kp, pair.numel()):
        counts_ab = torch.bincount(pair, minlength=kp)
        counts_a = counts_ab.reshape(ka, kb).sum(dim=1)
        counts_a, counts_ab = counts_a[counts_a > 0], counts_ab[counts_ab > 0]
    else:
        ordered = sort_last(pair)
        counts_ab = torch.unique_consecutive(ordered, return_counts=True)[1]
        counts_a = torch.unique_consecutive(ordered // kb, return_counts=True)[1]
    return (
        entropy_from_counts(counts_a),
        entropy_from_counts(counts_b),
        entropy_from_counts(counts_ab),
        int(counts_a.numel()),
    )


def code_mi(a: torch.Tensor, ka: int, b: torch.Tensor, kb: int) -> float:
    """Plug-in :math:`I(A;B) = H(A) + H(B) - H(A,B)` in bits from two codes (clamped at 0).

    >>> x = torch.arange(16)
    >>> code_mi(x, 16, x % 4, 4)
    2.0
    """
    h_a, h_b, h_ab, _ = joint_entropies(a, ka, b, kb)
    return max(h_a + h_b - h_ab, 0.0)


def symbols_of(t: torch.Tensor, name: str) -> torch.Tensor:
    """Checked ``[N, D]`` integer tensor of symbols (bool becomes 0/1)."""
    t = as_samples(t, name)
    if not is_symbolic(t):
        raise ValueError(
            f"method='discrete' needs symbols, but {name} is a float tensor ({t.dtype}); "
            "pass an integer/bool tensor, or use method='binning' to discretise it"
        )
    return t.to(torch.int64)
