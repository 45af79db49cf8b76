"""Helpers shared by the rules."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from foresight.layers.calls import Pos
from foresight.layers.layout import Layout, canonical

__all__ = ["pos", "is_tracked", "is_batched", "flat_batch"]


def pos(x: Any) -> int | None:
    """The flat position of a tensor argument (``None`` for a non-tensor or a missing one)."""
    return int(x) if isinstance(x, Pos) else None


def is_tracked(x: Any, tracked: dict) -> bool:
    p = pos(x)
    return p is not None and p in tracked


def is_batched(x: Any, batched: dict) -> bool:
    p = pos(x)
    return p is not None and p in batched


def flat_batch(t: Tensor, layout: Layout, batch: int, trailing: int) -> Tensor:
    """``[B, N, *last trailing dims]``: every entry of an example that is not in the trailing dims
    counted as one of its N positions (the batch must not be among the trailing dims)."""
    if layout.dim == 0 and t.dim() > trailing and t.shape[0] == batch:  # the common case
        tail = t.shape[t.dim() - trailing :] if trailing else ()
        n = 1
        for s in t.shape[1 : t.dim() - trailing]:
            n *= int(s)
        return t.reshape(batch, n, *tail)
    c = canonical(t, layout, batch)
    inner = c.shape[1 : c.dim() - trailing]
    n = 1
    for s in inner:
        n *= int(s)
    return c.reshape(batch, n, *c.shape[c.dim() - trailing :])
