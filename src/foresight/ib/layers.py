"""Which modules' outputs are the hidden representations T of the information plane.

Weight layers and activations are recognised by type (``isinstance``, so subclasses count); add a
type to :data:`WEIGHT_LAYERS` or :data:`ACTIVATIONS` to teach the default about it.
"""

from __future__ import annotations

import warnings

from torch import nn

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.modules.conv._ConvNd,
)

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.Tanh,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Softmax,
    nn.LogSoftmax,
)

OUTPUT = "output"


def default_layers(model: nn.Module) -> list[str]:
    """Names of the activation modules that follow a weight layer, in registration order.

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
    for name, module in model.named_modules():
        if module is model:
            continue
        if isinstance(module, WEIGHT_LAYERS):
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
