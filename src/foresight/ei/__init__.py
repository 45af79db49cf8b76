r"""Effective information (EI) of a network's weight graph -- the 2020 ``foresight.ei`` API.

Each supported layer contributes its connectivity matrix (one row per input neuron, one column per
output neuron: the Jacobian of the bias-free layer); a norm turns the rows into distributions
:math:`W^{\text{out}}_i` and

.. math::
    \text{EI} = H(\langle W^{\text{out}} \rangle) - \langle H(W^{\text{out}}) \rangle
    = \text{degeneracy} - \text{determinism}.

For the built-in norms nothing dense is built: a few convolutions per layer suffice (see
:mod:`foresight.ei.engine`), so ImageNet-size networks take about as long as a forward pass.

Which graphs are counted comes from the layer core (:mod:`foresight.layers`, see
:mod:`foresight.ei.layers`): modules with a module rule (``nn.Linear``, convolutions, average
pools, ``nn.Embedding``, ``nn.MultiheadAttention``, registered types) and weight operations
anywhere else (GPT-2's ``Conv1D``, tied output layers, parametrized weights).

>>> import torch
>>> import foresight.ei as fei
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AvgPool2d(2))
>>> value = fei.ei(net, torch.randn(1, 3, 16, 16))
>>> value > 0
True
"""

from __future__ import annotations

import importlib
from typing import Any

from foresight.ei.api import EIReport, LayerEI, degeneracy, determinism, ei, report
from foresight.ei.conv import (
    conv1d_create_matrix,
    conv2d_create_matrix,
    conv3d_create_matrix,
    conv_transpose1d_create_matrix,
    conv_transpose2d_create_matrix,
    conv_transpose3d_create_matrix,
)
from foresight.ei.engine import DEFAULT_MAX_DENSE_BYTES
from foresight.ei.layers import LINEAR_POSITIONS
from foresight.ei.linear import linear_create_matrix
from foresight.ei.norms import H, lin_norm, sig_norm, soft_norm
from foresight.ei.pool import (
    adaptive_avgpool1d_create_matrix,
    adaptive_avgpool2d_create_matrix,
    adaptive_avgpool3d_create_matrix,
    avgpool1d_create_matrix,
    avgpool2d_create_matrix,
    avgpool3d_create_matrix,
)
from foresight.ei.registry import (
    PASS_OVER,
    RULES,
    VALID_MODULES,
    Connectivity,
    NotMatrixFree,
    register_layer,
)
from foresight.ei.shapes import Shapes, get_shapes

__all__ = [
    "H",
    "lin_norm",
    "soft_norm",
    "sig_norm",
    "get_shapes",
    "Shapes",
    "LINEAR_POSITIONS",
    "determinism",
    "degeneracy",
    "ei",
    "report",
    "EIReport",
    "LayerEI",
    "VALID_MODULES",
    "RULES",
    "PASS_OVER",
    "Connectivity",
    "NotMatrixFree",
    "register_layer",
    "DEFAULT_MAX_DENSE_BYTES",
    "linear_create_matrix",
    "conv1d_create_matrix",
    "conv2d_create_matrix",
    "conv3d_create_matrix",
    "conv_transpose1d_create_matrix",
    "conv_transpose2d_create_matrix",
    "conv_transpose3d_create_matrix",
    "avgpool1d_create_matrix",
    "avgpool2d_create_matrix",
    "avgpool3d_create_matrix",
    "adaptive_avgpool1d_create_matrix",
    "adaptive_avgpool2d_create_matrix",
    "adaptive_avgpool3d_create_matrix",
    "graph_ei",
    "GraphEI",
]

_LAZY = {"graph_ei": "foresight.ei.graph", "GraphEI": "foresight.ei.graph"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'foresight.ei' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
