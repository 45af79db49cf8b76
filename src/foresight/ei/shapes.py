"""Finding the weight graphs EI counts, and their shapes, with one forward pass."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from foresight._guard import preserved
from foresight.distributed import full_weights
from foresight.ei.layers import Found, find_layers, static_skipped
from foresight.ei.registry import Shape

__all__ = ["get_shapes", "record_shapes", "unsupported_layers", "Shapes"]


class Shapes(dict):
    """``{module: (in_shape, out_shape)}`` of the modules EI counts (what :func:`get_shapes`
    returns), which also remembers the operations it counts outside such modules (GPT-2's
    ``Conv1D``, a tied output layer, a parametrized weight used by hand) and what it skipped and
    passed over, so that ``ei(model, shapes=...)`` measures exactly what ``ei(model, input)``
    does. A plain ``dict`` of modules works too (modules only)."""

    found: Found

    def __init__(self, found: Found) -> None:
        super().__init__(found.modules)
        self.found = found


def get_shapes(model: nn.Module, input: Any) -> Shapes:
    """``{module: (in_shape, out_shape)}`` for every module EI counts as a whole, in call order.

    Runs ``model(input)`` once (a tuple is unpacked into positional arguments, a dict into
    keyword arguments) in evaluation mode under ``torch.no_grad()``, inside
    :func:`foresight._guard.preserved`: the model's mode, hooks and buffers (BatchNorm running
    statistics) are exactly as before afterwards. A layer called several times keeps the shapes of
    its first call. When some parameter is read outside such modules, the layer core's full plan
    is made too (:func:`foresight.layers.discover`: three more passes on three examples) and kept
    in the result (see :class:`Shapes`).

    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> list(get_shapes(net, torch.randn(5, 4)).values())
    [((5, 4), (5, 3)), ((5, 3), (5, 2))]
    """
    with full_weights(model), preserved(model):
        return record_shapes(model, input)


def record_shapes(model: nn.Module, input: Any) -> Shapes:
    """:func:`get_shapes` without its own :func:`~foresight._guard.preserved` (callers that
    already hold one). Puts the model in eval mode and leaves it so: the caller restores it."""
    with torch.no_grad():
        model.eval()
        return Shapes(find_layers(model, input))


def unsupported_layers(model: nn.Module) -> list[str]:
    """Names of submodules that own parameters no weight graph covers (without a forward pass).

    Normalisation, parametrised activations, dropout, identity and flatten modules are passed over
    (they have no weight graph); containers own no parameters of their own; parametrizations
    belong to the module they parametrize.
    """
    return static_skipped(model)


def _unused(shape: Shape) -> None:  # pragma: no cover - keeps the re-exported name used
    _ = shape
