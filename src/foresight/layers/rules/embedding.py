r"""Embedding lookups: ``F.embedding`` (``nn.Embedding``, token and position embeddings).

Per example the weight gradient puts the output gradient of each position into the row of its
index -- a :class:`~foresight.layers.contrib.Rows` contribution, never a ``[B, V, D]`` tensor.
``padding_idx`` rows get nothing; ``scale_grad_by_freq`` divides by the index's count *within the
example* (the per-example loss on its own). Indices without a batch (position ids broadcast over
the batch) make the output batch-free: that is a derived tensor, handled where it meets the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from foresight.layers.contrib import Rows
from foresight.layers.registry import Rule, register_rule
from foresight.layers.rules._common import flat_batch, is_batched, is_tracked, pos

__all__ = ["EmbeddingRule"]


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


register_rule(EmbeddingRule())
