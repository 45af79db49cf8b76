"""Exact per-example squared gradient norms in one forward and one backward pass.

With :math:`\\ell_b` = ``loss_fn(model(inputs[b:b+1]), targets[b:b+1])`` and :math:`\\theta` the
trainable parameters, :func:`per_example_sq_norms` returns
:math:`\\lVert \\nabla_\\theta \\ell_b \\rVert^2` for every example :math:`b` of the batch.

How: the layer core (:mod:`foresight.layers`) plans the model once -- every use of every parameter,
at the level of torch operations, with where the batch sits in each -- and during one forward and
one backward pass of the batch loss (:class:`foresight.layers.capture.Capture`) each use's rule
turns its input and output gradient into per-example contributions: closed forms for linear maps
(any rank, ``addmm``/``matmul`` weights), convolutions, embeddings, normalisations and elementwise
scale and bias parameters; derived weights (parametrizations, weight norm) through one batched
vector-Jacobian product to the parameters they are made of; tied parameters with their cross terms;
and any operation no rule knows through the exact per-example vector-Jacobian product of that
operation alone (never of the whole model). The backward pass asks autograd only for what the rules
need, so the weight gradients themselves are not computed. Plans are cached per model and input
signature; a forward pass that differs from its plan is planned again.

Train-mode BatchNorm normalises with batch statistics, so an example's loss depends on the other
examples and per-example gradients are not defined: that raises :class:`ValueError`, as does a
parameter whose gradient passes through an operation the interception cannot see (a custom
``autograd.Function``, a compiled region).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from foresight._guard import preserved
from foresight.layers.capture import Capture
from foresight.layers.discover import DiscoveryError, discover, signature
from foresight.layers.plan import Plan

__all__ = ["per_example_sq_norms", "per_parameter_sq_norms", "plan_for"]

Inputs = Tensor | tuple[Tensor, ...]
LossFn = Callable[[Any, Any], Tensor]

_PLANS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Plan]] = weakref.WeakKeyDictionary()
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


def check_reduction(loss_reduction: str) -> None:
    if loss_reduction not in ("mean", "sum"):
        raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def coupling_error(where: list[str]) -> ValueError:
    return ValueError(
        f"the examples of a batch are coupled at {where[0]} (BatchNorm in training mode, or "
        "another operation that mixes examples), so each example's loss depends on the other "
        "examples and per-example gradients are not defined. Put BatchNorm layers in eval mode "
        "(layer.eval()), replace them by GroupNorm/LayerNorm, or use the two-batch estimator "
        "(foresight.gns.two_batch, or GradientNoiseScale(..., per_example=False) with "
        "accumulation or DDP)."
    )


def check_no_coupling(model: nn.Module, args: tuple[Any, ...]) -> None:
    """Raise if the examples of a batch are not independent in ``model`` (BatchNorm in training
    mode, or any other operation that mixes examples), as found by the plan."""
    try:
        plan = plan_for(model, args)
    except DiscoveryError:
        return  # reported by the caller's own forward pass
    if plan.coupled:
        raise coupling_error(plan.coupled)


def check_materialized(model: nn.Module, args: tuple[Any, ...]) -> None:
    """Raise if parameters or inputs live on the meta device (they have shapes but no values)."""
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta or any(isinstance(a, Tensor) and a.is_meta for a in args):
        where = f"parameters {meta[:3]}{' ...' if len(meta) > 3 else ''}" if meta else "inputs"
        raise ValueError(
            f"the {where} are on the meta device: they have shapes but no values, so there are "
            "no gradients to measure. Materialise the model first (model.to_empty(device=...) "
            "then load or initialise the weights)."
        )


def _as_args(inputs: Inputs) -> tuple[Tensor, ...]:
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    if not args or not all(isinstance(x, Tensor) for x in args):
        raise TypeError("inputs must be a tensor or a tuple of tensors (batch along dim 0)")
    return args


def plan_for(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> Plan:
    """The cached plan of ``model`` for calls like ``model(*args, **kwargs)`` (planned anew when
    the parameters, their ``requires_grad``, the modes or the inputs' per-example shapes change)."""
    sig = signature(model, args, kwargs)
    cached = _PLANS.get(model)
    if cached is not None and cached[0] == sig:
        return cached[1]
    with suspend_trackers():
        plan = discover(model, args, kwargs)
    _PLANS[model] = (sig, plan)
    return plan


def forget_plan(model: nn.Module) -> None:
    _PLANS.pop(model, None)


def _check_plan(plan: Plan, wanted: set[str]) -> None:
    if plan.coupled:
        raise coupling_error(plan.coupled)
    unseen = {n: why for n, why in plan.unseen.items() if n in wanted}
    if unseen:
        name, why = next(iter(unseen.items()))
        raise ValueError(
            f"no per-example gradient for {sorted(unseen)}: {why}. Use the two-batch estimator "
            "(foresight.gns.two_batch, or GradientNoiseScale(..., per_example=False) with "
            "accumulation or DDP) for such models."
        )


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
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    args = _as_args(inputs)
    batch = int(args[0].shape[0]) if args[0].dim() > 0 else 0
    if batch < 1:
        raise ValueError(
            f"inputs must hold at least one example along dim 0, got shape {tuple(args[0].shape)}"
        )
    if torch.is_inference_mode_enabled():
        raise ValueError(
            "per-example gradients need autograd, which torch.inference_mode() switches off; "
            "call this outside the inference_mode block"
        )
    params = trainable(model)
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad=True)")
    check_materialized(model, args)
    wanted = {n for n, _ in params}
    try:
        plan = plan_for(model, args)
    except DiscoveryError as exc:
        raise ValueError(f"per-example gradients: {exc}") from exc
    _check_plan(plan, wanted)
    scale = float(batch) if loss_reduction == "mean" else 1.0
    grads: tuple = ()
    with guarded(model):
        for attempt in range(2):
            cap = Capture(plan, model, batch, wanted)
            with torch.enable_grad():
                with cap:
                    out = model(*args)
                if cap.deviation is not None and attempt == 0:
                    cap.release()
                    forget_plan(model)
                    plan = plan_for(model, args)
                    _check_plan(plan, wanted)
                    continue
                if cap.deviation is not None:
                    raise ValueError(
                        f"the forward pass does not follow its plan ({cap.deviation}); "
                        "foresight cannot attribute its gradients"
                    )
                loss = loss_fn(out, targets)
            break
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            cap.release()
            raise ValueError("loss_fn must return a scalar tensor (use reduction 'mean' or 'sum')")
        if not loss.requires_grad:
            cap.release()
            raise ValueError("the loss does not depend on any trainable parameter")
        request = [p for _, p in params] if batch_gradient else cap.anchors()
        try:
            if request:
                grads = torch.autograd.grad(loss, request, allow_unused=True)
            norms = cap.finish()
        finally:
            cap.release()
    if cap.errors:
        raise RuntimeError("per-example gradients failed: " + "; ".join(cap.errors))
    out_norms: dict[str, Tensor] = {}
    for n, p in params:
        v = norms.get(n)
        if v is None:
            v = torch.zeros(batch, dtype=p.dtype, device=p.device)
        out_norms[n] = v * scale**2
    mean_grads = None
    if batch_gradient:
        div = 1.0 if loss_reduction == "mean" else float(batch)
        mean_grads = {
            n: (torch.zeros_like(p) if g is None else g.detach() / div)
            for (n, p), g in zip(params, grads)
        }
    return out_norms, mean_grads


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
        ValueError: a BatchNorm layer uses batch statistics (train mode), which couples examples;
            a parameter's gradient passes through an operation foresight cannot see.

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
