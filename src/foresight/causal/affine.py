"""The affine map ``y = x W + b`` of a weight layer on its flattened input.

The maps live with the layer core's rules: one per module type in
:data:`foresight.layers.modules.AFFINE` (``nn.Linear``, ``nn.Conv1d/2d/3d``,
``nn.ConvTranspose1d/2d/3d``, the two projections of ``nn.MultiheadAttention``), found along the
module's MRO (so subclasses, parametrized modules among them, work), and one per operation
(:meth:`foresight.layers.registry.Rule.affine`: ``F.linear``, ``addmm``, ``matmul``, convolutions)
for layers that are not modules of their own (:func:`foresight.causal.report` with ``input=``).
A rule returns ``(W, b, input_shape)`` with ``W`` of shape ``[n_in, n_out]`` (row ``A`` = how
input neuron ``A`` drives every output neuron) and ``b`` of shape ``[n_out]`` (zeros for a
bias-free layer).

>>> import torch
>>> w, b, shape = affine_map(torch.nn.Linear(3, 2))
>>> tuple(w.shape), tuple(b.shape), shape
((3, 2), (2,), (3,))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from foresight.layers.modules import AFFINE, Affine, lookup, standard_forward

__all__ = ["AFFINE", "Affine", "affine_map", "register_affine", "is_weight_layer", "affine_parts"]

Shape = tuple[int, ...]
AffineRule = Callable[[nn.Module, "Shape | None"], tuple[Tensor, Tensor, Shape]]


def register_affine(layer_type: type) -> Callable[[AffineRule], AffineRule]:
    """Decorator registering ``rule(layer, input_shape)`` for ``layer_type`` and its subclasses."""

    def decorate(rule: AffineRule) -> AffineRule:
        AFFINE[layer_type] = rule
        return rule

    return decorate


def is_weight_layer(module: nn.Module) -> bool:
    """Whether :mod:`foresight.causal` can measure ``module`` as a whole (its type has an affine
    map and it runs that type's ``forward``)."""
    return lookup(AFFINE, module) is not None and (
        isinstance(module, Affine) or standard_forward(module, (AFFINE,))
    )


def _check_shape(input_shape: Sequence[int] | None) -> Shape | None:
    shape = None if input_shape is None else tuple(int(s) for s in input_shape)
    if shape is not None and (len(shape) == 0 or any(s < 1 for s in shape)):
        raise ValueError(f"input_shape must be a non-empty tuple of positive sizes, got {shape}")
    return shape


def affine_parts(layer: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(suffix, layer)]``: ``layer`` itself, or one :class:`Affine` per map of a module whose
    rule gives several (``nn.MultiheadAttention``: ``.in_proj`` and ``.out_proj``)."""
    rule = lookup(AFFINE, layer)
    if rule is None:
        return [("", layer)]
    try:
        with torch.no_grad():
            probe = rule(layer, None)
    except (ValueError, TypeError):  # e.g. a convolution: needs an input shape; one map
        return [("", layer)]
    if not isinstance(probe, list):
        return [("", layer)]
    kind = type(layer).__name__
    return [(suffix, Affine(w, b, shape, f"{kind}{suffix}")) for suffix, (w, b, shape) in probe]


def affine_map(layer: nn.Module, input_shape: Sequence[int] | None = None) -> tuple[
    Tensor, Tensor, Shape
]:
    """``(W [n_in, n_out], b [n_out], input_shape)`` of ``layer`` (detached copies)."""
    rule = lookup(AFFINE, layer)
    if rule is None:
        supported = ", ".join(sorted(t.__name__ for t in AFFINE))
        raise TypeError(
            f"foresight.causal: cannot measure a {type(layer).__name__}; supported layer types: "
            f"{supported} (register more with foresight.causal.affine.register_affine)"
        )
    shape = _check_shape(input_shape)
    with torch.no_grad():
        out = rule(layer, shape)
    if isinstance(out, list):
        raise TypeError(
            f"foresight.causal: a {type(layer).__name__} has {len(out)} affine maps "
            f"({', '.join(s.lstrip('.') for s, _ in out)}); foresight.causal.report measures "
            "each, or take one with foresight.causal.affine.affine_parts"
        )
    return out
