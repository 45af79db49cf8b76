"""Exact per-example squared gradient norms in one forward and one backward pass.

With :math:`\\ell_b` = ``loss_fn(model(inputs[b:b+1]), targets[b:b+1])`` and :math:`\\theta` the
trainable parameters, :func:`per_example_sq_norms` returns
:math:`\\lVert \\nabla_\\theta \\ell_b \\rVert^2` for every example :math:`b` of the batch.

How: forward hooks record each supported layer's input; tensor hooks on its output receive the
output gradient during one backward pass of the batch loss, and the layer's rule
(:mod:`foresight.gns.rules`) turns the pair into per-example squared norms without forming
per-example gradients (conv layers form them a few examples at a time). The backward pass asks
autograd only for what the rules need -- the layer output gradients, reached by asking for the
bias-sized gradients -- so the weight gradients themselves are not computed, and activations are
released as in a plain backward pass.

Assumption: every hooked layer sees the batch on dim 0 of its first input (as the model input).
A layer whose input's leading size is not the batch size goes to the fallback; a sequence-first
layer whose sequence length happens to equal the batch size cannot be told apart.

Every trainable parameter is routed by counting its uses in the autograd graph:

* used once, by a layer with a rule: the rule's squared-norm identity;
* used several times, every use by a layer with a rule (tied weights, a layer called twice): the
  per-example gradients of each use are materialised and summed before the norm, which keeps the
  cross terms :math:`2\\langle g^{(u)}_b, g^{(v)}_b\\rangle` exactly;
* anything else (a layer without a rule, a parameter used outside its layer, a layer whose input
  is not batch-first): the exact :mod:`torch.func` fallback, ``vmap`` of ``grad`` of the
  per-example loss over the whole model, differentiating only those parameters.

Train-mode BatchNorm normalises with batch statistics, so an example's loss depends on the other
examples and per-example gradients are not defined: that raises :class:`ValueError`.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from foresight._guard import preserved
from foresight.gns.rules import Rule, coupled_batch_norms, find_rule

__all__ = ["per_example_sq_norms", "per_parameter_sq_norms"]

Inputs = Tensor | tuple[Tensor, ...]
LossFn = Callable[[Any, Any], Tensor]


@dataclass
class _Call:
    """One forward call of a layer that has a rule."""

    module: nn.Module
    rule: Rule
    a: Tensor | None
    out_batch: int  # leading size of the output (the tensor itself is not kept)


class Recorder:
    """Forward hooks on the rule layers of ``model`` recording each call's input and output.

    The output's gradient hook is registered inside the forward hook, i.e. before any in-place
    operation can modify the output, and forwards ``(call, grad)`` to ``self.on_grad`` (set it
    before the backward pass).
    """

    def __init__(self, model: nn.Module) -> None:
        self.calls: list[_Call] = []
        self.handles: list = []
        self.grad_handles: list = []
        self.on_grad: Callable[[_Call, Tensor], None] | None = None
        for m in model.modules():
            rule = find_rule(m)
            if rule is None or not any(p.requires_grad for p in m.parameters(recurse=False)):
                continue
            self.handles.append(m.register_forward_hook(self._make_hook(rule)))

    def _make_hook(self, rule: Rule):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if not torch.is_grad_enabled() or not args:
                return
            if not isinstance(args[0], Tensor) or not isinstance(output, Tensor):
                return
            if output.requires_grad:
                call = _Call(module, rule, args[0], _lead(output))
                self.calls.append(call)
                self.grad_handles.append(output.register_hook(self._grad_hook(call)))

        return hook

    def _grad_hook(self, call: _Call):
        def hook(grad: Tensor) -> None:
            if self.on_grad is not None:
                self.on_grad(call, grad)

        return hook

    def remove_forward_hooks(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def remove(self) -> None:
        self.remove_forward_hooks()
        for h in self.grad_handles:
            h.remove()
        self.grad_handles = []
        self.on_grad = None


_SUSPENDED = [0]


def trackers_suspended() -> bool:
    """Whether a foresight measurement is running its own passes (trackers then ignore them)."""
    return _SUSPENDED[0] > 0


@contextlib.contextmanager
def suspend_trackers() -> Iterator[None]:
    """Make :class:`~foresight.gns.GradientNoiseScale` hooks ignore the passes run inside."""
    _SUSPENDED[0] += 1
    try:
        yield
    finally:
        _SUSPENDED[0] -= 1


@contextlib.contextmanager
def guarded(model: nn.Module) -> Iterator[nn.Module]:
    """:func:`foresight._guard.preserved` without copying the ``.grad`` tensors.

    Nothing here writes ``.grad`` (``torch.autograd.grad`` does not accumulate), so each
    parameter's ``.grad`` is detached for the duration and put back by reference; this saves a
    full copy of the gradients (time and memory comparable to the step itself for an MLP).
    """
    saved = [(p, p.grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.grad = None
        with preserved(model), suspend_trackers():
            yield model
    finally:
        for p, grad in saved:
            p.grad = grad


def _lead(t: Tensor) -> int:
    return int(t.shape[0]) if t.dim() > 0 else -1


def check_reduction(loss_reduction: str) -> None:
    if loss_reduction not in ("mean", "sum"):
        raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")


def check_no_coupling(model: nn.Module) -> None:
    """Raise if a BatchNorm layer normalises with batch statistics."""
    coupled = coupled_batch_norms(model)
    if coupled:
        raise ValueError(
            f"BatchNorm layer(s) {coupled} normalise with batch statistics (train mode or "
            "track_running_stats=False), so each example's loss depends on the other examples "
            "and per-example gradients are not defined. Put those layers in eval mode "
            "(layer.eval()), replace them by GroupNorm/LayerNorm, or use the two-batch "
            "estimator (foresight.gns.two_batch, or GradientNoiseScale with accumulation/DDP)."
        )


def graph_uses(*roots: Tensor) -> Counter:
    """How many times each leaf tensor (by ``id``) enters the autograd graph of ``roots``."""
    uses: Counter = Counter()
    stack = [r.grad_fn for r in roots]
    seen: set = set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        for nxt, _ in fn.next_functions:
            if nxt is None:
                continue
            var = getattr(nxt, "variable", None)
            if var is not None:
                uses[id(var)] += 1
            else:
                stack.append(nxt)
    return uses


def route(
    calls: list[_Call], params: list[tuple[str, nn.Parameter]], uses: Counter, batch: int
) -> dict[int, str]:
    """``id(param) -> "norm" | "sum" | "fallback" | "zero"`` (see the module docstring)."""
    n_calls: Counter = Counter()
    off: set[int] = set()
    for call in calls:
        own = [p for p in call.module.parameters(recurse=False) if p.requires_grad]
        n_calls.update(id(p) for p in own)
        if call.a.dim() < 1 or call.a.shape[0] != batch or call.out_batch != batch:
            off.update(id(p) for p in own)
    plan: dict[int, str] = {}
    for _, p in params:
        n_use, n_call = uses.get(id(p), 0), n_calls.get(id(p), 0)
        if n_use == 0:
            plan[id(p)] = "zero"
        elif id(p) in off or n_use != n_call:
            plan[id(p)] = "fallback"
        else:
            plan[id(p)] = "norm" if n_use == 1 else "sum"
    return plan


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _as_args(inputs: Inputs) -> tuple[Tensor, ...]:
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    if not args or not all(isinstance(x, Tensor) for x in args):
        raise TypeError("inputs must be a tensor or a tuple of tensors (batch along dim 0)")
    return args


def _fallback_grads(
    model: nn.Module,
    loss_fn: LossFn,
    args: tuple[Tensor, ...],
    targets: Any,
    names: list[str],
) -> dict[str, Tensor]:
    """Exact per-example gradients of the named parameters by ``vmap(grad(per-example loss))``."""
    from torch.func import functional_call, grad, vmap

    lookup = dict(model.named_parameters())
    chosen = {n: lookup[n].detach() for n in names}

    def one(p: dict[str, Tensor], xs: tuple[Tensor, ...], y: Any) -> Tensor:
        out = functional_call(model, p, tuple(x.unsqueeze(0) for x in xs))
        return loss_fn(out, y.unsqueeze(0))

    try:
        with torch.no_grad():
            return vmap(grad(one), in_dims=(None, 0, 0))(chosen, args, targets)
    except Exception as exc:  # re-raised with what to do
        raise RuntimeError(
            f"parameters {names} have no per-example rule, and the exact torch.func fallback "
            f"(vmap of grad over the model) failed: {exc}. Make the forward pass vmap-compatible "
            "(no .item()/data-dependent Python control flow, dropout in eval mode) or use the "
            "two-batch estimator (foresight.gns.two_batch)."
        ) from exc


def per_parameter_sq_norms(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Inputs,
    targets: Any,
    *,
    loss_reduction: str = "mean",
    batch_gradient: bool = False,
) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """Per-example squared gradient norms of each trainable parameter.

    Returns ``(norms, mean_grads)``: ``norms[name]`` is a ``[B]`` tensor of
    :math:`\\lVert \\nabla_{\\theta_{name}} \\ell_b \\rVert^2`; ``mean_grads`` (only when
    ``batch_gradient=True``, else ``None``) holds the batch-mean gradient
    :math:`\\frac1B \\sum_b \\nabla \\ell_b` of each parameter. Parameter names are those of
    ``model.named_parameters()`` (a tied parameter appears once).

    >>> import torch
    >>> model = torch.nn.Linear(3, 2)
    >>> norms, _ = per_parameter_sq_norms(
    ...     model, torch.nn.functional.mse_loss, torch.randn(4, 3), torch.randn(4, 2))
    >>> sorted(norms), tuple(norms["weight"].shape)
    (['bias', 'weight'], (4,))
    """
    check_reduction(loss_reduction)
    check_no_coupling(model)
    args = _as_args(inputs)
    batch = args[0].shape[0]
    params = trainable(model)
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad=True)")
    scale = float(batch) if loss_reduction == "mean" else 1.0
    by_id = {id(p): (n, p) for n, p in params}
    norms: dict[str, Tensor] = {}
    summed: dict[int, Tensor] = {}
    with guarded(model):
        rec = Recorder(model)
        try:
            with torch.enable_grad():
                loss = loss_fn(model(*args), targets)
            rec.remove_forward_hooks()
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise ValueError(
                    "loss_fn must return a scalar tensor (use reduction 'mean' or 'sum')"
                )
            if not loss.requires_grad:
                raise ValueError("the loss does not depend on any trainable parameter")
            plan = route(rec.calls, params, graph_uses(loss), batch)

            def on_grad(call: _Call, grad: Tensor) -> None:
                own = [
                    (n, p)
                    for n, p in call.module.named_parameters(recurse=False)
                    if p.requires_grad and plan.get(id(p)) in ("norm", "sum")
                ]
                if not own:
                    return
                if call.a is None:
                    return
                with torch.no_grad():
                    a, g = call.a.detach(), grad.detach()
                    call.a = None  # release the activation as autograd would
                    if any(plan[id(p)] == "norm" for _, p in own):
                        sq = call.rule.sq_norms(call.module, a, g)
                        for n, p in own:
                            if plan[id(p)] == "norm":
                                norms[by_id[id(p)][0]] = sq[n] * scale**2
                    if any(plan[id(p)] == "sum" for _, p in own):
                        per = call.rule.grads(call.module, a, g)
                        for n, p in own:
                            if plan[id(p)] == "sum":
                                prev = summed.get(id(p))
                                summed[id(p)] = per[n] if prev is None else prev + per[n]

            rec.on_grad = on_grad
            if batch_gradient:
                request = [p for _, p in params]
            else:
                request, seen = [], set()
                for call in rec.calls:
                    if not any(
                        plan.get(id(p)) in ("norm", "sum")
                        for p in call.module.parameters(recurse=False)
                    ):
                        continue
                    anchor = _anchor(call)
                    if id(anchor) not in seen:
                        seen.add(id(anchor))
                        request.append(anchor)
            for call in rec.calls:  # keep only what the hooks need, so memory frees as usual
                if not any(
                    plan.get(id(p)) in ("norm", "sum")
                    for p in call.module.parameters(recurse=False)
                ):
                    call.a = None
            grads = torch.autograd.grad(loss, request, allow_unused=True) if request else ()
        finally:
            rec.remove()
    for pid, total in summed.items():
        norms[by_id[pid][0]] = total.reshape(batch, -1).square().sum(1) * scale**2
    fallback = [n for n, p in params if plan[id(p)] == "fallback"]
    if fallback:
        with guarded(model):
            for n, g in _fallback_grads(model, loss_fn, args, targets, fallback).items():
                norms[n] = g.reshape(batch, -1).square().sum(1)
    for n, p in params:
        if n not in norms:  # unused parameter (or an output whose gradient never arrived)
            norms[n] = torch.zeros(batch, dtype=p.dtype, device=p.device)
    norms = {n: norms[n] for n, _ in params}
    mean_grads = None
    if batch_gradient:
        div = 1.0 if loss_reduction == "mean" else float(batch)
        mean_grads = {
            n: (torch.zeros_like(p) if g is None else g.detach() / div)
            for (n, p), g in zip(params, grads)
        }
    return norms, mean_grads


def _anchor(call: _Call) -> Tensor:
    """What to ask autograd for so that it reaches ``call``'s layer: a bias-like (1-D) parameter
    (its gradient is a cheap sum), else the layer input, else its smallest parameter."""
    own = [p for p in call.module.parameters(recurse=False) if p.requires_grad]
    flat = [p for p in own if p.dim() <= 1]
    if flat:
        return min(flat, key=lambda p: p.numel())
    if call.a is not None and call.a.requires_grad:
        return call.a
    return min(own, key=lambda p: p.numel())


def per_example_sq_norms(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Inputs,
    targets: Any,
    *,
    loss_reduction: str = "mean",
) -> Tensor:
    """Per-example squared gradient norms over all trainable parameters.

    .. math::

        n_b = \\lVert \\nabla_\\theta \\ell_b \\rVert^2, \\qquad
        \\ell_b = \\mathrm{loss\\_fn}(\\mathrm{model}(x_{b:b+1}), y_{b:b+1}),

    for :math:`b = 1..B`. ``loss_fn(model(inputs), targets)`` must be the batch loss:
    the mean of the :math:`\\ell_b` (``loss_reduction="mean"``; the output gradients are then
    :math:`1/B` of the per-example ones, which is corrected for) or their sum (``"sum"``).

    Args:
        model: any module; ``inputs`` (a tensor or a tuple of tensors) carry the batch on dim 0.
        loss_fn: ``loss_fn(output, targets) -> scalar``.
        inputs: model inputs, batch first.
        targets: targets, batch first.
        loss_reduction: ``"mean"`` or ``"sum"``.

    Returns:
        A ``[B]`` tensor.

    Raises:
        ValueError: a BatchNorm layer uses batch statistics (train mode), which couples examples.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    >>> x, y = torch.randn(5, 3), torch.randn(5, 1)
    >>> norms = per_example_sq_norms(model, torch.nn.functional.mse_loss, x, y)
    >>> ref = []
    >>> for i in range(5):
    ...     grads = torch.autograd.grad(
    ...         torch.nn.functional.mse_loss(model(x[i:i+1]), y[i:i+1]), list(model.parameters()))
    ...     ref.append(sum(g.square().sum() for g in grads))
    >>> torch.allclose(norms, torch.stack(ref), rtol=1e-4)
    True
    """
    norms, _ = per_parameter_sq_norms(
        model, loss_fn, inputs, targets, loss_reduction=loss_reduction
    )
    return torch.stack(list(norms.values())).sum(0)
