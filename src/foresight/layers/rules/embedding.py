r"""Embedding lookups: ``F.embedding`` (``nn.Embedding``, token and position embeddings).

Per example the weight gradient puts the output gradient of each position into the row of its
index -- a :class:`~foresight.layers.contrib.Rows` contribution, never a ``[B, V, D]`` tensor.
``padding_idx`` rows get nothing; ``scale_grad_by_freq`` divides by the index's count *within the
example* (the per-example loss on its own). Indices without a batch (position ids broadcast over
the batch) make the output batch-free: that is a derived tensor, handled where it meets the batch.

**Weight graph** (:mod:`foresight.ei`): the lookup is the linear map from the one-hot vocabulary to
the features, so its connectivity matrix is the table itself, ``V`` inputs by ``D`` outputs
(``padding_idx`` included: its row is a row of the table), counted once per call site or at every
position (``linear_positions="each"``). A lookup has no affine map on continuous inputs: the
causal measures pass over it, naming it. ``nn.Embedding`` is also registered as a module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from foresight.layers.contrib import Rows
from foresight.layers.graphs import MatrixGraph, Shape, numel
from foresight.layers.modules import effective, register_module
from foresight.layers.registry import Rule, register_rule
from foresight.layers.rules._common import flat_batch, is_batched, is_tracked, pos

__all__ = ["EmbeddingRule", "embedding_create_matrix"]


class EmbeddingRule(Rule):
    """``F.embedding(input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq,
    sparse)``."""

    name = "embedding"
    role = "weight"
    funcs = (F.embedding,)
    signature = ("input", "weight", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq",
                 "sparse")
    defaults = {"padding_idx": None, "max_norm": None, "norm_type": 2.0,
                "scale_grad_by_freq": False, "sparse": False}

    def match(self, call, tracked, batched, out_layout):
        b = self.bound(call)
        idx, w = b["input"], b["weight"]
        if not (is_batched(idx, batched) and is_tracked(w, tracked)):
            return None
        rows = int(call.args[pos(w)].shape[0])
        pad = b["padding_idx"]
        if pad is not None and pad < 0:
            pad += rows
        return pos(idx), {"weight": pos(w)}, {
            "padding_idx": pad, "scale_grad_by_freq": bool(b["scale_grad_by_freq"]), "rows": rows,
        }

    def per_example(self, use, act, grad, operands, batch):
        idx = flat_batch(act, use.in_layout, batch, 0).long()
        g = flat_batch(grad, use.out_layout, batch, 1)
        rows = use.options["rows"]
        pad = use.options.get("padding_idx")
        if pad is not None:
            g = g * (idx != pad).unsqueeze(-1).to(g.dtype)
        if use.options.get("scale_grad_by_freq"):
            keys = torch.arange(batch, device=idx.device)[:, None] * rows + idx
            _, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
            g = g / counts[inverse].to(g.dtype).unsqueeze(-1)
        return {"weight": Rows(idx, g, rows)}

    def ei_graph(self, use, operands, device, dtype):
        return MatrixGraph(operands["weight"], "in_out", device, dtype)

    def ei_dense(self, use, operands):
        return MatrixGraph(operands["weight"], "in_out").dense()

    def ei_positions(self, use):
        return numel(use.in_shape)


register_rule(EmbeddingRule())


def embedding_create_matrix(module: nn.Embedding, in_shape: Shape, out_shape: Shape) -> Tensor:
    """Dense ``(num_embeddings, embedding_dim)`` connectivity of ``nn.Embedding``: the table.

    >>> tuple(embedding_create_matrix(torch.nn.Embedding(5, 3), (1, 7), (1, 7, 3)).shape)
    (5, 3)
    """
    weight = effective(module).detach()
    if out_shape[-1] != weight.shape[1]:
        raise ValueError(f"shapes {in_shape} -> {out_shape} do not match {module!r}")
    return weight.clone()


def _embedding_module_graph(module, in_shape, out_shape, device, dtype) -> MatrixGraph:
    weight = effective(module)
    if out_shape[-1] != weight.shape[1]:
        raise ValueError(f"shapes {in_shape} -> {out_shape} do not match {module!r}")
    return MatrixGraph(weight, "in_out", device, dtype)


def _embedding_module_positions(module, in_shape) -> int:
    return numel(in_shape[1:])


register_module(nn.Embedding, graph=_embedding_module_graph, dense=embedding_create_matrix,
                positions=_embedding_module_positions)
