r"""Symbols and plug-in (maximum-likelihood) entropies and mutual information.

Each distinct row of an integer tensor is one symbol. Rows are turned into integer labels
``0 .. K-1`` by packing the columns into one ``int64`` code (mixed radix) wherever the product of
the column ranges fits, re-labelling densely whenever it would overflow; this is exact (no hash
collisions) and needs a single 1-D sort instead of a lexicographic row sort.

The plug-in entropy of labels with counts :math:`n_k` out of :math:`N` is

.. math:: \hat H = -\sum_k \frac{n_k}{N} \log_2 \frac{n_k}{N},

and :math:`\hat I(A;B) = \hat H(A) + \hat H(B) - \hat H(A,B)`.
"""

from __future__ import annotations

import torch

from foresight.ib._samples import as_samples, is_symbolic, same_length

_CODE_LIMIT = 1 << 62


def _dense(code: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Relabel a 1-D int64 code densely as ``0 .. K-1``; returns the labels and ``K``."""
    uniq, inverse = torch.unique(code, return_inverse=True)
    return inverse, int(uniq.numel())


def row_labels(symbols: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Label each distinct row of an integer ``[N, D]`` tensor: ``(labels [N] int64, K)``.

    Equal rows get equal labels; labels are ``0 .. K-1`` where ``K`` is the number of distinct rows.

    >>> row_labels(torch.tensor([[1, 0], [0, 1], [1, 0]]))
    (tensor([1, 0, 1]), 2)
    """
    s = symbols.reshape(symbols.shape[0], -1).to(torch.int64)
    d = s.shape[1]
    lo_list = s.amin(dim=0).tolist()
    hi_list = s.amax(dim=0).tolist()
    radix_list = [hi - lo + 1 for lo, hi in zip(lo_list, hi_list)]  # Python ints: no overflow
    wide = [j for j, r in enumerate(radix_list) if r >= _CODE_LIMIT]
    too_wide = torch.tensor([r >= _CODE_LIMIT for r in radix_list], device=s.device)
    s = s - s.amin(dim=0).masked_fill(too_wide, 0)
    for j in wide:  # a column spanning most of int64 is relabelled densely first
        s[:, j], radix_list[j] = _dense(s[:, j])
    code: torch.Tensor | None = None
    card = 1
    j = 0
    while j < d:
        # Greedily take as many columns as fit into one int64 code together with ``card``.
        start, block_card = j, card
        while j < d and block_card * radix_list[j] < _CODE_LIMIT:
            block_card *= radix_list[j]
            j += 1
        if j == start:  # the running code must be compacted before the next column fits
            assert code is not None
            code, card = _dense(code)
            continue
        mult, m = [], 1
        for r in reversed(radix_list[start:j]):
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
    return _dense(code)


def entropy_from_counts(counts: torch.Tensor) -> float:
    """Plug-in entropy in bits of a histogram (zero counts are ignored).

    >>> entropy_from_counts(torch.tensor([1, 1, 2]))
    1.5
    """
    c = counts.to(torch.float64)
    c = c[c > 0]
    p = c / c.sum()
    return max(float(-(p * torch.log2(p)).sum()), 0.0)


def entropy_of_labels(labels: torch.Tensor) -> float:
    """Plug-in entropy in bits of 1-D integer labels."""
    _, counts = torch.unique(labels, return_counts=True)
    return entropy_from_counts(counts)


def joint_labels(a: torch.Tensor, ka: int, b: torch.Tensor, kb: int) -> torch.Tensor:
    """One label per distinct pair ``(a_i, b_i)`` of dense labels (``a < ka``, ``b < kb``)."""
    if ka * kb < _CODE_LIMIT:
        return a * kb + b
    return row_labels(torch.stack([a, b], dim=1))[0]


def discrete_mi_from_labels(a: torch.Tensor, ka: int, b: torch.Tensor, kb: int) -> float:
    """Plug-in :math:`I(A;B)` in bits from dense labels (clamped at 0 against rounding)."""
    h = entropy_of_labels(a) + entropy_of_labels(b) - entropy_of_labels(joint_labels(a, ka, b, kb))
    return max(h, 0.0)


def symbols_of(t: torch.Tensor, name: str) -> torch.Tensor:
    """Checked ``[N, D]`` integer tensor of symbols (bool becomes 0/1)."""
    t = as_samples(t, name)
    if not is_symbolic(t):
        raise ValueError(
            f"method='discrete' needs symbols, but {name} is a float tensor ({t.dtype}); "
            "pass an integer/bool tensor, or use method='binning' to discretise it"
        )
    return t.to(torch.int64)


def discrete_mutual_information(x: torch.Tensor, y: torch.Tensor) -> float:
    r"""Plug-in mutual information in bits between two symbol tensors.

    .. math:: \hat I(X;Y) = \hat H(X) + \hat H(Y) - \hat H(X, Y)

    >>> x = torch.arange(16)
    >>> discrete_mutual_information(x, x % 4)
    2.0
    """
    xs, ys = symbols_of(x, "x"), symbols_of(y, "y")
    same_length(xs, ys)
    a, ka = row_labels(xs)
    b, kb = row_labels(ys)
    return discrete_mi_from_labels(a, ka, b, kb)


def discrete_entropy(x: torch.Tensor) -> float:
    """Plug-in entropy in bits of a symbol tensor (each distinct row one symbol).

    >>> discrete_entropy(torch.tensor([0, 0, 1, 1]))
    1.0
    """
    labels, _ = row_labels(symbols_of(x, "x"))
    return entropy_of_labels(labels)
