"""``nn.Linear``: the connectivity matrix is ``weight.T``.

As in the 2020 package, a ``Linear`` layer applied to inputs with extra leading dimensions
(e.g. a sequence ``(B, T, features)``) is counted once, as its ``in_features x out_features``
weight graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from foresight.ei.registry import Elementwise, Shape, register_layer

__all__ = ["linear_create_matrix", "LinearGraph"]

_CHUNK_ELEMENTS = 1 << 20  # weight entries processed at a time (bounds the extra memory)


def linear_create_matrix(module: nn.Linear, in_shape: Shape, out_shape: Shape) -> Tensor:
    """Dense ``(in_features, out_features)`` connectivity matrix of ``nn.Linear``: ``weight.T``.

    >>> m = torch.nn.Linear(3, 2)
    >>> tuple(linear_create_matrix(m, (1, 3), (1, 2)).shape)
    (3, 2)
    """
    weight = module.weight.detach()
    if in_shape[-1] != weight.shape[1] or out_shape[-1] != weight.shape[0]:
        raise ValueError(
            f"shapes {in_shape} -> {out_shape} do not match Linear{tuple(weight.shape[::-1])}"
        )
    return weight.t().clone()


@dataclass
class LinearGraph:
    """Matrix-free view of ``weight.T`` (processed in row chunks of the weight)."""

    weight: Tensor
    device: torch.device
    dtype: torch.dtype

    @property
    def n_in(self) -> int:
        return int(self.weight.shape[1])

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0])

    def _chunks(self):
        step = max(1, _CHUNK_ELEMENTS // max(1, self.n_in))
        for start in range(0, self.n_out, step):
            yield self.weight[start : start + step].detach().to(self.device, self.dtype)

    def rows(self, fns: Sequence[Elementwise]) -> list[Tensor]:
        # in-place gemv accumulation: no small temporaries that would pin freed chunks in the heap
        out = [torch.zeros(self.n_in, device=self.device, dtype=self.dtype) for _ in fns]
        ones = None
        for w in self._chunks():
            if ones is None or ones.shape[0] != w.shape[0]:
                ones = torch.ones(w.shape[0], device=self.device, dtype=self.dtype)
            for acc, f in zip(out, fns):
                acc.addmv_(f(w).t(), ones)
        return out

    def cols(self, fn: Elementwise, u: Tensor) -> Tensor:
        u = u.reshape(-1).to(self.dtype)
        out = torch.empty(self.n_out, device=self.device, dtype=self.dtype)
        start = 0
        for w in self._chunks():
            torch.mv(fn(w), u, out=out[start : start + w.shape[0]])
            start += w.shape[0]
        return out


@register_layer(nn.Linear, dense=linear_create_matrix)
def _linear_rule(
    module: nn.Linear, in_shape: Shape, out_shape: Shape, device: torch.device, dtype: torch.dtype
) -> LinearGraph:
    if in_shape[-1] != module.in_features or out_shape[-1] != module.out_features:
        raise ValueError(
            f"shapes {in_shape} -> {out_shape} do not match "
            f"Linear({module.in_features}, {module.out_features})"
        )
    return LinearGraph(module.weight, device, dtype)
