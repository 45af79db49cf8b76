"""Which modules have a weight graph, and how to get it.

Two registries, both keyed by module type and searched along the module's MRO (so subclasses are
found):

* :data:`RULES` -- matrix-free rules: ``rule(module, in_shape, out_shape, device, dtype)`` returns a
  :class:`Connectivity` that can sum any elementwise function of the connectivity matrix along its
  rows and columns without building it;
* :data:`VALID_MODULES` -- the 2020 API: ``builder(module, in_shape, out_shape)`` returns the dense
  ``(inputs, outputs)`` connectivity matrix (the Jacobian of the bias-free layer).

A type with only a dense builder is still supported (through the dense path, guarded by a memory
limit). :func:`register_layer` adds a type to both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

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
]

Elementwise = Callable[[Tensor], Tensor]
Shape = tuple[int, ...]


class Connectivity(Protocol):
    """A layer's connectivity matrix :math:`W` (``n_in`` rows, ``n_out`` columns), implicitly.

    Every ``f`` passed in is elementwise with :math:`f(0) = 0`, so that pairs of neurons that are
    not connected contribute nothing.
    """

    n_in: int
    n_out: int

    def rows(self, fns: Sequence[Elementwise]) -> list[Tensor]:
        r"""For each ``f``: the vector :math:`\sum_j f(W_{ij})` over inputs ``i`` (length n_in)."""
        ...

    def cols(self, fn: Elementwise, u: Tensor) -> Tensor:
        r"""The vector :math:`\sum_i u_i f(W_{ij})` over outputs ``j`` (length n_out)."""
        ...


class NotMatrixFree(Exception):
    """Raised by a rule for a configuration it cannot evaluate without the dense matrix."""

    def __init__(self, message: str, n_in: int = -1, n_out: int = -1) -> None:
        super().__init__(message)
        self.n_in, self.n_out = n_in, n_out


Rule = Callable[[nn.Module, Shape, Shape, torch.device, torch.dtype], Connectivity]
Builder = Callable[[nn.Module, Shape, Shape], Tensor]

RULES: dict[type, Rule] = {}
VALID_MODULES: dict[type, Builder] = {}

#: Module types with parameters but no weight graph of their own; passed over without a warning.
PASS_OVER: tuple[type, ...] = tuple(
    t
    for t in (
        nn.modules.batchnorm._NormBase,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
        nn.PReLU,
        nn.modules.dropout._DropoutNd,
        nn.Identity,
        nn.Flatten,
        nn.Unflatten,
    )
    if t is not None
)


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


def _lookup(module: nn.Module, table: dict) -> Callable | None:
    for klass in type(module).__mro__:
        if klass in table:
            return table[klass]
    return None


def find_rule(module: nn.Module) -> Rule | None:
    """The matrix-free rule for ``module`` (nearest registered base class), or ``None``."""
    return _lookup(module, RULES)


def find_builder(module: nn.Module) -> Builder | None:
    """The dense builder for ``module`` (nearest registered base class), or ``None``."""
    return _lookup(module, VALID_MODULES)


def is_supported(module: nn.Module) -> bool:
    """Whether ``module`` has a registered weight graph (matrix-free rule or dense builder)."""
    for klass in type(module).__mro__:
        if klass in RULES or klass in VALID_MODULES:
            return True
    return False


def features(shape: Shape, n_spatial: int) -> Shape:
    """The per-example feature shape ``(C, *spatial)`` of a batched or unbatched shape."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == n_spatial + 2:
        return shape[1:]
    if len(shape) == n_spatial + 1:
        return shape
    raise ValueError(
        f"expected a shape with {n_spatial + 1} (unbatched) or {n_spatial + 2} (batched) "
        f"dimensions, got {shape}"
    )
