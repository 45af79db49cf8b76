"""The one list of layer kinds: what every metric needs to know about modules and functions that
are *not* weight layers.

* **activations** -- elementwise nonlinearities, as modules and as functions, with their output
  range when bounded and whether they are monotone (non-decreasing) on the whole real line. The
  causal measures use the range to bin outputs, the information plane takes their outputs as the
  hidden representations, EI passes over them;
* **normalisations** -- layers that rescale activations with statistics of the activations (their
  ``weight``/``bias`` are elementwise scale and bias parameters, not a weight graph);
* **pass-through** -- modules that do not change what a layer means (dropout, identity, flatten):
  looked past when searching for the activation that follows a weight layer;
* **weight modules** -- modules whose parameters form a weight graph (what the information plane
  takes as a layer); the rules (:mod:`foresight.layers.rules`, :mod:`foresight.layers.modules`)
  say how each metric reads them;
* **passed over by EI** -- normalisations, activations with parameters and pass-through modules
  (:data:`PASS_OVER_MODULES`), and the parameter-free operations counted in
  ``foresight.ei.EIReport.passed_over``: max pooling, attention, adds of two activations
  (residual connections), normalising functions (``rsqrt``, ``norm``, ... -- a product of a
  parameter with a normalised activation is the scale of a normalisation, as in RMSNorm).

Everything is recognised with ``isinstance`` (subclasses count) or, for functions, by identity.
Add to these tuples to teach every metric about a new kind at once.

>>> import torch
>>> from torch import nn
>>> activation_range(nn.Sigmoid()), activation_range(torch.tanh), activation_range(nn.ReLU())
((0.0, 1.0), (-1.0, 1.0), None)
>>> is_activation(nn.GELU()), is_activation(nn.Linear(2, 2)), is_monotone(nn.GELU())
(True, False, False)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

__all__ = [
    "WEIGHT_MODULES",
    "PASS_OVER_MODULES",
    "SOFTMAX_MODULES",
    "MAX_POOL_MODULES",
    "ATTENTION_FUNCTIONS",
    "NORMALISING_FUNCTIONS",
    "is_weight_module",
    "is_max_pool",
    "is_attention",
    "is_normalising",
    "is_residual_add",
    "inplace_method",
    "activation_of_call",
    "ACTIVATION_MODULES",
    "ACTIVATION_FUNCTIONS",
    "MONOTONE_MODULES",
    "NORM_MODULES",
    "PASS_THROUGH_MODULES",
    "activation_range",
    "is_activation",
    "is_monotone",
    "is_norm",
    "is_pass_through",
]

#: Elementwise activation modules.
ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.Sigmoid, nn.Tanh, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU,
    nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardsigmoid,
    nn.Hardswish, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold,
)

#: Activations applied along a dimension (not elementwise, but the output of a classifier): taken as
#: a representation by the information plane, not as an activation by the causal measures.
SOFTMAX_MODULES: tuple[type[nn.Module], ...] = (nn.Softmax, nn.LogSoftmax, nn.Softmin)

#: Monotone (non-decreasing on all of R) activation modules. LeakyReLU/PReLU/ELU/CELU are
#: monotone only for a non-negative slope/alpha, checked by :func:`is_monotone`.
MONOTONE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Sigmoid, nn.Tanh, nn.ReLU, nn.ReLU6, nn.SELU, nn.Softplus, nn.Softsign, nn.Hardtanh,
    nn.Hardsigmoid, nn.LogSigmoid,
)

#: Elementwise activation functions (as called in a ``forward``), with their names.
ACTIVATION_FUNCTIONS: dict[Callable[..., Any], str] = {
    torch.sigmoid: "sigmoid", torch.Tensor.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    torch.tanh: "tanh", torch.Tensor.tanh: "tanh", F.tanh: "tanh",
    torch.relu: "relu", torch.Tensor.relu: "relu", F.relu: "relu", F.relu6: "relu6",
    F.leaky_relu: "leaky_relu", F.elu: "elu", F.selu: "selu", torch.selu: "selu", F.celu: "celu",
    F.gelu: "gelu", F.silu: "silu", F.mish: "mish", F.softplus: "softplus",
    F.softsign: "softsign", F.hardtanh: "hardtanh", F.hardsigmoid: "hardsigmoid",
    F.hardswish: "hardswish", F.tanhshrink: "tanhshrink", F.logsigmoid: "logsigmoid",
}

_MONOTONE_FUNCTIONS = {
    "sigmoid", "tanh", "relu", "relu6", "selu", "softplus", "softsign", "hardtanh", "hardsigmoid",
    "logsigmoid",
}

_RANGES: dict[str, tuple[float, float]] = {
    "sigmoid": (0.0, 1.0), "hardsigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0),
    "softsign": (-1.0, 1.0), "relu6": (0.0, 6.0), "hardtanh": (-1.0, 1.0),
}

_MODULE_NAMES: dict[type[nn.Module], str] = {
    nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid", nn.Tanh: "tanh", nn.Softsign: "softsign",
    nn.ReLU6: "relu6",
}

#: Normalisation layers: their parameters are elementwise scale and bias.
NORM_MODULES: tuple[type[nn.Module], ...] = tuple(
    t
    for t in (
        nn.modules.batchnorm._NormBase,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
    )
    if t is not None
)

#: Modules looked past when searching for the activation after a weight layer.
PASS_THROUGH_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.modules.dropout._DropoutNd, nn.Flatten, nn.Unflatten,
)


#: Modules whose parameters form a weight graph (subclasses count). Types registered with a
#: module rule (:mod:`foresight.layers.modules`) count too, see :func:`is_weight_module`.
WEIGHT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, nn.Embedding, nn.EmbeddingBag,
    nn.MultiheadAttention, nn.RNNBase,
)

#: Modules with parameters but no weight graph of their own: EI passes over them silently.
PASS_OVER_MODULES: tuple[type[nn.Module], ...] = (
    NORM_MODULES + ACTIVATION_MODULES + PASS_THROUGH_MODULES
)

#: Max pooling modules (parameter-free, not a weighted graph: EI passes over them).
MAX_POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d, nn.FractionalMaxPool2d,
    nn.FractionalMaxPool3d,
)

#: Parameter-free attention operations. Parameters they read are additive biases (T5's relative
#: position bias as ``attn_mask``) or projections described by a module rule
#: (``nn.MultiheadAttention``).
ATTENTION_FUNCTIONS: tuple[str, ...] = (
    "scaled_dot_product_attention", "multi_head_attention_forward", "flex_attention",
)

#: Functions that compute a normalising statistic of the activations (by name: functions and
#: methods alike). A parameter multiplying their result is the scale of a normalisation.
NORMALISING_FUNCTIONS: tuple[str, ...] = (
    "rsqrt", "rsqrt_", "norm", "vector_norm", "std", "var", "std_mean", "var_mean", "normalize",
    "layer_norm", "group_norm", "batch_norm", "instance_norm", "rms_norm", "local_response_norm",
)

_ADD_NAMES = {"add", "__add__", "__radd__", "add_", "__iadd__", "sub", "__sub__", "__rsub__",
              "sub_", "__isub__"}


def _name(func: Any) -> str:
    return str(getattr(func, "__name__", "") or "")


def is_weight_module(module: Any) -> bool:
    """Whether ``module`` has a weight graph (:data:`WEIGHT_MODULES`, or a registered type)."""
    if isinstance(module, WEIGHT_MODULES):
        return True
    from foresight.layers.modules import AFFINE, DENSE, GRAPHS, registered_type

    return registered_type(module, (GRAPHS, DENSE, AFFINE)) is not None


def is_max_pool(obj: Any) -> bool:
    """Whether ``obj`` (a module, or a function by its name) is max (or LP) pooling."""
    if isinstance(obj, nn.Module):
        return isinstance(obj, MAX_POOL_MODULES)
    name = _name(obj).lstrip("_")
    return name.startswith(("max_pool", "adaptive_max_pool", "fractional_max_pool", "lp_pool"))


def is_attention(func: Any) -> bool:
    """Whether ``func`` (or a function name) is a parameter-free attention operation."""
    return (func if isinstance(func, str) else _name(func)) in ATTENTION_FUNCTIONS


def is_normalising(func: Any) -> bool:
    """Whether ``func`` computes a normalising statistic (see :data:`NORMALISING_FUNCTIONS`)."""
    return _name(func) in NORMALISING_FUNCTIONS


def is_residual_add(func: Any) -> bool:
    """Whether ``func`` is an addition or subtraction (a residual connection when it adds two
    activations)."""
    return _name(func) in _ADD_NAMES


def inplace_method(activation: Any) -> str | None:
    """The in-place tensor method computing ``activation`` (``"sigmoid_"``, ``"tanh_"``,
    ``"relu_"``), or ``None``."""
    if isinstance(activation, nn.Module):
        kind = type(activation)
        return {nn.Sigmoid: "sigmoid_", nn.Tanh: "tanh_", nn.ReLU: "relu_"}.get(kind)
    try:
        name = ACTIVATION_FUNCTIONS.get(activation)
    except TypeError:
        return None
    return {"sigmoid": "sigmoid_", "tanh": "tanh_", "relu": "relu_"}.get(name)


def activation_of_call(func: Any, struct: Any) -> Any:
    """The activation a recorded call applies, as a callable of one tensor: ``func`` itself when
    the call passed only the tensor (``torch.tanh(x)``), else ``func`` with the call's other
    arguments (``F.leaky_relu(x, 0.2)``), named after it.

    ``struct`` is ``(args, kwargs)`` with the tensor as a :class:`~foresight.layers.calls.Pos`
    (:func:`foresight.layers.calls.structure`).

    >>> from foresight.layers.calls import structure
    >>> x = torch.randn(3)
    >>> activation_of_call(torch.tanh, structure((x,), {})) is torch.tanh
    True
    >>> f = activation_of_call(F.leaky_relu, structure((x, 0.2), {}))
    >>> f.__name__, bool(torch.equal(f(x), F.leaky_relu(x, 0.2)))
    ('leaky_relu', True)
    """
    from foresight.layers.calls import Pos

    args, kwargs = struct
    if len(args) == 1 and isinstance(args[0], Pos) and not kwargs:
        return func

    def apply(t: torch.Tensor) -> torch.Tensor:
        return func(*[t if isinstance(a, Pos) else a for a in args],
                    **{k: (t if isinstance(v, Pos) else v) for k, v in kwargs.items()})

    apply.__name__ = ACTIVATION_FUNCTIONS.get(func, getattr(func, "__name__", "activation"))
    return apply


def is_activation(obj: Any) -> bool:
    """Whether ``obj`` (a module or a function) is an elementwise activation."""
    if isinstance(obj, nn.Module):
        return isinstance(obj, ACTIVATION_MODULES)
    try:
        return obj in ACTIVATION_FUNCTIONS
    except TypeError:  # unhashable callable
        return False


def is_norm(module: Any) -> bool:
    """Whether ``module`` is a normalisation layer."""
    return isinstance(module, NORM_MODULES)


def is_pass_through(module: Any) -> bool:
    """Whether ``module`` is dropout, identity or flatten."""
    return isinstance(module, PASS_THROUGH_MODULES)


def is_monotone(activation: Any) -> bool:
    """Whether the activation is non-decreasing on the whole real line (``None`` = identity)."""
    if activation is None:
        return True
    if isinstance(activation, (nn.LeakyReLU,)):
        return activation.negative_slope >= 0
    if isinstance(activation, (nn.ELU, nn.CELU)):
        return activation.alpha >= 0
    if isinstance(activation, nn.PReLU):
        return bool((activation.weight.detach() >= 0).all())
    if isinstance(activation, nn.Module):
        return isinstance(activation, MONOTONE_MODULES)
    try:
        return ACTIVATION_FUNCTIONS.get(activation) in _MONOTONE_FUNCTIONS
    except TypeError:
        return False


def activation_range(activation: Any) -> tuple[float, float] | None:
    """The output range of a bounded activation (``None`` if unbounded or unknown)."""
    if isinstance(activation, nn.Hardtanh):  # also ReLU6 (a Hardtanh(0, 6))
        return (float(activation.min_val), float(activation.max_val))
    if isinstance(activation, nn.Module):
        for klass in type(activation).__mro__:
            name = _MODULE_NAMES.get(klass)
            if name is not None:
                return _RANGES[name]
        return None
    try:
        name = ACTIVATION_FUNCTIONS.get(activation)
    except TypeError:
        return None
    return _RANGES.get(name) if name is not None else None
