"""Which modules' outputs are the hidden representations T of the information plane.

Weight layers and activations are the layer core's kinds (:mod:`foresight.layers.kinds`:
:data:`~foresight.layers.kinds.WEIGHT_MODULES` and types with a module rule,
:data:`~foresight.layers.kinds.ACTIVATION_MODULES` and the softmax modules), recognised with
``isinstance`` (subclasses count); add a type there to teach every metric about it at once.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from foresight.layers.kinds import (
    ACTIVATION_MODULES,
    SOFTMAX_MODULES,
    WEIGHT_MODULES,
    is_weight_module,
)

#: Weight layers (the layer core's list; types with a module rule count too).
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = WEIGHT_MODULES

#: Activations whose outputs are representations (elementwise ones and the softmax family).
ACTIVATIONS: tuple[type[nn.Module], ...] = ACTIVATION_MODULES + SOFTMAX_MODULES

OUTPUT = "output"


def default_layers(model: nn.Module, inputs: Any = None) -> list[str]:
    """Names of the activation modules that follow a weight layer, in order.

    With ``inputs`` (a few examples are enough) the order is the forward pass's and modules the
    forward pass does not call are left out (the layer core's scan,
    :func:`foresight.layers.scan.scan`: one pass on three examples, nothing copied); without,
    the modules' registration order.

    The model's output is added by :func:`foresight.ib.information_plane` as ``"output"``.
    If the model has weight layers but no activation modules (e.g. it calls ``torch.tanh`` in
    ``forward``), the weight layers' outputs are used instead, with a warning.

    >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.Softmax(dim=1))
    >>> default_layers(net)
    ['1', '3']
    """
    chosen: list[str] = []
    weights: list[str] = []
    pending = False
    for name, module in _ordered(model, inputs):
        if module is model:
            continue
        if is_weight_module(module):
            weights.append(name)
            pending = True
        elif isinstance(module, ACTIVATIONS) and pending:
            chosen.append(name)
            pending = False
    if not chosen and weights:
        warnings.warn(
            "information_plane: no activation modules follow a weight layer (functional "
            "activations are invisible to hooks); using the weight layers' outputs "
            f"{weights[:-1]} instead. Pass layers=[...] to choose the representations.",
            stacklevel=3,
        )
        return weights[:-1]
    return chosen


def _ordered(model: nn.Module, inputs: Any) -> list[tuple[str, nn.Module]]:
    if inputs is None:
        return list(model.named_modules())
    import torch

    from foresight._guard import preserved
    from foresight.layers.scan import scan

    probe = inputs[:3] if isinstance(inputs, torch.Tensor) and inputs.dim() > 0 else inputs
    with preserved(model), torch.no_grad():
        model.eval()
        calls = scan(model, probe).calls
    # first calls in the order they finish: for the leaf modules taken here, the order they run
    return [(c.name, c.module) for c in calls]
