"""Activations: how to apply them, what they are called, and their output ranges.

An activation is any elementwise callable (an ``nn.Module`` such as ``nn.Sigmoid()`` or a function
such as ``torch.tanh``); ``None`` is the identity. Bounded activations have a known output range
(:func:`known_range`), used as the default output binning range. Which modules and functions are
activations, and their ranges, is the layer core's one list of kinds
(:mod:`foresight.layers.kinds`); the names here are kept for compatibility.

>>> import torch
>>> known_range(torch.nn.Sigmoid()), known_range(torch.tanh), known_range(torch.nn.ReLU())
((0.0, 1.0), (-1.0, 1.0), None)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from foresight.layers.kinds import (
    ACTIVATION_MODULES,
    PASS_THROUGH_MODULES,
    activation_range,
    inplace_method,
)

__all__ = [
    "Activation", "ACTIVATION_TYPES", "TRANSPARENT_TYPES", "known_range", "activation_name",
    "apply", "apply_", "check_activation",
]

Activation = Callable[[Tensor], Tensor] | nn.Module | None

#: Elementwise activation modules recognised after a weight layer (the layer core's list).
ACTIVATION_TYPES: tuple[type, ...] = ACTIVATION_MODULES

#: Modules passed over when looking for the activation that follows a weight layer.
TRANSPARENT_TYPES: tuple[type, ...] = PASS_THROUGH_MODULES


def known_range(activation: Activation) -> tuple[float, float] | None:
    """The output range of a bounded activation (``None`` if unbounded or unknown)."""
    return activation_range(activation)


def activation_name(activation: Activation) -> str:
    """A short name: ``"Sigmoid"``, ``"tanh"``, ``"identity"``."""
    if activation is None:
        return "identity"
    if isinstance(activation, nn.Module):
        return type(activation).__name__
    return getattr(activation, "__name__", type(activation).__name__)


def apply(activation: Activation, pre: Tensor) -> Tensor:
    """``activation(pre)`` without autograd (identity for ``None``), shape-checked."""
    if activation is None:
        return pre
    with torch.no_grad():
        out = activation(pre)
    if not isinstance(out, Tensor) or out.shape != pre.shape:
        raise ValueError(
            f"activation {activation_name(activation)} must be elementwise (same shape out as in)"
        )
    return out


def apply_(activation: Activation, pre: Tensor) -> Tensor:
    """Like :func:`apply`, but may overwrite ``pre`` (in place for sigmoid, tanh, ReLU)."""
    try:
        method = inplace_method(activation)
    except TypeError:  # a callable whose == fails
        method = None
    if method is None:
        return apply(activation, pre)
    return getattr(pre, method)()


def check_activation(activation: Any) -> None:
    """Raise ``TypeError`` unless ``activation`` is ``None`` or callable."""
    if activation is not None and not callable(activation):
        raise TypeError(
            f"activation must be None, an nn.Module or a callable, got {type(activation).__name__}"
        )
