"""Which modules have a weight graph, and how to get it -- the 2020 registries, now the layer
core's module rules (:mod:`foresight.layers.modules`).

Two tables, both keyed by module type and searched along the module's MRO (so subclasses are
found):

* :data:`RULES` -- matrix-free rules: ``rule(module, in_shape, out_shape, device, dtype)`` returns a
  :class:`Connectivity` that can sum any elementwise function of the connectivity matrix along its
  rows and columns without building it;
* :data:`VALID_MODULES` -- the 2020 API: ``builder(module, in_shape, out_shape)`` returns the dense
  ``(inputs, outputs)`` connectivity matrix (the Jacobian of the bias-free layer).

They *are* :data:`foresight.layers.modules.GRAPHS` and :data:`~foresight.layers.modules.DENSE`:
an entry added here is known to every metric. A type with only a dense builder is still supported
(through the dense path, guarded by a memory limit). :func:`register_layer` adds a type to both.
Operations that no module rule covers (GPT-2's ``Conv1D``, a tied output layer, parametrized
weights used by hand) are handled by the operation rules of :mod:`foresight.layers.rules`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from foresight.layers.graphs import Connectivity, Elementwise, NotMatrixFree, Shape, features
from foresight.layers.kinds import PASS_OVER_MODULES
from foresight.layers.modules import DENSE, GRAPHS, is_registered, lookup

__all__ = [
    "Connectivity",
    "NotMatrixFree",
    "RULES",
    "VALID_MODULES",
    "PASS_OVER",
    "register_layer",
    "find_rule",
    "find_builder",
    "is_supported",
    "features",
    "Elementwise",
    "Shape",
]

Rule = Callable[..., Connectivity]
Builder = Callable[[nn.Module, Shape, Shape], Tensor]

#: Matrix-free rules by module type (the layer core's module graph table).
RULES: dict[type, Rule] = GRAPHS
#: Dense builders by module type, the 2020 name (the layer core's dense table).
VALID_MODULES: dict[type, Builder] = DENSE
#: Module types with parameters but no weight graph of their own; passed over without a warning.
PASS_OVER: tuple[type, ...] = PASS_OVER_MODULES


def register_layer(
    module_type: type, *, dense: Builder | None = None
) -> Callable[[Rule], Rule]:
    """Decorator registering a matrix-free ``rule`` (and optionally a dense builder) for a type.

    Example, a layer that multiplies its input by a fixed permutation matrix (the layer's
    connectivity is then that permutation):

    >>> import torch
    >>> from torch import nn
    >>> from foresight.ei.registry import register_layer, VALID_MODULES
    >>> class Flip(nn.Module):
    ...     def __init__(self, n):
    ...         super().__init__()
    ...         self.weight = nn.Parameter(torch.eye(n).flip(0))
    ...     def forward(self, x):
    ...         return x @ self.weight
    >>> def flip_matrix(module, in_shape, out_shape):
    ...     return module.weight.detach().clone()
    >>> VALID_MODULES[Flip] = flip_matrix  # the 2020 way: a dense builder is enough
    >>> import foresight.ei as fei
    >>> round(fei.ei(Flip(8), torch.randn(1, 8)), 6)
    3.0
    >>> del VALID_MODULES[Flip]
    """

    def decorate(rule: Rule) -> Rule:
        RULES[module_type] = rule
        if dense is not None:
            VALID_MODULES[module_type] = dense
        return rule

    return decorate


def find_rule(module: nn.Module) -> Rule | None:
    """The matrix-free rule for ``module`` (nearest registered base class), or ``None``."""
    return lookup(RULES, module)


def find_builder(module: nn.Module) -> Builder | None:
    """The dense builder for ``module`` (nearest registered base class), or ``None``."""
    return lookup(VALID_MODULES, module)


def is_supported(module: nn.Module) -> bool:
    """Whether ``module`` has a registered weight graph (matrix-free rule or dense builder)."""
    return is_registered(module)
