"""A full, independent snapshot of a model for "model untouched" assertions."""

from __future__ import annotations

import torch
from torch import nn


def snapshot(model: nn.Module) -> dict:
    """Everything a metric must leave as it was, copied."""
    return {
        "params": {k: v.detach().clone() for k, v in model.named_parameters()},
        "buffers": {k: v.detach().clone() for k, v in model.named_buffers()},
        "grads": {
            k: (None if v.grad is None else v.grad.detach().clone(), id(v.grad))
            for k, v in model.named_parameters()
        },
        "requires_grad": {k: v.requires_grad for k, v in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "hooks": {
            k: (
                len(m._forward_hooks),
                len(m._forward_pre_hooks),
                len(m._backward_hooks),
                len(getattr(m, "_backward_pre_hooks", {})),
            )
            for k, m in model.named_modules()
        },
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    """Assert ``model`` matches a :func:`snapshot` taken earlier, bit for bit."""
    after = snapshot(model)
    for k, v in before["params"].items():
        assert torch.equal(v, after["params"][k]), f"parameter {k} changed"
    for k, v in before["buffers"].items():
        assert torch.equal(v, after["buffers"][k]), f"buffer {k} changed"
    for k, (g, gid) in before["grads"].items():
        g2, gid2 = after["grads"][k]
        assert (g is None) == (g2 is None), f".grad of {k} appeared or vanished"
        if g is not None:
            assert torch.equal(g, g2), f".grad of {k} changed"
            assert gid == gid2, f".grad of {k} was replaced by another tensor"
    assert before["requires_grad"] == after["requires_grad"], "requires_grad changed"
    assert before["training"] == after["training"], "training mode changed"
    assert before["hooks"] == after["hooks"], "hooks were added or removed"
