"""Entropy and the row norms of the 2020 API: :func:`H`, :func:`lin_norm`, :func:`soft_norm`,
:func:`sig_norm`.

Every norm maps a connectivity matrix ``W`` of shape ``(inputs, outputs)`` (one row per input
neuron, one column per output neuron) to a matrix of the same shape whose rows are the out-weight
distributions :math:`W^{\\text{out}}_i` of the input neurons.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["H", "lin_norm", "soft_norm", "sig_norm"]


def H(x: Tensor, dim: int = 0) -> Tensor:
    r"""Shannon entropy (bits) of ``x`` along ``dim``.

    .. math::
        H(x) = -\sum_k x_k \log_2 x_k,

    where terms that are not a number (:math:`0 \log 0`, negative entries) count as 0, as in the
    2020 package. ``x`` of shape ``(N,)`` gives a 0-d tensor; of shape ``(N, M)`` the entropies of
    the columns (``dim=0``) or of the rows (``dim=1``). ``x`` is not checked to be a distribution
    and is not modified.

    >>> float(H(torch.ones(4) / 4))
    2.0
    >>> H(torch.tensor([[0.5, 0.5], [0.25, 0.75]]), dim=1).tolist()
    [1.0, 0.8112781047821045]
    """
    r = x * torch.log2(x)
    r = torch.where(torch.isnan(r), torch.zeros((), dtype=r.dtype, device=r.device), r)
    return -torch.sum(r, dim=dim)


def lin_norm(W: Tensor) -> Tensor:
    r"""Rows of ``relu(W)`` divided by their sums (rows summing to 0 stay 0).

    .. math::
        P_{ij} = \frac{\max(W_{ij}, 0)}{\sum_k \max(W_{ik}, 0)}

    >>> lin_norm(torch.tensor([[1.0, 3.0], [-1.0, 0.0]])).tolist()
    [[0.25, 0.75], [0.0, 0.0]]
    """
    W = F.relu(W)
    sums = W.sum(dim=1, keepdim=True)
    return W / torch.where(sums == 0, torch.ones_like(sums), sums)


def soft_norm(W: Tensor) -> Tensor:
    r"""Softmax of every row of ``W`` (over the whole dense row).

    .. math::
        P_{ij} = \frac{e^{W_{ij}}}{\sum_k e^{W_{ik}}}

    An output that an input is not connected to has weight 0 and so receives
    :math:`e^0 / \sum_k e^{W_{ik}}`.

    >>> soft_norm(torch.zeros(1, 4)).tolist()
    [[0.25, 0.25, 0.25, 0.25]]
    """
    return F.softmax(W, dim=1)


def sig_norm(W: Tensor) -> Tensor:
    r"""Logistic function of every entry, then each row divided by its sum.

    .. math::
        P_{ij} = \frac{\sigma(W_{ij})}{\sum_k \sigma(W_{ik})}, \qquad
        \sigma(w) = \frac{1}{1 + e^{-w}}

    >>> sig_norm(torch.zeros(2, 2)).tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """
    W = torch.sigmoid(W)
    return W / W.sum(dim=1, keepdim=True)
