r"""Rules for whole modules, by module type.

Most rules describe one torch function (:mod:`foresight.layers.registry`) and so cover any module
that calls it. Some layers are described best as a whole module:

* a module whose map is more than its one weight call: ``nn.Conv2d(padding_mode="reflect")`` is an
  ``F.pad`` then a convolution, and its connectivity joins some pairs of neurons twice;
* ``nn.MultiheadAttention``, whose two weight graphs (the input projection :math:`E \to 3E` and the
  output projection) are read inside one ``F.multi_head_attention_forward`` call;
* types registered the 2020 way, with a dense builder in ``foresight.ei.VALID_MODULES``.

Five tables keyed by module type, searched along the module's MRO (subclasses are found):

* :data:`GRAPHS` -- ``graph(module, in_shape, out_shape, device, dtype)``: the matrix-free weight
  graph, a :class:`~foresight.layers.graphs.Connectivity` (or a list of ``(suffix, graph)`` for a
  module with several); ``foresight.ei.RULES`` is this table;
* :data:`DENSE` -- ``builder(module, in_shape, out_shape)``: the dense ``(inputs, outputs)``
  matrix (or a list, one per graph); ``foresight.ei.VALID_MODULES`` is this table;
* :data:`AFFINE` -- ``affine(module, input_shape) -> (W [n_in, n_out], b [n_out], input_shape)``:
  the affine map the causal measures perturb; ``foresight.causal.affine.AFFINE`` is this table;
* :data:`POSITIONS` -- ``positions(module, in_shape) -> int``: at how many positions of one
  example the graph is applied (for ``linear_positions="each"``). Types not listed: 1;
* :data:`INPUT_SHAPE` -- ``input_shape(module) -> shape``: the default input the causal measures
  perturb (one receptive field of a convolution).

Shapes are the module's input and output shapes with the batch where the module has it (as
``foresight.ei.get_shapes`` records them). A module is described by its rule only when it runs the
forward of the registered type (:func:`standard_forward`); a subclass with a forward of its own is
described by the operations it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "GRAPHS",
    "DENSE",
    "AFFINE",
    "POSITIONS",
    "INPUT_SHAPE",
    "register_module",
    "lookup",
    "registered_type",
    "is_registered",
    "standard_forward",
    "effective",
    "Affine",
]

GRAPHS: dict[type, Callable[..., Any]] = {}
DENSE: dict[type, Callable[..., Any]] = {}
AFFINE: dict[type, Callable[..., Any]] = {}
POSITIONS: dict[type, Callable[[nn.Module, tuple[int, ...]], int]] = {}
INPUT_SHAPE: dict[type, Callable[[nn.Module], tuple[int, ...]]] = {}


def register_module(
    module_type: type,
    *,
    graph: Callable[..., Any] | None = None,
    dense: Callable[..., Any] | None = None,
    affine: Callable[..., Any] | None = None,
    positions: Callable[[nn.Module, tuple[int, ...]], int] | None = None,
    input_shape: Callable[[nn.Module], tuple[int, ...]] | None = None,
) -> type:
    """Register what is known of ``module_type`` (and its subclasses) in the tables above."""
    for table, value in ((GRAPHS, graph), (DENSE, dense), (AFFINE, affine),
                         (POSITIONS, positions), (INPUT_SHAPE, input_shape)):
        if value is not None:
            table[module_type] = value
    return module_type


def lookup(table: dict[type, Any], module: Any) -> Any:
    """The entry of ``table`` for ``module``'s type or its nearest registered base, or ``None``."""
    for klass in type(module).__mro__:
        if klass in table:
            return table[klass]
    return None


def registered_type(module: Any, tables: tuple[dict, ...] = (GRAPHS, DENSE)) -> type | None:
    """The nearest class in ``module``'s MRO registered in one of ``tables``."""
    for klass in type(module).__mro__:
        if any(klass in t for t in tables):
            return klass
    return None


def is_registered(module: Any) -> bool:
    """Whether ``module`` has a weight graph rule (matrix-free or dense)."""
    return registered_type(module) is not None


def standard_forward(module: nn.Module, tables: tuple[dict, ...] = (GRAPHS, DENSE)) -> bool:
    """Whether ``module`` is registered and runs the ``forward`` of its registered type.

    A subclass that only adds attributes or parametrizations (``torch.nn.utils.parametrize``
    creates such a class) keeps the registered type's map; one with its own ``forward`` need not.
    """
    klass = registered_type(module, tables)
    if klass is None:
        return False
    return getattr(type(module), "forward", None) is getattr(klass, "forward", None)


def effective(module: nn.Module, name: str = "weight") -> Tensor | None:
    """``module.<name>`` as the forward pass would compute it now.

    Parametrized tensors (``torch.nn.utils.parametrize``, the new ``weight_norm``) are computed
    on access. The old ``torch.nn.utils.weight_norm`` recomputes the weight in a forward pre-hook,
    so between a parameter update and the next forward pass the attribute is stale; it is
    recomputed here from the hook.
    """
    for hook in getattr(module, "_forward_pre_hooks", {}).values():
        compute = getattr(hook, "compute_weight", None)
        if compute is not None and getattr(hook, "name", None) == name:
            with torch.no_grad():
                return compute(module)
    return getattr(module, name, None)


class Affine(nn.Module):
    """A fixed affine map ``y = x W + b`` standing for a layer that is not a module of its own
    (an ``addmm`` inside GPT-2's ``Conv1D``, a linear call with a computed weight), so that the
    causal measures, which take modules, can measure it.

    ``layer_type`` names what it stands for (reports show it).
    """

    def __init__(self, w: Tensor, b: Tensor, input_shape: tuple[int, ...], layer_type: str) -> None:
        super().__init__()
        self.register_buffer("w", w.detach().clone())
        self.register_buffer("b", b.detach().clone())
        self.input_shape = tuple(int(s) for s in input_shape)
        self.layer_type = layer_type

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.b, x.reshape(x.shape[0], -1), self.w)

    def extra_repr(self) -> str:
        return f"{self.layer_type}, {self.w.shape[0]} -> {self.w.shape[1]}"


def _affine_of_affine(layer: Affine, input_shape):
    if input_shape is not None and tuple(input_shape) != layer.input_shape and (
        torch.Size(input_shape).numel() != layer.w.shape[0]
    ):
        raise ValueError(
            f"input_shape {tuple(input_shape)} does not match the {layer.layer_type} layer's "
            f"{layer.w.shape[0]} inputs"
        )
    return layer.w.clone(), layer.b.clone(), layer.input_shape


register_module(Affine, affine=_affine_of_affine)
