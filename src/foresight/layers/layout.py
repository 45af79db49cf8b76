r"""Where the examples of a batch sit inside a tensor.

A model sees a batch of :math:`B` examples along dim 0 of its inputs, but the tensors its layers see
need not keep them there: GPT-2's ``Conv1D`` flattens ``(B, T, C)`` to ``(B*T, C)`` (example
:math:`b` owns rows :math:`bT \dots bT+T-1`), ``nn.MultiheadAttention`` works on ``(T, B, C)`` and
flattens it to ``(T*B, C)`` (example :math:`b` owns rows :math:`b, b+B, b+2B, \dots`). A
:class:`Layout` says which dimension carries the batch and how it is merged with the others:

* ``major`` -- the dimension has :math:`B k` entries and example :math:`b` owns the block
  :math:`[bk, (b+1)k)` (``k = 1``: the plain batch dimension);
* ``minor`` -- example :math:`b` owns the entries :math:`b, b + B, b + 2B, \dots`.

:func:`canonical` turns such a tensor into a batch-first ``[B, k, ...]`` view, which is what the
per-example rules work on. Layouts are found by :mod:`foresight.layers.discover` from two probe
passes (which dimension grows with the batch, and which entries change when only example 0 does).

>>> import torch
>>> x = torch.arange(12).reshape(6, 2)          # 3 examples x 2 positions, merged batch-major
>>> canonical(x, Layout(0, "major"), 3)[1].tolist()
[[4, 5], [6, 7]]
>>> canonical(x, Layout(0, "minor"), 3)[1].tolist()  # example 1 owns rows 1 and 4
[[2, 3], [8, 9]]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Layout", "canonical", "per_example_masked", "batch_size_of", "detect"]


@dataclass(frozen=True)
class Layout:
    """``dim`` carries the batch; ``order`` is ``"major"`` or ``"minor"`` (see the module doc)."""

    dim: int
    order: str = "major"

    def __post_init__(self) -> None:
        if self.order not in ("major", "minor"):
            raise ValueError(f"Layout.order must be 'major' or 'minor', got {self.order!r}")


def _factor(t: Tensor, layout: Layout, batch: int) -> int:
    n = t.shape[layout.dim]
    if batch <= 0 or n % batch:
        raise ValueError(
            f"a tensor of shape {tuple(t.shape)} cannot hold a batch of {batch} along dim "
            f"{layout.dim}"
        )
    return n // batch


def canonical(t: Tensor, layout: Layout, batch: int) -> Tensor:
    """``[B, k, *rest]``: ``t`` with each example's ``k`` entries along ``layout.dim`` first.

    ``rest`` are the other dimensions of ``t`` in their order. A view when possible.
    """
    k = _factor(t, layout, batch)
    x = t.movedim(layout.dim, 0)
    rest = x.shape[1:]
    if layout.order == "major" or k == 1:
        return x.reshape(batch, k, *rest)
    return x.reshape(k, batch, *rest).transpose(0, 1)


def per_example_masked(g: Tensor, layout: Layout, batch: int) -> Tensor:
    """``[B, *g.shape]``: slice ``b`` is ``g`` with every entry not owned by example ``b`` zeroed.

    These are the output gradients of the per-example losses, for a per-example vector-Jacobian
    product through a layer (``is_grads_batched``).
    """
    k = _factor(g, layout, batch)
    n = g.shape[layout.dim]
    owner = torch.arange(n, device=g.device)
    owner = owner // k if layout.order == "major" else owner % batch
    mask = (owner[None, :] == torch.arange(batch, device=g.device)[:, None]).to(g.dtype)
    shape = [batch] + [1] * g.dim()
    shape[1 + layout.dim] = n
    return g.unsqueeze(0) * mask.reshape(shape)


def batch_size_of(obj: object) -> int | None:
    """Leading size of the first tensor in ``obj`` (nested tuples/lists/dicts), or ``None``."""
    for t in _tensors(obj):
        return int(t.shape[0]) if t.dim() > 0 else None
    return None


def _tensors(obj: object):
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def detect(
    shape_a: tuple[int, ...], shape_c: tuple[int, ...], b_a: int, b_c: int, changed: Tensor | None
) -> Layout | None | str:
    """The layout of a tensor seen with ``b_a`` examples (``shape_a``) and ``b_c`` (``shape_c``).

    ``changed`` (bool, ``shape_a``, or already reduced to the entries along the batch dimension)
    marks the entries that changed when only example 0 of the ``b_a``-example batch was perturbed
    (``None`` if not known). Returns a :class:`Layout`,
    ``None`` for a tensor without a batch dimension, or a string saying why it cannot be told.
    """
    if len(shape_a) != len(shape_c):
        return f"its number of dimensions changes with the batch size ({shape_a} vs {shape_c})"
    dims = [d for d, (x, y) in enumerate(zip(shape_a, shape_c)) if x != y]
    if not dims:
        return None
    if len(dims) > 1:
        return f"several of its dimensions change with the batch size ({shape_a} vs {shape_c})"
    d = dims[0]
    if shape_a[d] % b_a or shape_c[d] % b_c or shape_a[d] // b_a != shape_c[d] // b_c:
        return (
            f"its dimension {d} is not a multiple of the batch size ({shape_a[d]} with {b_a} "
            f"examples, {shape_c[d]} with {b_c})"
        )
    k = shape_a[d] // b_a
    if k == 1:
        return Layout(d, "major")
    if changed is None:
        return f"its dimension {d} merges the batch with another dimension of size {k}"
    if changed.dim() != 1 or changed.shape[0] != shape_a[d]:  # a full mask: reduce it
        changed = changed.movedim(d, 0).reshape(shape_a[d], -1).any(1)
    along = changed.nonzero().flatten()
    if along.numel() == 0:
        return (
            f"its dimension {d} merges the batch with another dimension of size {k}, and no entry "
            "changed when one example did"
        )
    if int(along.max()) < k:
        return Layout(d, "major")
    if bool((along % b_a == 0).all()):
        return Layout(d, "minor")
    return f"the entries of one example along its dimension {d} are neither a block nor strided"
