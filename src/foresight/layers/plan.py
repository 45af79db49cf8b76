"""What one discovery pass found: every use of every parameter, in forward order.

A :class:`Plan` is the one description of a model that every metric consumes:

* :class:`Use` -- one operation (or registered module) that combines the batch with parameters:
  which rule handles it, which parameters (directly, or through a :class:`Derived` tensor such as a
  parametrized or weight-normed weight) it uses in which role, where the batch sits in its input and
  output (:class:`~foresight.layers.layout.Layout`), the per-example shapes, the module it ran in
  and the activation that follows it;
* :class:`Derived` -- a tensor computed from parameters alone inside the forward pass (a
  parametrization's weight, ``weight * gain``, a relative-position bias);
* ``unseen`` -- trainable parameters that received a gradient path the discovery could not see
  (a custom ``autograd.Function``, a compiled region), with the reason;
* ``coupled`` -- where the examples of a batch stop being independent (BatchNorm in training mode).

Plans are made by :func:`foresight.layers.discover`; they hold no tensors of the model, only names,
shapes and small option values, so they can be kept and compared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from foresight.layers.layout import Layout

__all__ = ["Operand", "Derived", "Use", "Unit", "Plan", "Step"]


@dataclass(frozen=True)
class Operand:
    """A parameter-valued argument of a use: a parameter itself or a derived tensor."""

    slot: str  # the rule's name for it: "weight", "bias", "scale", or "arg<i>" for the fallback
    position: int  # index in the flattened (args, kwargs) of the call
    param: str | None  # the parameter's name when the argument *is* the parameter
    derived: int | None  # else the id of the Derived tensor
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Derived:
    """A tensor computed inside the forward pass from parameters only (no batch)."""

    id: int
    sources: tuple[str, ...]  # names of the parameters it is computed from
    shape: tuple[int, ...]
    op: str  # the operation that produced it


@dataclass
class Use:
    """One use of parameters (or of a parameter-free weight graph such as a pooling) on the batch.

    ``in_shape`` / ``out_shape`` are per example: the activation's and the output's shape with the
    batch removed (a merged dimension keeps its per-example size ``k``).
    """

    index: int
    kind: str  # the rule's name ("linear", "conv", "embedding", "norm", "scale", "fallback", ...)
    rule: str  # the rule's class name (several rules share a kind)
    op: str  # the function's name ("linear", "addmm", "mul", ...) or the module type for a unit
    module: str  # innermost module that ran it ("" for the model itself)
    module_type: str
    operands: tuple[Operand, ...]
    activation: int  # flat position of the batched argument the rule reads
    in_layout: Layout
    out_index: int  # which output carries the result (0 for a single tensor)
    out_layout: Layout
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)
    followed_by: str | None = None  # the elementwise activation applied to the output, if any
    followed_by_module: str | None = None  # that activation's module name, when it is a module
    followed_by_call: tuple[Any, Any] | None = None  # else (function, (args, kwargs) with its
    # tensor arguments as calls.Pos): a functional activation with its options
    reason: str | None = None  # why the generic fallback handles it (kind == "fallback")
    grad: bool = True  # whether gradients flow through this call (False: under no_grad, or
    # inside a custom autograd.Function's forward, whose backward is its own)

    @property
    def params(self) -> tuple[str, ...]:
        """Names of the parameters this use reads directly (derived tensors not expanded)."""
        return tuple(o.param for o in self.operands if o.param is not None)


@dataclass(frozen=True)
class Unit:
    """One call of a module during the forward pass (the model itself included), with the uses
    that ran inside it. Metrics that describe layers as modules (EI's registered module types,
    whose weight graph covers the whole module) read these."""

    module: str
    module_type: str
    in_shape: tuple[int, ...]  # per example (first tensor argument)
    out_shape: tuple[int, ...]  # per example (first tensor of the output)
    in_layout: Layout
    out_layout: Layout
    uses: tuple[int, ...]  # indices into Plan.uses


@dataclass(frozen=True)
class Step:
    """One operation of the forward pass that reads a tracked tensor (a parameter or a derived
    tensor), in order: what the runtime capture checks the live forward pass against."""

    func: Callable[..., Any]
    keys: tuple[str, ...]  # the tracked arguments: parameter names or "#<derived id>"
    use: int | None  # index into Plan.uses when this step is a use
    derived: int | None  # id of the Derived tensor this step produces, if it does
    derived_out: int = 0  # which output is the derived tensor


@dataclass
class Plan:
    """Every use of every parameter in one forward pass (see the module documentation)."""

    uses: list[Use] = field(default_factory=list)
    derived: dict[int, Derived] = field(default_factory=dict)
    units: list[Unit] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    params: dict[str, tuple[int, ...]] = field(default_factory=dict)  # trainable name -> shape
    unseen: dict[str, str] = field(default_factory=dict)  # parameter -> reason
    unused: tuple[str, ...] = ()  # trainable parameters the forward pass does not reach
    coupled: list[str] = field(default_factory=list)  # where examples stop being independent
    batch_layouts: dict[str, Layout] = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)  # module name -> type, called ones
    signature: tuple[Any, ...] = ()

    def __iter__(self) -> Iterator[Use]:
        return iter(self.uses)

    def __len__(self) -> int:
        return len(self.uses)

    def sources(self, operand: Operand) -> tuple[str, ...]:
        """The parameters an operand is computed from (itself, or a derived tensor's sources)."""
        if operand.param is not None:
            return (operand.param,)
        return self.derived[operand.derived].sources if operand.derived is not None else ()

    def uses_of(self, param: str) -> list[Use]:
        """Every use that reads ``param``, directly or through a derived tensor."""
        return [u for u in self.uses if any(param in self.sources(o) for o in u.operands)]

    def param_uses(self) -> dict[str, int]:
        """How many operands, over all uses, read each trainable parameter."""
        count = {name: 0 for name in self.params}
        for u in self.uses:
            for o in u.operands:
                for s in self.sources(o):
                    if s in count:
                        count[s] += 1
        return count

    def describe(self) -> str:
        """A short table of the uses, for debugging and the documentation."""
        lines = []
        for u in self.uses:
            ops = ", ".join(
                f"{o.slot}={o.param or '#' + str(o.derived)}" for o in u.operands
            )
            lines.append(
                f"{u.index:3d} {u.kind:10s} {u.op:14s} {u.module or '(model)'} [{ops}] "
                f"in{u.in_shape}->out{u.out_shape}"
                + (f" then {u.followed_by}" if u.followed_by else "")
            )
        for pid, d in self.derived.items():
            lines.append(f"  #{pid} = {d.op}({', '.join(d.sources)}) {d.shape}")
        for name, why in self.unseen.items():
            lines.append(f"  unseen {name}: {why}")
        return "\n".join(lines)
