"""The affine map ``y = x W + b`` of a weight layer on its flattened input, by layer type.

One small function per layer type, registered in :data:`AFFINE` and found along the module's MRO
(so subclasses work). A rule returns ``(W, b, input_shape)`` with ``W`` of shape
``[n_in, n_out]`` (row ``A`` = how input neuron ``A`` drives every output neuron) and ``b`` of
shape ``[n_out]`` (zeros for a bias-free layer).

>>> import torch
>>> w, b, shape = affine_map(torch.nn.Linear(3, 2))
>>> tuple(w.shape), tuple(b.shape), shape
((3, 2), (2,), (3,))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["AFFINE", "affine_map", "register_affine", "is_weight_layer"]

Shape = tuple[int, ...]
AffineRule = Callable[[nn.Module, "Shape | None"], tuple[Tensor, Tensor, Shape]]

AFFINE: dict[type, AffineRule] = {}


def register_affine(layer_type: type) -> Callable[[AffineRule], AffineRule]:
    """Decorator registering ``rule(layer, input_shape)`` for ``layer_type`` and its subclasses."""

    def decorate(rule: AffineRule) -> AffineRule:
        AFFINE[layer_type] = rule
        return rule

    return decorate


def _find(layer: nn.Module) -> AffineRule | None:
    for cls in type(layer).__mro__:
        if cls in AFFINE:
            return AFFINE[cls]
    return None


def is_weight_layer(module: nn.Module) -> bool:
    """Whether :mod:`foresight.causal` can measure ``module``."""
    return _find(module) is not None


def affine_map(layer: nn.Module, input_shape: Sequence[int] | None = None) -> tuple[
    Tensor, Tensor, Shape
]:
    """``(W [n_in, n_out], b [n_out], input_shape)`` of ``layer`` (detached copies)."""
    rule = _find(layer)
    if rule is None:
        supported = ", ".join(sorted(t.__name__ for t in AFFINE))
        raise TypeError(
            f"foresight.causal: cannot measure a {type(layer).__name__}; supported layer types: "
            f"{supported} (register more with foresight.causal.affine.register_affine)"
        )
    shape = None if input_shape is None else tuple(int(s) for s in input_shape)
    if shape is not None and (len(shape) == 0 or any(s < 1 for s in shape)):
        raise ValueError(f"input_shape must be a non-empty tuple of positive sizes, got {shape}")
    with torch.no_grad():
        return rule(layer, shape)


@register_affine(nn.Linear)
def _linear(layer: nn.Module, input_shape: Shape | None) -> tuple[Tensor, Tensor, Shape]:
    assert isinstance(layer, nn.Linear)
    n_in = layer.in_features
    if input_shape is not None and math.prod(input_shape) != n_in:
        raise ValueError(
            f"input_shape {input_shape} has {math.prod(input_shape)} elements but the Linear layer "
            f"has in_features={n_in}; omit input_shape for Linear layers"
        )
    w = layer.weight.detach().t().clone()
    b = (
        layer.bias.detach().clone()
        if layer.bias is not None
        else torch.zeros(layer.out_features, dtype=w.dtype, device=w.device)
    )
    return w, b, (n_in,)


@register_affine(nn.modules.conv._ConvNd)
def _conv(layer: nn.Module, input_shape: Shape | None) -> tuple[Tensor, Tensor, Shape]:
    assert isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    if input_shape is None:
        field = (layer.in_channels, *layer.kernel_size)
        raise ValueError(
            f"{type(layer).__name__}: pass input_shape=(channels, *spatial) -- the input the "
            f"layer is perturbed on, e.g. one receptive field {field}"
        )
    weight = layer.weight.detach()
    n_in = math.prod(input_shape)
    # The columns of the bias-free map: one forward pass of the basis vectors (exact: each
    # output is a single product weight * 1 plus zeros).
    basis = torch.eye(n_in, dtype=weight.dtype, device=weight.device).view(n_in, *input_shape)
    try:
        out = layer._conv_forward(basis, weight, None)
    except RuntimeError as exc:
        raise ValueError(
            f"{type(layer).__name__} cannot run on input_shape {input_shape}: {exc}"
        ) from exc
    out_shape = out.shape[1:]
    w = out.reshape(n_in, -1)
    if layer.bias is None:
        b = torch.zeros(w.shape[1], dtype=w.dtype, device=w.device)
    else:
        view = (-1,) + (1,) * (len(out_shape) - 1)
        b = layer.bias.detach().view(view).expand(out_shape).reshape(-1).clone()
    return w, b, input_shape
