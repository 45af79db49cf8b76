"""Finding each supported layer's input and output shape with one forward pass."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from foresight._guard import preserved
from foresight.distributed import full_weights
from foresight.ei.registry import PASS_OVER, Shape, is_supported

__all__ = ["get_shapes", "record_shapes", "unsupported_layers"]


def _run(model: nn.Module, input: Any) -> None:
    if isinstance(input, dict):
        model(**input)
    elif isinstance(input, (tuple, list)):
        model(*input)
    else:
        model(input)


def get_shapes(model: nn.Module, input: Any) -> dict[nn.Module, tuple[Shape, Shape]]:
    """``{module: (in_shape, out_shape)}`` for every supported layer of ``model``, in call order.

    Runs ``model(input)`` once (a tuple is unpacked into positional arguments, a dict into
    keyword arguments) in evaluation mode under ``torch.no_grad()``, inside
    :func:`foresight._guard.preserved`: the model's mode, hooks and buffers (BatchNorm running
    statistics) are exactly as before afterwards. A layer called several times keeps the shapes of
    its first call.

    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> list(get_shapes(net, torch.randn(5, 4)).values())
    [((5, 4), (5, 3)), ((5, 3), (5, 2))]
    """
    with full_weights(model), preserved(model):
        return record_shapes(model, input)


def record_shapes(model: nn.Module, input: Any) -> dict[nn.Module, tuple[Shape, Shape]]:
    """:func:`get_shapes` without its own :func:`~foresight._guard.preserved` (callers that
    already hold one). Puts the model in eval mode and leaves it so: the caller restores it."""
    shapes: dict[nn.Module, tuple[Shape, Shape]] = {}

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        if module in shapes or not args or not isinstance(output, torch.Tensor):
            return
        if isinstance(args[0], torch.Tensor):
            shapes[module] = (tuple(args[0].shape), tuple(output.shape))

    handles = []
    try:
        with torch.no_grad():
            model.eval()
            for module in model.modules():
                if is_supported(module):
                    handles.append(module.register_forward_hook(hook))
            _run(model, input)
    finally:
        for h in handles:
            h.remove()
    return shapes


def unsupported_layers(model: nn.Module) -> list[str]:
    """Names of submodules that own parameters but have no registered weight graph.

    Normalisation, parametrised activations, dropout, identity and flatten modules are passed over
    (they have no weight graph); containers own no parameters of their own.
    """
    names = []
    for name, module in model.named_modules():
        if is_supported(module) or isinstance(module, PASS_OVER):
            continue
        if any(True for _ in module.parameters(recurse=False)):
            names.append(f"{name or '(model)'} ({type(module).__name__})")
    return names
