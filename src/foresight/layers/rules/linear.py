r"""Linear maps with a parameter weight: ``F.linear`` (``nn.Linear`` and anything calling it),
``torch.addmm`` with an ``(in, out)`` weight (GPT-2's ``Conv1D``), and ``x @ W`` / ``torch.mm``.

Per example :math:`b`, with :math:`A_b \in \mathbb{R}^{T \times I}` the inputs at the example's
:math:`T` positions and :math:`G_b \in \mathbb{R}^{T \times K}` the output gradients, the weight's
gradient is :math:`G_b^\top A_b` (``F.linear``, weight ``(out, in)``) or :math:`A_b^\top G_b`
(``addmm``/``matmul``, weight ``(in, out)``), an :class:`~foresight.layers.contrib.Outer`
contribution; the bias's is :math:`\sum_t G_{bt}`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from foresight.layers.contrib import Dense, Outer
from foresight.layers.registry import Rule, register_rule
from foresight.layers.rules._common import flat_batch, is_batched, is_tracked, pos

__all__ = ["LinearRule", "AddmmRule", "MatmulRule"]


def _last_dim_free(layout, ndim: int) -> bool:
    return layout.dim != ndim - 1


class LinearRule(Rule):
    """``F.linear(input, weight, bias)``: weight ``(out, in)``, input ``[..., in]``."""

    name = "linear"
    role = "weight"
    funcs = (F.linear,)
    signature = ("input", "weight", "bias")
    defaults = {"bias": None}

    def match(self, call, tracked, batched, out_layout):
        b = self.bound(call)
        x, w, bias = b["input"], b["weight"], b["bias"]
        if not (is_batched(x, batched) and is_tracked(w, tracked)):
            return None
        if bias is not None and not is_tracked(bias, tracked):
            return None
        layout = batched[pos(x)]
        if not _last_dim_free(layout, len(call.args[pos(x)].shape)) or layout != out_layout:
            return None
        if len(call.args[pos(w)].shape) != 2:
            return None
        slots = {"weight": pos(w)}
        if bias is not None:
            slots["bias"] = pos(bias)
        return pos(x), slots, {"weight_layout": "out_in"}

    def per_example(self, use, act, grad, operands, batch):
        a = flat_batch(act, use.in_layout, batch, 1)
        g = flat_batch(grad, use.out_layout, batch, 1)
        out = {"weight": Outer(g, a)}
        if "bias" in operands:
            out["bias"] = Dense(g.sum(1))
        return out


class AddmmRule(Rule):
    """``torch.addmm(bias, x, weight, beta=, alpha=)`` with weight ``(in, out)``."""

    name = "linear"
    role = "weight"
    funcs = (torch.addmm, torch.Tensor.addmm)
    signature = ("input", "mat1", "mat2")
    defaults = {"beta": 1, "alpha": 1}

    def match(self, call, tracked, batched, out_layout):
        b = self.bound(call)
        bias, x, w = b["input"], b["mat1"], b["mat2"]
        if not (is_batched(x, batched) and is_tracked(w, tracked)):
            return None
        if not is_tracked(bias, tracked) and pos(bias) is not None:
            return None
        layout = batched[pos(x)]
        if layout.dim != 0 or out_layout.dim != 0 or layout != out_layout:
            return None
        slots = {"weight": pos(w)}
        if is_tracked(bias, tracked):
            slots["bias"] = pos(bias)
        return pos(x), slots, {"weight_layout": "in_out", "alpha": b["alpha"], "beta": b["beta"]}

    def per_example(self, use, act, grad, operands, batch):
        a = flat_batch(act, use.in_layout, batch, 1)
        g = flat_batch(grad, use.out_layout, batch, 1)
        alpha, beta = use.options.get("alpha", 1), use.options.get("beta", 1)
        out = {"weight": Outer(a, g * alpha if alpha != 1 else g)}
        if "bias" in operands:
            s = g.sum(1)
            bias_shape = operands["bias"].shape
            if len(bias_shape) == 2:  # a (1, out) bias broadcast over the rows
                s = s.unsqueeze(1)
            out["bias"] = Dense(s * beta if beta != 1 else s)
        return out


class MatmulRule(Rule):
    """``x @ W`` (``torch.matmul``, ``torch.mm``) with a 2-D weight ``(in, out)`` on the right."""

    name = "linear"
    role = "weight"
    funcs = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm,
             torch.Tensor.mm)
    signature = ("input", "other")

    def match(self, call, tracked, batched, out_layout):
        b = self.bound(call)
        x, w = b["input"], b["other"]
        if not (is_batched(x, batched) and is_tracked(w, tracked)):
            return None
        if len(call.args[pos(w)].shape) != 2:
            return None
        layout = batched[pos(x)]
        nd = len(call.args[pos(x)].shape)
        if nd < 2 or not _last_dim_free(layout, nd) or layout != out_layout:
            return None
        return pos(x), {"weight": pos(w)}, {"weight_layout": "in_out"}

    def per_example(self, use, act, grad, operands, batch):
        a = flat_batch(act, use.in_layout, batch, 1)
        g = flat_batch(grad, use.out_layout, batch, 1)
        return {"weight": Outer(a, g)}


register_rule(LinearRule())
register_rule(AddmmRule())
register_rule(MatmulRule())
