"""Brute-force per-example gradients through the *batched* graph: one backward pass per example.

The per-example loop (``per_example_loop.py``) runs the model on each example alone, which is the
definition when the forward pass is deterministic. With dropout in training mode each call draws
new masks, so the loop would compare different networks; here the batch runs once (one set of
masks), the per-example losses are read off a ``reduction="none"`` loss, and each example's
gradient is one ``autograd.grad`` call on that same graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


def per_example_param_sq_norms_graph(
    model: nn.Module,
    per_example_loss: Callable[[Any, Any], Tensor],
    args: tuple[Any, ...],
    targets: Tensor,
    seed: int,
) -> dict[str, Tensor]:
    """``{name: [B]}`` squared norms of ``d per_example_loss(model(*args), targets)[b] / d param``,
    with the random state seeded by ``seed`` before the forward pass."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    torch.manual_seed(seed)
    losses = per_example_loss(model(*args), targets)
    out: dict[str, list[Tensor]] = {n: [] for n, _ in named}
    for b in range(losses.shape[0]):
        grads = torch.autograd.grad(losses[b], [p for _, p in named], retain_graph=True,
                                    allow_unused=True)
        for (n, _), g in zip(named, grads):
            out[n].append(torch.zeros((), dtype=torch.float64) if g is None
                          else g.double().square().sum())
    return {n: torch.stack(v) for n, v in out.items()}
