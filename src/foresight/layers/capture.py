r"""Run-time capture of a planned forward pass: per-example gradient norms from one backward pass.

:class:`Capture` is a :class:`~torch.overrides.TorchFunctionMode` that is active during one forward
pass of the model. It checks every call that reads a parameter or a derived tensor against the
:class:`~foresight.layers.plan.Plan` (same function, same parameters, in the same order: a
*deviation* is reported, never guessed through), keeps what the rule of each use needs (its input,
its operands) and registers a hook on the use's output. During the backward pass each hook turns
the output gradient into per-example contributions (:mod:`foresight.layers.contrib`) to the
parameters the use reads, and the capture adds them up:

* a parameter read once, directly, by a rule: the rule's squared norm, nothing kept;
* a parameter read several times (tied weights, a layer called twice): the contributions are kept
  until the last one arrives, then the squared norm of their sum, cross terms included;
* a derived tensor (a parametrization's weight, ``weight * gain``, a broadcast position bias): its
  per-example gradients are summed over its uses, then carried to the parameters it is computed from
  by one batched vector-Jacobian product through the real autograd graph
  (``is_grads_batched=True``);
* a call no rule matches: the exact per-example vector-Jacobian product through that call alone,
  with the output gradient of each example in turn (batched), also through the real graph -- so
  dropout masks and anything else random are the ones the forward pass drew.

Gradient hooks the user registered on parameters are silenced during these inner products, so they
see only the ordinary backward pass.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from foresight.layers.calls import flatten, func_name, is_inplace, outputs
from foresight.layers.contrib import Dense, sq_norm_of_sum
from foresight.layers.discover import _IGNORED_NAMES
from foresight.layers.layout import per_example_masked
from foresight.layers.plan import Plan, Use
from foresight.layers.registry import FALLBACK, rules_for

__all__ = ["Capture", "Deviation", "quiet_hooks"]


class Deviation(RuntimeError):
    """The live forward pass differs from the plan."""


@contextlib.contextmanager
def quiet_hooks(tensors: list[Tensor]) -> Iterator[None]:
    """Silence the gradient hooks registered on ``tensors`` (restored on exit)."""
    saved = []
    for t in tensors:
        hooks = getattr(t, "_backward_hooks", None)
        if hooks:
            saved.append((hooks, dict(hooks)))
            hooks.clear()
    try:
        yield
    finally:
        for hooks, content in saved:
            hooks.update(content)


_IGNORED_CACHE: dict[Any, bool] = {}


def _ignored(func: Any) -> bool:
    try:
        hit = _IGNORED_CACHE.get(func)
    except TypeError:  # unhashable
        return func_name(func) in _IGNORED_NAMES
    if hit is None:
        hit = _IGNORED_CACHE[func] = func_name(func) in _IGNORED_NAMES
    return hit


def _rule_of(use: Use, func: Any):
    if use.kind == FALLBACK.name:
        return FALLBACK
    for rule in rules_for(func):
        if type(rule).__name__ == use.rule:
            return rule
    return FALLBACK


@dataclass
class _Pending:
    use: Use
    rule: Any
    act: Tensor | None
    operands: dict[str, Tensor]
    out: Tensor | None  # kept only for the fallback's vector-Jacobian product


@dataclass
class _Ledger:
    """What is still expected, and what arrived, for one forward pass."""

    expect: dict[str, int] = field(default_factory=dict)  # parameter -> contributions to come
    parts: dict[str, list] = field(default_factory=dict)
    derived_expect: dict[int, int] = field(default_factory=dict)
    derived_sum: dict[int, Tensor] = field(default_factory=dict)
    norms: dict[str, Tensor] = field(default_factory=dict)


class Capture(TorchFunctionMode):
    """Record one forward pass against ``plan`` (see the module documentation).

    Args:
        plan: from :func:`foresight.layers.discover` for this model.
        model: the model (its parameters are looked up by identity).
        batch: the number of examples of this forward pass.
        params: the names of the parameters whose per-example norms are wanted (default: every
            trainable parameter of the plan).
        tensors: ``{name: tensor}``, the tensors the forward pass reads for the parameters, where
            they are not the registered parameters (FSDP2's unsharded parameters, from
            :meth:`foresight.distributed.Parallel.forward_tensors`); default
            ``model.named_parameters()``.
    """

    def __init__(
        self, plan: Plan, model: nn.Module, batch: int, params: set[str] | None = None,
        tensors: dict[str, Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.plan = plan
        self.batch = int(batch)
        named = dict(model.named_parameters()) if tensors is None else dict(tensors)
        self.by_id = {id(p): n for n, p in named.items()}
        self.tensors = named
        self.wanted = set(plan.params) if params is None else set(params)
        self.deviation: str | None = None
        self._pos = 0
        self._derived: dict[int, int] = {}  # id(tensor) -> derived id (live tensors)
        self._derived_tensor: dict[int, Tensor] = {}
        self._pending: list[_Pending] = []
        self._hooks: list[Any] = []
        self._busy = 0
        self.ledger = _Ledger()
        self._expect()
        self.errors: list[str] = []

    # ------------------------------------------------------------------ bookkeeping

    def _expect(self) -> None:
        led = self.ledger
        used_derived: dict[int, int] = {}
        for use in self.plan.uses:
            if not use.grad:
                continue
            for o in use.operands:
                if o.param is not None:
                    if o.param in self.wanted:
                        led.expect[o.param] = led.expect.get(o.param, 0) + 1
                elif o.derived is not None:
                    used_derived[o.derived] = used_derived.get(o.derived, 0) + 1
        for d, n in used_derived.items():
            srcs = [s for s in self.plan.derived[d].sources if s in self.wanted]
            if not srcs:
                continue
            led.derived_expect[d] = n
            for s in srcs:
                led.expect[s] = led.expect.get(s, 0) + 1

    @property
    def busy(self) -> bool:
        """Whether the capture is running an inner vector-Jacobian product right now."""
        return self._busy > 0

    # ------------------------------------------------------------------ forward

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.deviation is not None or _ignored(func):
            return func(*args, **kwargs)
        flat = flatten(args, kwargs)
        keys = []
        by_id, derived = self.by_id, self._derived
        for a in flat:
            if type(a) is nn.Parameter or (derived and isinstance(a, Tensor)):
                name = by_id.get(id(a))
                if name is not None:
                    keys.append(name)
                else:
                    d = derived.get(id(a))
                    if d is not None:
                        keys.append(f"#{d}")
            elif isinstance(a, Tensor) and id(a) in by_id:  # a Parameter subclass
                keys.append(by_id[id(a)])
        if not keys:
            return func(*args, **kwargs)
        steps = self.plan.steps
        if self._pos >= len(steps):
            self.deviation = f"{func_name(func)} reads {keys} after the planned forward pass ended"
            return func(*args, **kwargs)
        step = steps[self._pos]
        if step.func is not func or tuple(keys) != step.keys:
            self.deviation = (
                f"call {self._pos} is {func_name(func)} on {keys}, the plan expected "
                f"{func_name(step.func)} on {list(step.keys)}"
            )
            return func(*args, **kwargs)
        use = self.plan.uses[step.use] if step.use is not None else None
        pending = None
        if use is not None and use.grad:
            pending = self._before(use, func, flat)
        result = func(*args, **kwargs)
        outs = outputs(result)
        if not outs:  # not recorded by the discovery either
            return result
        self._pos += 1
        if step.derived is not None and step.derived_out < len(outs):
            t = outs[step.derived_out]
            self._derived[id(t)] = step.derived
            self._derived_tensor[step.derived] = t
        if pending is not None:
            out = outs[use.out_index]
            if out.requires_grad:
                if use.kind == FALLBACK.name:
                    pending.out = out
                self._pending.append(pending)
                self._hooks.append(out.register_hook(self._hook(pending)))
        return result

    def _before(self, use: Use, func: Any, flat: list[Any]) -> _Pending:
        rule = _rule_of(use, func)
        act = flat[use.activation]
        if isinstance(act, Tensor):
            act = act.detach()
            if is_inplace(func) and getattr(rule, "needs_input", True):
                act = act.clone()
        operands = {}
        for o in use.operands:
            operands[o.slot] = flat[o.position]
        for name, p in use.options.get("capture", {}).items():
            operands[name] = flat[p].detach()
        return _Pending(use, rule, act, operands, None)

    # ------------------------------------------------------------------ backward

    def _hook(self, pending: _Pending):
        def hook(grad: Tensor) -> None:
            if self._busy:
                return
            try:
                self._arrive(pending, grad)
            except Exception as exc:  # recorded, reported by the caller; never breaks training
                self.errors.append(
                    f"{pending.use.module or '(model)'} ({pending.use.op}): "
                    f"{type(exc).__name__}: {exc}"
                )
            finally:
                pending.act = None
                pending.out = None
                pending.operands = {}

        return hook

    def _arrive(self, pending: _Pending, grad: Tensor) -> None:
        use, b = pending.use, self.batch
        if pending.rule is FALLBACK:
            contribs = self._local_vjp(pending, grad)
        else:
            with torch.no_grad():
                contribs = pending.rule.per_example(use, pending.act, grad.detach(),
                                                    pending.operands, b)
        for o in use.operands:
            c = contribs.get(o.slot)
            if o.param is not None:
                if o.param in self.ledger.expect:
                    self._add(o.param, c)
            elif o.derived is not None and o.derived in self.ledger.derived_expect:
                self._add_derived(o.derived, c)

    def _local_vjp(self, pending: _Pending, grad: Tensor) -> dict[str, Any]:
        use, b = pending.use, self.batch
        slots = [o.slot for o in use.operands]
        inputs = [pending.operands[s] for s in slots]
        masked = per_example_masked(grad.detach(), use.out_layout, b)
        grads = self._batched_grad(pending.out, inputs, masked)
        return {s: (Dense(g) if g is not None else None) for s, g in zip(slots, grads)}

    def _batched_grad(self, out: Tensor, inputs: list[Tensor], grad_outputs: Tensor):
        """``autograd.grad`` of ``out`` for each of the ``B`` stacked ``grad_outputs``."""
        self._busy += 1
        try:
            with quiet_hooks(inputs), torch.enable_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    return torch.autograd.grad(out, inputs, grad_outputs, retain_graph=True,
                                               allow_unused=True, is_grads_batched=True)
                except RuntimeError:  # an operation without a batching rule: one at a time
                    rows = [torch.autograd.grad(out, inputs, g, retain_graph=True,
                                                allow_unused=True) for g in grad_outputs]
                    return [None if rows[0][i] is None else torch.stack([x[i] for x in rows])
                            for i in range(len(inputs))]
        finally:
            self._busy -= 1

    def _add_derived(self, d: int, c: Any) -> None:
        led = self.ledger
        if c is not None:
            dense = c.dense()
            prev = led.derived_sum.get(d)
            led.derived_sum[d] = dense if prev is None else prev + dense
        led.derived_expect[d] -= 1
        if led.derived_expect[d] == 0:
            self._resolve(d)

    def _resolve(self, d: int) -> None:
        led = self.ledger
        total = led.derived_sum.pop(d, None)
        srcs = [s for s in self.plan.derived[d].sources if s in led.expect]
        t = self._derived_tensor.get(d)
        if total is None or t is None:
            for s in srcs:
                self._add(s, None)
            return
        inputs = [self.tensors[s] for s in srcs]
        grads = self._batched_grad(t, inputs, total.reshape(total.shape[0], *t.shape))
        for s, g in zip(srcs, grads):
            self._add(s, Dense(g) if g is not None else None)

    def _add(self, param: str, c: Any) -> None:
        led = self.ledger
        if c is not None:
            led.parts.setdefault(param, []).append(c)
        led.expect[param] -= 1
        if led.expect[param] == 0:
            self._finish(param)

    def _finish(self, param: str) -> None:
        led = self.ledger
        parts = led.parts.pop(param, [])
        shape = tuple(self.tensors[param].shape)
        with torch.no_grad():
            if not parts:
                led.norms[param] = torch.zeros(self.batch, device=self.tensors[param].device)
            elif len(parts) == 1:
                led.norms[param] = parts[0].sq()
            else:
                led.norms[param] = sq_norm_of_sum(parts, shape)

    # ------------------------------------------------------------------ results

    def finish(self) -> dict[str, Tensor]:
        """Per-example squared norms ``[B]`` of every wanted parameter (the gradient as
        backpropagated: multiply by the loss scaling yourself). Contributions that never arrived
        (an output the loss does not depend on) count as zero."""
        led = self.ledger
        for d in list(led.derived_expect):
            if led.derived_expect[d] > 0:
                led.derived_expect[d] = 0
                self._resolve(d)
        for p in list(led.expect):
            if led.expect[p] > 0:
                led.expect[p] = 0
                self._finish(p)
        self.release()
        return dict(led.norms)

    def release(self) -> None:
        """Drop every kept tensor and hook."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._pending = []
        self._derived = {}
        self._derived_tensor = {}

    def anchors(self) -> list[Tensor]:
        """Small tensors to ask autograd for so that the backward pass reaches every use."""
        out: list[Tensor] = []
        seen: set[int] = set()
        for p in self._pending:
            cands = [t for t in p.operands.values() if isinstance(t, Tensor) and t.requires_grad]
            flat = [t for t in cands if t.dim() <= 1]
            pick = min(flat, key=lambda t: t.numel()) if flat else None
            if pick is None and cands:
                pick = min(cands, key=lambda t: t.numel())
            if pick is not None and id(pick) not in seen:
                seen.add(id(pick))
                out.append(pick)
        return out
