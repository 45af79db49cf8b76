r"""Elementwise scale and bias parameters: ``x * w`` and ``x + b`` / ``x - b`` with a parameter
(or derived) tensor broadcast over the batch -- Llama's and T5's RMSNorm (``weight * x``),
LayerScale (``x * gamma``), a position embedding or a learned bias added to the activations.

Per example the parameter's gradient is the output gradient (times the other operand, for a scale)
summed over every dimension the parameter is broadcast over.
"""

from __future__ import annotations

import torch

from foresight.layers.contrib import Dense
from foresight.layers.layout import Layout, canonical
from foresight.layers.registry import Rule, register_rule
from foresight.layers.rules._common import is_batched, is_tracked, pos

__all__ = ["ScaleRule", "BiasRule", "reduce_to"]


def reduce_to(x, layout: Layout, batch: int, shape: tuple[int, ...]):
    """``[B, *shape]``: ``x`` (an output-shaped tensor) summed per example over every dimension
    that a tensor of ``shape`` is broadcast over (``shape`` has no batch dimension)."""
    nd = x.dim()
    full = (1,) * (nd - len(shape)) + tuple(shape)
    if full[layout.dim] != 1:
        raise ValueError("a broadcast parameter cannot span the batch dimension")
    c = canonical(x, layout, batch)  # [B, k, *rest]
    rest = full[: layout.dim] + full[layout.dim + 1 :]
    dims = [1] + [i + 2 for i, s in enumerate(rest) if s == 1 and c.shape[i + 2] != 1]
    out = c.sum(dims, keepdim=True)
    return out.reshape(batch, *shape)


def _two(call, tracked, batched, out_layout, b):
    x, y = b["input"], b["other"]
    if is_tracked(x, tracked) and is_batched(y, batched):
        w, a = x, y
    elif is_tracked(y, tracked) and is_batched(x, batched):
        w, a = y, x
    else:
        return None
    wshape = call.args[pos(w)].shape
    nd_out = len(call.outs[0].shape)
    full = (1,) * (nd_out - len(wshape)) + tuple(wshape)
    if len(wshape) > nd_out or full[out_layout.dim] != 1:
        return None
    return pos(a), pos(w)


class ScaleRule(Rule):
    """``x * w`` (either order; ``torch.mul``, ``Tensor.mul``, ``*``, ``*=``)."""

    name = "scale"
    role = "scale"
    funcs = (torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__,
             torch.Tensor.mul_, torch.Tensor.__imul__)
    signature = ("input", "other")

    def match(self, call, tracked, batched, out_layout):
        found = _two(call, tracked, batched, out_layout, self.bound(call))
        if found is None:
            return None
        a, w = found
        return a, {"scale": w}, {}

    def per_example(self, use, act, grad, operands, batch):
        w = operands["scale"]
        return {"scale": Dense(reduce_to(grad * act, use.out_layout, batch, tuple(w.shape)))}


class BiasRule(Rule):
    """``x + b``, ``x - b``, ``b - x`` (``alpha`` honoured; in-place forms too)."""

    name = "bias"
    role = "bias"
    needs_input = False
    funcs = (torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__,
             torch.Tensor.add_, torch.Tensor.__iadd__, torch.sub, torch.Tensor.sub,
             torch.Tensor.__sub__, torch.Tensor.__rsub__, torch.Tensor.sub_,
             torch.Tensor.__isub__)
    signature = ("input", "other")
    defaults = {"alpha": 1}

    def match(self, call, tracked, batched, out_layout):
        b = self.bound(call)
        found = _two(call, tracked, batched, out_layout, b)
        if found is None:
            return None
        a, w = found
        sub = call.name in ("sub", "__sub__", "sub_", "__isub__")
        rsub = call.name == "__rsub__"
        other_is_w = pos(b["other"]) == w
        if rsub:  # b.__rsub__(x) computes x - b
            other_is_w = not other_is_w
            sub = True
        alpha = b.get("alpha", 1)
        sign = 1.0
        if other_is_w:
            sign = -float(alpha) if sub else float(alpha)
        elif sub:
            sign = 1.0
        return a, {"bias": w}, {"sign": sign}

    def per_example(self, use, act, grad, operands, batch):
        w = operands["bias"]
        g = grad * use.options["sign"] if use.options["sign"] != 1 else grad
        return {"bias": Dense(reduce_to(g, use.out_layout, batch, tuple(w.shape)))}


register_rule(ScaleRule())
register_rule(BiasRule())
