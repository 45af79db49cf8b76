"""Activations: how to apply them, what they are called, and their output ranges.

An activation is any elementwise callable (an ``nn.Module`` such as ``nn.Sigmoid()`` or a function
such as ``torch.tanh``); ``None`` is the identity. Bounded activations have a known output range
(:func:`known_range`), used as the default output binning range.

>>> import torch
>>> known_range(torch.nn.Sigmoid()), known_range(torch.tanh), known_range(torch.nn.ReLU())
((0.0, 1.0), (-1.0, 1.0), None)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

__all__ = [
    "Activation", "ACTIVATION_TYPES", "TRANSPARENT_TYPES", "known_range", "activation_name",
    "apply", "apply_", "check_activation",
]

Activation = Callable[[Tensor], Tensor] | nn.Module | None

#: Elementwise activation modules recognised after a weight layer (by the report).
ACTIVATION_TYPES: tuple[type, ...] = (
    nn.Sigmoid, nn.Tanh, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish,
    nn.Tanhshrink, nn.LogSigmoid, nn.PReLU,
)

#: Modules passed over when looking for the activation that follows a weight layer.
TRANSPARENT_TYPES: tuple[type, ...] = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.Flatten, nn.Unflatten,
)

_FUNCTION_RANGES: dict[Any, tuple[float, float]] = {
    torch.sigmoid: (0.0, 1.0),
    F.sigmoid: (0.0, 1.0),
    torch.tanh: (-1.0, 1.0),
    F.tanh: (-1.0, 1.0),
    F.softsign: (-1.0, 1.0),
}


def known_range(activation: Activation) -> tuple[float, float] | None:
    """The output range of a bounded activation (``None`` if unbounded or unknown)."""
    if isinstance(activation, (nn.Sigmoid, nn.Hardsigmoid)):
        return (0.0, 1.0)
    if isinstance(activation, (nn.Tanh, nn.Softsign)):
        return (-1.0, 1.0)
    if isinstance(activation, nn.ReLU6):
        return (0.0, 6.0)
    if isinstance(activation, nn.Hardtanh):
        return (float(activation.min_val), float(activation.max_val))
    try:
        return _FUNCTION_RANGES.get(activation)
    except TypeError:  # unhashable callable
        return None


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


def _inplace_method(activation: Activation) -> str | None:
    if type(activation) in (nn.Sigmoid,) or activation in (torch.sigmoid, F.sigmoid):
        return "sigmoid_"
    if type(activation) in (nn.Tanh,) or activation in (torch.tanh, F.tanh):
        return "tanh_"
    if type(activation) is nn.ReLU or activation in (torch.relu, F.relu):
        return "relu_"
    return None


def apply_(activation: Activation, pre: Tensor) -> Tensor:
    """Like :func:`apply`, but may overwrite ``pre`` (in place for sigmoid, tanh, ReLU)."""
    try:
        method = _inplace_method(activation)
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
