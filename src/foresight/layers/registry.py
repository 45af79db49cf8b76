"""The one registry of layer rules, keyed by torch function.

A :class:`Rule` describes one kind of parameter use -- a linear map, a convolution, an embedding
lookup, a normalisation, an elementwise scale or bias -- once, for every metric:

* ``role``: ``"weight"`` (a weight graph: EI and the causal measures read it), ``"norm"``,
  ``"scale"``, ``"bias"`` (elementwise parameters, passed over by EI), ``"fallback"``;
* :meth:`Rule.match`: whether a call of one of its ``funcs`` has the rule's pattern (which argument
  is the batched input, which are the parameter operands, the options);
* :meth:`Rule.per_example`: the per-example gradient contributions of the call to its operands
  (:mod:`foresight.layers.contrib`), from the input and the output gradient -- used by
  :mod:`foresight.gns`;
* :meth:`Rule.ei_graph` / :meth:`Rule.ei_dense` (the weight graph for :mod:`foresight.ei`) and
  :meth:`Rule.affine` (the affine map for :mod:`foresight.causal`), where the role is ``"weight"``.

Whole modules described as one (``nn.MultiheadAttention``, a reflect-padded convolution, types
registered the 2020 way) have their rules in :mod:`foresight.layers.modules`, keyed by type.

Rules are found by the function object a call dispatches with (``torch.nn.functional.linear``,
``torch.Tensor.mul``, ...). The first registered rule whose :meth:`~Rule.match` accepts a call
handles it; a call no rule accepts goes to :data:`FALLBACK`, the exact per-operation
vector-Jacobian product. :func:`register_rule` adds a rule for a function of your own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from foresight.layers.calls import Pos
from foresight.layers.layout import Layout

__all__ = [
    "Rule", "RULES", "FALLBACK", "register_rule", "unregister_rule", "rules_for", "match",
    "match_free", "bind",
]

Match = tuple["Rule", int, dict[str, int], dict[str, Any]]


def bind(names: Sequence[str], args: tuple, kwargs: dict, defaults: dict | None = None) -> dict:
    """Map a call's positional and keyword arguments to the parameter ``names`` of a function.

    >>> bind(("input", "weight", "bias"), (1, 2), {"bias": 3})
    {'input': 1, 'weight': 2, 'bias': 3}
    """
    out = dict(defaults or {})
    for name, value in zip(names, args):
        out[name] = value
    for k, v in kwargs.items():
        out[k] = v
    return out


class Rule:
    """One kind of parameter use (see the module documentation)."""

    name = "rule"
    role = "fallback"
    param_free = False  # a weight graph without parameters (pooling): matched with no operands
    needs_input = True  # whether per_example reads the batched input
    funcs: tuple[Callable[..., Any], ...] = ()
    signature: tuple[str, ...] = ()
    defaults: dict[str, Any] = {}

    def bound(self, call: Any) -> dict:
        """The call's arguments by name (tensors as :class:`~foresight.layers.calls.Pos`)."""
        args, kwargs = call.struct
        return bind(self.signature, args, kwargs, self.defaults)

    def match(
        self, call: Any, tracked: dict[int, Any], batched: dict[int, Layout], out_layout: Layout
    ) -> tuple[int, dict[str, int], dict[str, Any]] | None:
        """``(activation position, {slot: position}, options)`` if ``call`` has this rule's
        pattern, else ``None``. ``tracked``: positions of parameter/derived arguments;
        ``batched``: positions of batched arguments with their layouts; ``out_layout``: where the
        batch sits in the output."""
        return None

    def per_example(
        self, use: Any, act: Tensor, grad: Tensor, operands: dict[str, Tensor], batch: int
    ) -> dict[str, Any]:
        """``{slot: contribution}`` of one call, for ``batch`` examples."""
        raise NotImplementedError

    # What the weight-graph metrics ask of a rule with role "weight". ``operands`` are the
    # tensors the call read (``{slot: tensor}``: parameters, or derived tensors' values).

    def ei_graph(
        self, use: Any, operands: dict[str, Tensor], device: Any, dtype: Any
    ) -> Any:
        """The matrix-free weight graph (:class:`~foresight.layers.graphs.Connectivity`) of
        one example (``use.in_shape`` -> ``use.out_shape``), counted once per call site; raise
        :class:`~foresight.layers.graphs.NotMatrixFree` where only the dense matrix will do."""
        raise NotImplementedError(f"{type(self).__name__} has no weight graph")

    def ei_dense(self, use: Any, operands: dict[str, Tensor]) -> Tensor:
        """The dense ``(inputs, outputs)`` connectivity matrix of :meth:`ei_graph`."""
        raise NotImplementedError(f"{type(self).__name__} has no weight graph")

    def ei_positions(self, use: Any) -> int:
        """At how many positions of one example the graph is applied (``linear_positions=
        "each"`` counts it that many times); 1 when the graph already spans every position."""
        return 1

    def affine(
        self, use: Any, operands: dict[str, Tensor], input_shape: tuple[int, ...] | None = None
    ) -> tuple[Tensor, Tensor, tuple[int, ...]]:
        """``(W [n_in, n_out], b [n_out], input_shape)``: the affine map the causal measures
        perturb (``input_shape`` per example; ``None``: the rule's default)."""
        raise NotImplementedError(f"{type(self).__name__} has no affine map")


RULES: list[Rule] = []
_BY_FUNC: dict[Any, list[Rule]] = {}


def register_rule(rule: Rule, *, first: bool = False) -> Rule:
    """Add ``rule`` for each of its ``funcs`` (``first=True``: before the built-in rules)."""
    RULES.insert(0, rule) if first else RULES.append(rule)
    for f in rule.funcs:
        bucket = _BY_FUNC.setdefault(f, [])
        bucket.insert(0, rule) if first else bucket.append(rule)
    return rule


def unregister_rule(rule: Rule) -> None:
    """Remove a rule added with :func:`register_rule`."""
    if rule in RULES:
        RULES.remove(rule)
    for f in rule.funcs:
        bucket = _BY_FUNC.get(f, [])
        if rule in bucket:
            bucket.remove(rule)


def rules_for(func: Callable[..., Any]) -> list[Rule]:
    """The rules registered for ``func`` (in the order they are tried)."""
    try:
        return _BY_FUNC.get(func, [])
    except TypeError:  # unhashable
        return []


def match(
    func: Callable[..., Any], call: Any, tracked: dict, batched: dict, out_layout: Layout
) -> Match | None:
    """The first rule that accepts the call, with what it bound, or ``None``."""
    for rule in rules_for(func):
        found = rule.match(call, tracked, batched, out_layout)
        if found is not None:
            return (rule, *found)
    return None


def match_free(
    func: Callable[..., Any], call: Any, batched: dict, out_layout: Layout
) -> Match | None:
    """The first parameter-free rule (a weight graph without parameters: average pooling) that
    accepts a call reading no parameter."""
    for rule in rules_for(func):
        if getattr(rule, "param_free", False):
            found = rule.match(call, {}, batched, out_layout)
            if found is not None:
                return (rule, *found)
    return None


def is_pos(x: Any) -> bool:
    return isinstance(x, Pos)


class _Fallback(Rule):
    """Any call no rule matches: exact per-example vector-Jacobian products through the call."""

    name = "fallback"
    role = "fallback"


FALLBACK: Rule = _Fallback()
