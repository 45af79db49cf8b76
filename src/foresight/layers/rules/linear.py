r"""Linear maps with a parameter weight: ``F.linear`` (``nn.Linear`` and anything calling it),
``torch.addmm`` with an ``(in, out)`` weight (GPT-2's ``Conv1D``), and ``x @ W`` / ``torch.mm``.

Per example :math:`b`, with :math:`A_b \in \mathbb{R}^{T \times I}` the inputs at the example's
:math:`T` positions and :math:`G_b \in \mathbb{R}^{T \times K}` the output gradients, the weight's
gradient is :math:`G_b^\top A_b` (``F.linear``, weight ``(out, in)``) or :math:`A_b^\top G_b`
(``addmm``/``matmul``, weight ``(in, out)``), an :class:`~foresight.layers.contrib.Outer`
contribution; the bias's is :math:`\sum_t G_{bt}`.

The weight graph (:mod:`foresight.ei`) is the ``(in, out)`` connectivity matrix -- ``weight.T``
for ``F.linear``, the weight itself for ``addmm``/``matmul`` (times ``alpha``) -- counted once per
call site (the 2020 convention) or at every position of a sequence
(``linear_positions="each"``); the causal affine map is the same matrix with the bias.
``nn.Linear`` is also registered as a module (:mod:`foresight.layers.modules`), for the 2020
``foresight.ei.VALID_MODULES`` API.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from foresight.layers.contrib import Dense, Outer
from foresight.layers.graphs import MatrixGraph, Shape, numel
from foresight.layers.modules import effective, register_module
from foresight.layers.registry import Rule, register_rule
from foresight.layers.rules._common import flat_batch, is_batched, is_tracked, pos

__all__ = [
    "LinearRule", "AddmmRule", "MatmulRule", "LinearGraph", "linear_create_matrix",
    "matrix_affine",
]


def LinearGraph(weight: Tensor, device=None, dtype=None) -> MatrixGraph:  # noqa: N802
    """Matrix-free view of ``weight.T`` for an ``(out, in)`` weight (``nn.Linear``)."""
    return MatrixGraph(weight, "out_in", device, dtype)


def _positions(in_shape: Shape) -> int:
    """Positions of a linear map applied along the last dimension of a per-example input."""
    return numel(in_shape[:-1])


def matrix_affine(
    w_in_out: Tensor, bias: Tensor | None, input_shape, n_in: int, what: str
) -> tuple[Tensor, Tensor, Shape]:
    """``(W, b, (n_in,))`` of a matrix layer (``input_shape`` must have ``n_in`` entries)."""
    if input_shape is not None and math.prod(input_shape) != n_in:
        raise ValueError(
            f"input_shape {tuple(input_shape)} has {math.prod(input_shape)} elements but the "
            f"{what} layer has in_features={n_in}; omit input_shape for {what} layers"
        )
    w = w_in_out.detach().clone()
    b = (
        bias.detach().reshape(-1).clone()
        if bias is not None
        else torch.zeros(w.shape[1], dtype=w.dtype, device=w.device)
    )
    return w, b, (n_in,)


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

    def ei_graph(self, use, operands, device, dtype):
        return MatrixGraph(operands["weight"], "out_in", device, dtype)

    def ei_dense(self, use, operands):
        return MatrixGraph(operands["weight"], "out_in").dense()

    def ei_positions(self, use):
        return _positions(use.in_shape)

    def affine(self, use, operands, input_shape=None):
        w = operands["weight"]
        return matrix_affine(w.t(), operands.get("bias"), input_shape, int(w.shape[1]), "linear")


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

    def ei_graph(self, use, operands, device, dtype):
        return MatrixGraph(operands["weight"], "in_out", device, dtype,
                           float(use.options.get("alpha", 1)))

    def ei_dense(self, use, operands):
        return MatrixGraph(operands["weight"], "in_out",
                           scale=float(use.options.get("alpha", 1))).dense()

    def ei_positions(self, use):
        return _positions(use.in_shape)

    def affine(self, use, operands, input_shape=None):
        w = operands["weight"] * float(use.options.get("alpha", 1))
        bias = operands.get("bias")
        if bias is not None:
            bias = bias * float(use.options.get("beta", 1))
        return matrix_affine(w, bias, input_shape, int(w.shape[0]), "addmm")


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

    def ei_graph(self, use, operands, device, dtype):
        return MatrixGraph(operands["weight"], "in_out", device, dtype)

    def ei_dense(self, use, operands):
        return MatrixGraph(operands["weight"], "in_out").dense()

    def ei_positions(self, use):
        return _positions(use.in_shape)

    def affine(self, use, operands, input_shape=None):
        w = operands["weight"]
        return matrix_affine(w, None, input_shape, int(w.shape[0]), "matmul")


register_rule(LinearRule())
register_rule(AddmmRule())
register_rule(MatmulRule())


# ------------------------------------------------------------------ nn.Linear as a module


def linear_create_matrix(module: nn.Linear, in_shape: Shape, out_shape: Shape) -> Tensor:
    """Dense ``(in_features, out_features)`` connectivity matrix of ``nn.Linear``: ``weight.T``.

    >>> m = torch.nn.Linear(3, 2)
    >>> tuple(linear_create_matrix(m, (1, 3), (1, 2)).shape)
    (3, 2)
    """
    weight = effective(module).detach()
    if in_shape[-1] != weight.shape[1] or out_shape[-1] != weight.shape[0]:
        raise ValueError(
            f"shapes {in_shape} -> {out_shape} do not match Linear{tuple(weight.shape[::-1])}"
        )
    return weight.t().clone()


def _linear_module_graph(module, in_shape, out_shape, device, dtype) -> MatrixGraph:
    weight = effective(module)
    if in_shape[-1] != weight.shape[1] or out_shape[-1] != weight.shape[0]:
        raise ValueError(
            f"shapes {in_shape} -> {out_shape} do not match "
            f"Linear({weight.shape[1]}, {weight.shape[0]})"
        )
    return MatrixGraph(weight, "out_in", device, dtype)


def _linear_module_affine(layer, input_shape):
    w = effective(layer)
    return matrix_affine(w.t(), layer.bias, input_shape, int(w.shape[1]), "Linear")


def _linear_module_positions(module, in_shape) -> int:
    return numel(in_shape[1:-1]) if len(in_shape) >= 2 else 1


register_module(nn.Linear, graph=_linear_module_graph, dense=linear_create_matrix,
                affine=_linear_module_affine, positions=_linear_module_positions)
