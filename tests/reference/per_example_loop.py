"""Brute-force per-example gradients: one autograd call per example (the definition itself)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


def per_example_grads(
    model: nn.Module, loss_fn: Callable[[Any, Any], Tensor], inputs: Any, targets: Tensor
) -> list[dict[str, Tensor]]:
    """``[{name: d loss_fn(model(x[i:i+1]), y[i:i+1]) / d param}]`` for every example ``i``."""
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out = []
    for i in range(args[0].shape[0]):
        loss = loss_fn(model(*(x[i : i + 1] for x in args)), targets[i : i + 1])
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        out.append({n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named, grads)})
    return out


def per_example_sq_norms_loop(
    model: nn.Module, loss_fn: Callable[[Any, Any], Tensor], inputs: Any, targets: Tensor
) -> Tensor:
    """``[B]`` squared norms of the per-example gradients over all trainable parameters."""
    grads = per_example_grads(model, loss_fn, inputs, targets)
    return torch.stack([sum(g.double().square().sum() for g in d.values()) for d in grads])


def per_example_param_sq_norms_loop(
    model: nn.Module, loss_fn: Callable[[Any, Any], Tensor], inputs: Any, targets: Tensor
) -> dict[str, Tensor]:
    """``{name: [B]}`` per-parameter squared norms."""
    grads = per_example_grads(model, loss_fn, inputs, targets)
    return {n: torch.stack([d[n].double().square().sum() for d in grads]) for n in grads[0]}
