r"""Weight graphs: the connectivity matrix of a layer, without building it.

A layer's *weight graph* (what :mod:`foresight.ei` measures) is its connectivity matrix
:math:`W` -- one row per input neuron, one column per output neuron: the Jacobian of the layer
without its bias. Rules (:mod:`foresight.layers.rules`) describe it in two ways:

* matrix-free, as a :class:`Connectivity`: the sums :math:`\sum_j f(W_{ij})` along the rows and
  :math:`\sum_i u_i f(W_{ij})` along the columns, for elementwise :math:`f` with :math:`f(0) = 0`
  (a few matrix products or convolutions per layer);
* dense, as the ``(inputs, outputs)`` matrix itself (for custom norms, and as a check).

:class:`Tiled` repeats a graph at every position of a sequence, block-diagonally (a linear layer
applied at every position counted like a 1x1 convolution: ``linear_positions="each"``).

>>> import torch
>>> g = Tiled(MatrixGraph(torch.tensor([[1.0, 2.0]]), "in_out"), 3)   # 1 -> 2, at 3 positions
>>> (g.n_in, g.n_out), [r.tolist() for r in g.rows([lambda w: w])]
((3, 6), [[3.0, 3.0, 3.0]])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "Connectivity",
    "NotMatrixFree",
    "Elementwise",
    "Shape",
    "MatrixGraph",
    "Tiled",
    "features",
    "compute_dtype",
    "dense_jacobian",
    "numel",
    "CHUNK_ELEMENTS",
]

Elementwise = Callable[[Tensor], Tensor]
Shape = tuple[int, ...]

#: Weight entries processed at a time by :class:`MatrixGraph` (bounds the extra memory).
CHUNK_ELEMENTS = 1 << 20
_DENSE_BLOCK_ELEMENTS = 1 << 24


class Connectivity(Protocol):
    """A layer's connectivity matrix :math:`W` (``n_in`` rows, ``n_out`` columns), implicitly.

    Every ``f`` passed in is elementwise with :math:`f(0) = 0`, so that pairs of neurons that are
    not connected contribute nothing.
    """

    n_in: int
    n_out: int

    def rows(self, fns: Sequence[Elementwise]) -> list[Tensor]:
        r"""For each ``f``: the vector :math:`\sum_j f(W_{ij})` over inputs ``i`` (length n_in)."""
        ...

    def cols(self, fn: Elementwise, u: Tensor) -> Tensor:
        r"""The vector :math:`\sum_i u_i f(W_{ij})` over outputs ``j`` (length n_out)."""
        ...


class NotMatrixFree(Exception):
    """Raised by a rule for a configuration it cannot evaluate without the dense matrix."""

    def __init__(self, message: str, n_in: int = -1, n_out: int = -1) -> None:
        super().__init__(message)
        self.n_in, self.n_out = n_in, n_out


def numel(shape: Sequence[int]) -> int:
    """Product of the sizes (1 for ``()``)."""
    return math.prod(int(s) for s in shape)


def compute_dtype(weight: Tensor) -> torch.dtype:
    """float64 stays float64; float32, float16 and bfloat16 are computed in float32."""
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def features(shape: Shape, n_spatial: int) -> Shape:
    """The per-example feature shape ``(C, *spatial)`` of a batched or unbatched shape."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == n_spatial + 2:
        return shape[1:]
    if len(shape) == n_spatial + 1:
        return shape
    raise ValueError(
        f"expected a shape with {n_spatial + 1} (unbatched) or {n_spatial + 2} (batched) "
        f"dimensions, got {shape}"
    )


def dense_jacobian(apply, fin: Shape, fout: Shape, dtype: torch.dtype, device) -> Tensor:
    """``(inputs, outputs)`` Jacobian of a linear map: ``apply`` on blocks of the identity."""
    n_in, n_out = numel(fin), numel(fout)
    out = torch.empty(n_in, n_out, dtype=dtype, device=device)
    block = max(1, _DENSE_BLOCK_ELEMENTS // max(n_in, n_out, 1))
    for start in range(0, n_in, block):
        stop = min(n_in, start + block)
        eye = torch.zeros(stop - start, n_in, dtype=dtype, device=device)
        eye[torch.arange(stop - start, device=device), torch.arange(start, stop, device=device)] = 1
        out[start:stop] = apply(eye.reshape(stop - start, *fin)).reshape(stop - start, n_out)
    return out


@dataclass
class MatrixGraph:
    """A connectivity matrix given by a weight tensor, processed in chunks.

    ``layout="out_in"``: ``weight`` is ``(outputs, inputs)`` (``nn.Linear``, ``F.linear``), the
    connectivity is ``weight.T``; ``layout="in_out"``: ``weight`` is the ``(inputs, outputs)``
    connectivity itself (``addmm``/``matmul`` weights, embedding tables). ``scale`` multiplies
    every entry (``addmm``'s ``alpha``).
    """

    weight: Tensor
    layout: str = "out_in"
    device: torch.device | None = None
    dtype: torch.dtype | None = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.layout not in ("out_in", "in_out"):
            raise ValueError(f"layout must be 'out_in' or 'in_out', got {self.layout!r}")
        if self.weight.dim() != 2:
            raise ValueError(f"a weight graph needs a 2-d weight, got {tuple(self.weight.shape)}")
        if self.device is None:
            self.device = self.weight.device
        if self.dtype is None:
            self.dtype = compute_dtype(self.weight)

    @property
    def n_in(self) -> int:
        return int(self.weight.shape[1 if self.layout == "out_in" else 0])

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0 if self.layout == "out_in" else 1])

    def _chunks(self):
        """Row blocks of the stored weight, on the compute device and dtype."""
        n, width = self.weight.shape
        step = max(1, CHUNK_ELEMENTS // max(1, int(width)))
        for start in range(0, int(n), step):
            w = self.weight[start : start + step].detach().to(self.device, self.dtype)
            yield start, (w * self.scale if self.scale != 1 else w)

    def rows(self, fns: Sequence[Elementwise]) -> list[Tensor]:
        out = [torch.zeros(self.n_in, device=self.device, dtype=self.dtype) for _ in fns]
        if self.layout == "in_out":
            for start, w in self._chunks():
                for acc, f in zip(out, fns):
                    acc[start : start + w.shape[0]] = f(w).sum(1)
            return out
        ones = None
        # in-place gemv accumulation: no small temporaries that would pin freed chunks in the heap
        for _, w in self._chunks():
            if ones is None or ones.shape[0] != w.shape[0]:
                ones = torch.ones(w.shape[0], device=self.device, dtype=self.dtype)
            for acc, f in zip(out, fns):
                acc.addmv_(f(w).t(), ones)
        return out

    def cols(self, fn: Elementwise, u: Tensor) -> Tensor:
        u = u.reshape(-1).to(self.device, self.dtype)
        if self.layout == "in_out":
            out = torch.zeros(self.n_out, device=self.device, dtype=self.dtype)
            for start, w in self._chunks():
                out.addmv_(fn(w).t(), u[start : start + w.shape[0]])
            return out
        out = torch.empty(self.n_out, device=self.device, dtype=self.dtype)
        for start, w in self._chunks():
            torch.mv(fn(w), u, out=out[start : start + w.shape[0]])
        return out

    def dense(self) -> Tensor:
        """The ``(inputs, outputs)`` matrix (a copy, in the compute dtype)."""
        w = self.weight.detach().to(self.device, self.dtype)
        w = w.t() if self.layout == "out_in" else w
        return (w * self.scale if self.scale != 1 else w).clone()


@dataclass
class Tiled:
    """``graph`` repeated block-diagonally at ``positions`` positions (inputs and outputs ordered
    position by position)."""

    graph: Connectivity
    positions: int

    @property
    def n_in(self) -> int:
        return self.graph.n_in * self.positions

    @property
    def n_out(self) -> int:
        return self.graph.n_out * self.positions

    def rows(self, fns: Sequence[Elementwise]) -> list[Tensor]:
        return [r.repeat(self.positions) for r in self.graph.rows(fns)]

    def rows_compact(self, fns: Sequence[Elementwise]):
        """The base graph's row sums, each counted ``positions`` times."""
        compact = getattr(self.graph, "rows_compact", None)
        if compact is not None:
            rows, counts, expand = compact(fns)
        else:
            rows, counts, expand = self.graph.rows(fns), None, _flat
        p = self.positions
        counts = p if counts is None else counts * p
        return rows, counts, lambda x: expand(x).repeat(p)

    def cols(self, fn: Elementwise, u: Tensor) -> Tensor:
        if self.positions == 0:
            return u.new_zeros(0)
        u = u.reshape(self.positions, self.graph.n_in)
        if bool((u == u[:1]).all()):  # the usual case: the same weights at every position
            return self.graph.cols(fn, u[0]).repeat(self.positions)
        return torch.cat([self.graph.cols(fn, row) for row in u])

    def dense_of(self, base: Tensor) -> Tensor:
        """The block-diagonal dense matrix from the base graph's dense matrix."""
        return torch.block_diag(*([base] * self.positions))


def _flat(x: Tensor) -> Tensor:
    return x.reshape(-1)
