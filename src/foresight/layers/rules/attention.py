r"""``nn.MultiheadAttention``, described as a module (:mod:`foresight.layers.modules`).

Its forward is one ``F.multi_head_attention_forward`` call that reads every parameter; between
the two projections the attention itself (softmax of :math:`QK^\top`) has no weights. Its weight
graphs are the two projections:

* the input projection :math:`x \mapsto (q, k, v)`, ``in_proj_weight`` of shape :math:`(3E, E)`:
  an :math:`E \to 3E` graph (with ``kdim``/``vdim`` different from ``embed_dim``, three graphs
  ``q_proj``, ``k_proj``, ``v_proj`` of the separate weights);
* the output projection ``out_proj`` (:math:`E \to E`);

each counted once (or at every position with ``linear_positions="each"``). For the causal
measures each projection is an affine map of its own (with ``in_proj_bias`` and
``out_proj.bias``). ``bias_k``/``bias_v`` (``add_bias_kv``) are biases.

The per-example gradients of these parameters go through the exact per-operation fallback.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from foresight.layers.graphs import MatrixGraph, Shape
from foresight.layers.modules import register_module

__all__ = ["attention_projections"]


def attention_projections(module: nn.MultiheadAttention) -> list[tuple[str, Tensor, Tensor | None]]:
    """``[(name, weight (out, in), bias or None), ...]`` of the projections, in order."""
    e = module.embed_dim
    bias = module.in_proj_bias
    out = []
    if module._qkv_same_embed_dim:
        out.append(("in_proj", module.in_proj_weight, bias))
    else:
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            b = bias[i * e : (i + 1) * e] if bias is not None else None
            out.append((name, getattr(module, f"{name}_weight"), b))
    out.append(("out_proj", module.out_proj.weight, module.out_proj.bias))
    return out


def _graphs(module, in_shape: Shape, out_shape: Shape, device, dtype):
    if in_shape[-1] != module.embed_dim and module._qkv_same_embed_dim:
        raise ValueError(f"shapes {in_shape} -> {out_shape} do not match {module!r}")
    return [(f".{name}", MatrixGraph(w, "out_in", device, dtype))
            for name, w, _ in attention_projections(module)]


def _dense(module, in_shape: Shape, out_shape: Shape):
    return [w.detach().t().clone() for _, w, _ in attention_projections(module)]


def _positions(module, in_shape: Shape) -> int:
    if len(in_shape) < 3:  # unbatched (T, E)
        return int(in_shape[0]) if len(in_shape) == 2 else 1
    return int(in_shape[1] if module.batch_first else in_shape[0])


def _affine(module, input_shape):
    """One ``(suffix, (W, b, input_shape))`` per projection."""
    maps = []
    for name, w, b in attention_projections(module):
        w = w.detach()
        bias = b.detach().clone() if b is not None else torch.zeros(
            w.shape[0], dtype=w.dtype, device=w.device)
        maps.append((f".{name}", (w.t().clone(), bias, (int(w.shape[1]),))))
    return maps


register_module(nn.MultiheadAttention, graph=_graphs, dense=_dense, affine=_affine,
                positions=_positions)
