"""The gradient-noise-scale tracker for training loops.

:class:`GradientNoiseScale` reads what the user's own forward and backward passes compute -- no
extra pass -- and returns, at every ``step()``, the smoothed :math:`|G|^2`,
:math:`\\mathrm{tr}(\\Sigma)` and :math:`B_\\text{simple}`.

Where each parameter's "small batch" comes from (:meth:`GradientNoiseScale.coverage` says, per
parameter, as of the last step):

* **per-example** (``b = 1``): every parameter whose uses the layer core can follow
  (:mod:`foresight.layers`): the model is planned at its first forward pass (and again whenever the
  trainable parameters, the modes or the forward pass change), and during each forward pass a
  :class:`~foresight.layers.capture.Capture` registers gradient hooks on the outputs of the
  parameters' uses; the backward pass the user runs anyway delivers the per-example norms.
* **micro-batch**: parameters whose per-example gradients are not defined or not visible (a
  BatchNorm in training mode couples the examples; a custom ``autograd.Function``) and all
  parameters   with ``per_example=False``. A hook on the parameter sees each micro-batch's gradient
  before it is accumulated into ``.grad``; the big batch is the accumulated gradient. Needs >= 2
  micro-batches
  per step (gradient accumulation, sizes may differ), or DDP/FSDP2.
* **DDP** (``DistributedDataParallel``) and **FSDP2** (``fully_shard``): the rank's local
  gradient (the micro-batch sum, read by the parameter hook *before* DDP's all-reduce or FSDP's
  reduce-scatter; under FSDP2 the hook sits on the unsharded parameter the forward pass reads) is
  the small batch of the rank's :math:`b_r` examples, the reduced gradient the big batch of all
  :math:`B = \\sum_r b_r` examples. Per-example squared norms are pooled over the ranks. Under
  FSDP2 the gradients are ``DTensor`` shards: the big batch's squared norm is the sum over ranks of
  the local shards' squared norms. All of it -- small-batch values, shard norms, batch sizes --
  travels in **one** ``all_reduce`` of a few float64 scalars per measured step
  (:func:`foresight.distributed.all_reduce_sum`); DDP's and FSDP's own communication is untouched.
  Every rank must call ``step()`` on every step (it is collective on the measured ones); a step
  that one rank cannot measure is skipped on all of them. With uneven batches across ranks the
  small batch is the ranks' harmonic mean batch (exact for ``loss_reduction="mean"`` and
  ``"sum"``). HSDP (a 2-D mesh) raises a clear error. Gradient accumulation: under
  ``ddp.no_sync()`` / ``model.set_requires_gradient_sync(False)`` for all but the last
  micro-batch; ``step()`` after a backward pass that did not synchronise raises.

The big-batch gradient is read from ``.grad`` at ``step()``, so call ``step()`` after the last
``backward()`` of the step and **before** gradient clipping, ``scaler.unscale_()`` and
``optimizer.zero_grad()``. Under a loss scaler pass ``loss_scale=scaler.get_scale()``: all squared
norms are divided by its square. ``loss_reduction="mean"`` means ``.grad`` holds the mean gradient
over all examples of the step (weight each micro-batch's mean loss by its share of the step's
examples, e.g. divide by the number of micro-batches when they are equal); ``"sum"`` means each
backward used a sum over its examples.

Every forward pass of the model with gradients enabled counts as one micro-batch of the step (its
batch size is read from the first tensor argument, dim 0); a forward pass that raises does not
count. Run evaluation under ``torch.no_grad()``, and zero the gradients after each optimizer step.
Passes run by foresight's own measurements are ignored. ``every=k`` measures on every k-th step only
(steps ``0, k, 2k, ...``); on the other steps the hooks return at once.

A ``torch.compile``'d forward pass hides the per-operation activations: with ``per_example=True``
the first ``step()`` raises an error that says what to do; the micro-batch estimator
(``per_example=False``, with accumulation or DDP) works on compiled models.

Smoothing: the raw unbiased estimates of :math:`|G|^2` and :math:`\\mathrm{tr}(\\Sigma)` are
averaged separately with an exponential moving average with bias correction,
:math:`m_n = \\beta m_{n-1} + (1-\\beta) x_n`, :math:`\\hat m_n = m_n / (1 - \\beta^n)`, and
:math:`B_\\text{simple} = \\hat m^{\\Sigma}_n / \\hat m^{G}_n`. Ratios are never averaged,
negative raw estimates are kept (clipping them would bias the average), steps with a non-finite
value (e.g. a loss-scaler overflow) are skipped. The totals add the groups estimated at the latest
measured step (a layer frozen since then drops out of them).

Standard errors: the per-step variance :math:`s^2` of the raw estimates (and their covariance)
is tracked with the same exponential weights (:func:`~foresight.gns.estimators.moments_update`),
and the smoothed value's standard error is :math:`\\hat s\\,(\\sum_i w_i^2)^{1/2}` with
:math:`w_i` the EMA weights (:func:`~foresight.gns.estimators.moments_se`). The raw estimates in
the window are treated as independent around one mean, so a trend inside the window makes the
standard error larger, not smaller. With one smoothed step, or ``beta=0``, there is no standard
error and the estimate is *unresolved*; so is every estimate whose :math:`|G|^2` is not two
standard errors above zero: ``b_simple`` is then ``nan``, ``reason`` says why and
``b_simple_lower`` holds a lower bound when one exists.
"""

from __future__ import annotations

import math
import sys
import warnings
import zlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from foresight import distributed
from foresight.gns.estimators import (
    NoiseScale,
    _unbiased,
    layer_entry,
    layer_name,
    moments_new,
    moments_se,
    moments_update,
    ratio,
)
from foresight.gns.per_example import check_reduction, suspend_trackers, trackers_suspended
from foresight.layers.capture import Capture
from foresight.layers.discover import DiscoveryError, batch_inputs, discover, signature
from foresight.layers.plan import Plan

__all__ = ["GradientNoiseScale"]


def _is_compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover - torch < 2.3
        return bool(torch._dynamo.is_compiling())


def _eager(fn):
    """Keep a hook out of ``torch.compile``'s graphs (it runs eagerly, every time)."""
    try:
        return torch._dynamo.disable(fn)
    except Exception:  # pragma: no cover - no dynamo
        return fn


class GradientNoiseScale:
    """Track the gradient noise scale during training (see the module documentation).

    Args:
        model: the model being trained, its ``DistributedDataParallel`` wrapper, or a model
            sharded with FSDP2's ``fully_shard`` (applied to the root too).
        beta: EMA decay of the smoothed :math:`|G|^2` and :math:`\\mathrm{tr}(\\Sigma)`.
        loss_reduction: ``"mean"`` (``.grad`` is the mean gradient over the step's examples) or
            ``"sum"``.
        groups: optional ``{name: parameters}`` (e.g. the optimizer's parameter groups) for the
            per-group estimates; by default one group per layer.
        per_example: use per-example norms where the layer core can follow the parameter
            (default); ``False`` uses the micro-batch/DDP/FSDP2 estimator for every parameter.
        every: measure on every ``every``-th step only (near-zero cost on the others).
        wrapper: the ``DistributedDataParallel`` wrapper around ``model`` when ``model`` is the
            module inside it (e.g. a LightningModule under ``strategy="ddp"``).

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
    >>> with GradientNoiseScale(model) as gns:
    ...     for _ in range(3):
    ...         x = torch.randn(32, 4)
    ...         loss = torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
    ...         loss.backward()
    ...         est = gns.step()          # before clipping / zero_grad
    ...         opt.step()
    ...         opt.zero_grad()
    >>> est.batch_size, est.trace_sigma > 0
    (32, True)
    >>> gns.coverage()["0.weight"]
    'per-example'
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        beta: float = 0.99,
        loss_reduction: str = "mean",
        groups: dict[str, Iterable[nn.Parameter]] | None = None,
        per_example: bool = True,
        every: int = 1,
        wrapper: nn.Module | None = None,
    ) -> None:
        check_reduction(loss_reduction)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.parallel = distributed.detect(model, wrapper)
        self.parallel.check_gradients()
        self.distributed = self.parallel.kind != "none"
        module: nn.Module = self.parallel.module
        self.compiled = _compiled(module)
        module = getattr(module, "_orig_mod", module)
        if module is not self.parallel.module:
            self.parallel.module = module
        self.module = module
        self.beta = beta
        self.loss_reduction = loss_reduction
        self.per_example = per_example
        self.every = every
        if not any(p.requires_grad for p in module.parameters()):
            raise ValueError("model has no trainable parameters (requires_grad=True)")
        self._groups_arg = groups
        self._group_of: dict[int, str] = {}
        self.group_names: list[str] = []
        self._assign_groups()
        self._handles: list = []
        self._param_handles: dict[int, Any] = {}
        self._hooked_on: dict[int, int] = {}  # parameter -> id of the tensor carrying its hook
        self._open: list[str] = []  # the model's calls in progress (see _pre_forward)
        self._sharded_ready: tuple | None = None  # FSDP2: hooked for these requires_grad
        #: ``callable(module) -> bool``: calls of the model for which it returns ``True`` are
        #: not forward passes (a wrapper's redirection, e.g. Lightning's under DDP, whose
        #: ``training_step`` calls the real forward inside); calls nested in them are.
        self.skip_call: Any = None
        self._closed = False
        self._plan: Plan | None = None
        self._plan_sig: tuple | None = None
        self._plan_error: str | None = None
        self._active: Capture | None = None
        self._pe_now: set[int] = set()  # parameters measured per example in this step
        self._unmeasured: NoiseScale | None = None  # estimate() between two measured steps
        self._warned: set[str] = set()
        self._coverage: dict[str, str] = {}
        self._calls = 0  # step() calls so far
        self._measuring = True
        self._reset_step()
        self.steps = 0
        self.skipped = 0
        self._ema = {g: [0.0, 0.0, 0] for g in self.group_names}  # |G|^2, tr(Sigma), updates
        self._moments = {g: moments_new() for g in self.group_names}  # spread of the raw values
        self._moments_total = moments_new()
        self._last_groups: list[str] = []
        self._last_batch = 0
        self.last_raw: NoiseScale | None = None
        self._install()

    # ------------------------------------------------------------------ setup

    def _named(self) -> dict[str, nn.Parameter]:
        return self.parallel.params()

    def _assign_groups(self) -> None:
        named = self._named()
        groups = self._groups_arg
        out: dict[int, str] = {}
        if groups is not None:
            for gname, ps in groups.items():
                for p in ps:
                    out[id(p)] = str(gname)
        for n, p in named.items():
            out.setdefault(id(p), "(other)" if groups is not None else layer_name(n))
        self._group_of = out
        for g in dict.fromkeys(out.values()):
            if g not in self.group_names:
                self.group_names.append(g)
                if hasattr(self, "_ema"):
                    self._ema.setdefault(g, [0.0, 0.0, 0])
                    self._moments.setdefault(g, moments_new())

    def _install(self) -> None:
        root = self.module
        # The micro-batch estimator works on compiled models: its forward hooks must then run
        # eagerly at every call (outside the compiled graph). The per-example path refuses
        # compiled models (its hooks, traced once, only record that), so it skips the wrapper's
        # cost.
        wrap = _eager if not self.per_example else (lambda fn: fn)
        self._handles.append(
            root.register_forward_pre_hook(wrap(self._pre_forward), with_kwargs=True)
        )
        self._handles.append(
            root.register_forward_hook(wrap(self._post_forward), always_call=True)
        )
        self._hook_params()

    def _hook_params(self) -> None:
        """A gradient hook per trainable parameter, on the tensor the forward pass reads (under
        FSDP2 the unsharded parameter; hooked again if FSDP replaced it)."""
        tensors = self.parallel.forward_tensors()
        for name, p in self._named().items():
            if not p.requires_grad:
                continue
            t = tensors.get(name, p)
            if t is not p and t.requires_grad != p.requires_grad:
                t.requires_grad_(p.requires_grad)  # what FSDP does at its next unshard
            if self._hooked_on.get(id(p)) == id(t):
                continue
            old = self._param_handles.pop(id(p), None)
            if old is not None:
                old.remove()
            self._param_handles[id(p)] = t.register_hook(self._param_hook(name, p))
            self._hooked_on[id(p)] = id(t)

    def _prepare_sharded(self) -> None:
        """FSDP2: make sure every unsharded parameter exists (one all-gather, before the first
        forward pass reaches the inner modules) and carries the hook; again after a re-plan."""
        key = tuple(p.requires_grad for p in self.module.parameters())
        if self._sharded_ready == key:
            return
        self.parallel.refresh()
        if self.parallel.missing_forward_tensors():
            with distributed.full_weights(self.module):
                pass
            self.parallel.refresh()
        self._hook_params()
        self._sharded_ready = None if self.parallel.missing_forward_tensors() else key

    def _reset_step(self) -> None:
        self._example_sq: dict[str, float] = {}  # group -> sum over examples of |g_i|^2
        self._example_count = 0
        self._micro: dict[int, list[tuple[float, int]]] = {}  # param -> [(|c_k|^2, b_k)]
        self._local_sq: dict[int, Tensor] = {}  # param -> |sum_k c_k|^2 so far (DDP, FSDP2)
        self._micro_sizes: list[int] = []
        self._caps: list[tuple[Capture, int]] = []
        self._per_example_ids: set[int] = set()
        self._step_notes: list[str] = []
        self._inexact = False
        self._synced = True  # whether the last backward pass synchronised the gradients

    # ------------------------------------------------------------------ planning

    def _replan(self, args: tuple, kwargs: dict) -> None:
        sig = signature(self.module, args, kwargs)
        if self._plan is not None and sig == self._plan_sig:
            return
        self._plan_sig = sig
        self._assign_groups()
        if self.parallel.sharded:
            self.parallel.refresh()
        self._hook_params()
        try:
            with suspend_trackers(), distributed.full_weights(self.module):
                self._plan = discover(self.module, args, kwargs)
            self._plan_error = None
        except DiscoveryError as exc:
            self._plan, self._plan_error = None, str(exc)

    def _per_example_names(self, named: dict[str, nn.Parameter]) -> set[str]:
        """Trainable parameters whose per-example norms the current plan can deliver."""
        plan = self._plan
        if plan is None or not self.per_example or plan.coupled:
            return set()
        return {
            n for n in plan.params
            if n in named and named[n].requires_grad and n not in plan.unseen
        }

    # ------------------------------------------------------------------ hooks

    def _pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        # every call pushes what it is, its post-forward hook pops it: "count" (a forward pass
        # of the step), "inner" (a nested call, part of the outer pass) or "ignore"
        self._open.append(self._enter(module, args, kwargs))

    def _enter(self, module: nn.Module, args: tuple, kwargs: dict) -> str:
        if self._closed or trackers_suspended() or not torch.is_grad_enabled():
            return "ignore"
        if not self._measuring:
            return "ignore"
        if _is_compiling():
            self.compiled = True
            return "ignore"
        if "count" in self._open:  # a nested call of the model: part of the outer pass
            return "inner"
        if self.skip_call is not None and self.skip_call(module):
            return "ignore"
        self._fw_batch = batch_inputs(args, kwargs) if _has_tensor(args, kwargs) else 1
        if self.parallel.sharded:
            self._prepare_sharded()
        if not self.per_example or self.compiled:
            return "count"
        self._replan(args, kwargs)
        named = self._named()
        wanted = self._per_example_names(named)
        if not wanted:
            return "count"
        cap = Capture(self._plan, module, self._fw_batch, wanted,
                      tensors=self.parallel.forward_tensors())
        self._pe_now = {id(named[n]) for n in wanted}
        cap.__enter__()
        self._active = cap
        return "count"

    def _post_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        entry = self._open.pop() if self._open else "ignore"
        if entry != "count":
            return
        cap, self._active = self._active, None
        if cap is not None:
            cap.__exit__(None, None, None)
        if self._closed:
            return
        if sys.exc_info()[0] is not None:  # the forward pass raised: it does not count
            if cap is not None:
                cap.release()
            return
        self._micro_sizes.append(getattr(self, "_fw_batch", 1))
        if cap is None:
            return
        if cap.deviation is not None:
            cap.release()
            self._plan_sig = None  # plan again at the next forward pass
            self._inexact = True
            self._step_notes.append(f"the forward pass left its plan ({cap.deviation})")
            return
        self._caps.append((cap, self._micro_sizes[-1]))

    def _param_hook(self, name: str, p: nn.Parameter):
        pid = id(p)
        par = self.parallel

        def hook(grad: Tensor) -> None:
            if self._closed or not self._measuring:
                return
            if trackers_suspended() or any(c.busy for c, _ in self._caps) or (
                self._active is not None and self._active.busy
            ):
                return
            if self.distributed:
                self._synced = par.syncing()
            if pid in self._pe_now:
                return
            with torch.no_grad():
                if self.distributed:
                    local = grad
                    for old in par.local_grad(name, p):  # earlier micro-batches of this rank
                        local = local + old.to(grad.dtype)
                    self._local_sq[pid] = _sq(local)
                elif self._micro_sizes:
                    self._micro.setdefault(pid, []).append((float(_sq(grad)),
                                                            self._micro_sizes[-1]))

        return hook

    # ------------------------------------------------------------------ estimation

    def step(self, *, loss_scale: float = 1.0) -> NoiseScale:
        """Fold the step's gradients into the estimate and return the smoothed one.

        Call after the last ``backward()`` of the step, before clipping / unscaling / zeroing.

        Args:
            loss_scale: the factor the loss was multiplied by (``scaler.get_scale()`` under AMP).
        """
        if self._closed:
            raise RuntimeError("this GradientNoiseScale was closed")
        measured = self._measuring
        self._calls += 1
        self._measuring = self._calls % self.every == 0
        if not measured:  # nothing was recorded: the smoothed estimate so far
            if self._unmeasured is None:
                self._unmeasured = self.estimate(batch_size=self._last_batch)
            return self._unmeasured
        if self.compiled and self.per_example:
            self._release_step()
            raise RuntimeError(
                "GradientNoiseScale: the model runs under torch.compile, whose compiled graph "
                "hides the per-layer activations that per-example gradient norms are read from. "
                "Either create the tracker with per_example=False (the micro-batch estimator: "
                "needs >= 2 micro-batches per step via gradient accumulation, or DDP), or measure "
                "on the uncompiled model."
            )
        self._unmeasured = None
        try:
            raw = self._raw_estimate(float(loss_scale))
        finally:
            self._release_step()
        if raw is not None:
            self.last_raw = raw
            values = [raw.grad_sq_norm, raw.trace_sigma] + [
                v for lay in raw.layers for v in (lay.grad_sq_norm, lay.trace_sigma)
            ]
            if all(math.isfinite(v) for v in values):
                self.steps += 1
                self._last_groups = [lay.name for lay in raw.layers]
                self._last_batch = raw.batch_size
                for lay in raw.layers:
                    ema = self._ema.setdefault(lay.name, [0.0, 0.0, 0])
                    ema[0] = self.beta * ema[0] + (1 - self.beta) * lay.grad_sq_norm
                    ema[1] = self.beta * ema[1] + (1 - self.beta) * lay.trace_sigma
                    ema[2] += 1
                    moments_update(
                        self._moments.setdefault(lay.name, moments_new()),
                        lay.grad_sq_norm, lay.trace_sigma, self.beta,
                    )
                moments_update(self._moments_total, raw.grad_sq_norm, raw.trace_sigma, self.beta)
            else:
                self.skipped += 1
        else:
            self.skipped += 1
        return self.estimate(batch_size=raw.batch_size if raw is not None else self._last_batch)

    def _release_step(self) -> None:
        for cap, _ in self._caps:
            cap.release()
        self._pe_now = set()
        self._reset_step()

    def _collect_examples(self, loss_scale: float, b_local: int, named: dict) -> None:
        """Sum the captured per-example squared norms of the step into ``_example_sq``."""
        alpha = 1.0 / b_local if self.loss_reduction == "mean" else 1.0
        keys: list[str] = []
        sums: list[Tensor] = []
        for cap, _ in self._caps:
            norms = cap.finish()
            if cap.errors:
                raise _CaptureFailed("; ".join(cap.errors))
            for n, v in norms.items():
                p = named.get(n)
                if p is None:
                    continue
                keys.append(self._group_of.get(id(p), layer_name(n)))
                sums.append(v.sum(dtype=torch.float64))
                self._per_example_ids.add(id(p))
        if not sums:
            return
        scale = 1.0 / (alpha**2) / loss_scale**2
        for g, v in zip(keys, torch.stack(sums).tolist()):  # one device-to-host copy
            self._example_sq[g] = self._example_sq.get(g, 0.0) + v * scale

    def _raw_estimate(self, loss_scale: float) -> NoiseScale | None:
        sizes = self._micro_sizes
        named = self._named()
        trainable = {n: p for n, p in named.items() if p.requires_grad}
        collective = self.parallel.collective
        if collective and not self._synced:
            raise RuntimeError(
                "GradientNoiseScale.step(): the last backward pass did not synchronise the "
                "gradients (it ran under ddp.no_sync() / set_requires_gradient_sync(False)), so "
                ".grad is not the reduced gradient yet. Run the last micro-batch of the step with "
                "synchronisation on, then call step()."
            )
        n_micro = len(sizes)
        b_local = sum(sizes)
        problem = self._local_problem(loss_scale, b_local, trainable, named)
        if problem is not None and not collective:
            return None
        world = self.parallel.world if collective else 1
        alpha = 1.0 / b_local if self.loss_reduction == "mean" and b_local else 1.0
        s2 = loss_scale**2
        kind_of = self._kinds(trainable, n_micro, world) if problem is None else {}
        # the step's local sums per (group, kind): |.grad|^2 (local shard under FSDP2) and the
        # small-batch value (per-example: sum over examples; micro-batch: |G_rank|^2)
        big: dict[tuple[str, str], float] = {}
        measured = [p for p in trainable.values() if id(p) in kind_of]
        with_grad = [p for p in measured if p.grad is not None]
        for p in measured:
            big.setdefault((self._group_of[id(p)], kind_of[id(p)]), 0.0)
        grads = [distributed.local(p.grad) for p in with_grad]
        for p, v in zip(with_grad, _sq_norms(grads)):
            big[(self._group_of[id(p)], kind_of[id(p)])] += v
        present = list(dict.fromkeys((self._group_of[pid], k) for pid, k in kind_of.items()))
        small: dict[tuple[str, str], float] = {}
        for key in present:
            gname, kind = key
            if kind == "norm":
                small[key] = self._example_sq.get(gname, 0.0)
            elif collective:
                loc = sum(
                    float(v)
                    for pid, v in self._local_sq.items()
                    if self._group_of.get(pid) == gname and kind_of.get(pid) == "micro"
                )
                small[key] = loc / (alpha * b_local) ** 2 / s2
            else:
                # micro-batch k of b_k examples: g_k = c_k / (alpha b_k); E|g_k|^2 = |G|^2 + S/b_k
                total = 0.0
                for pid, seen in self._micro.items():
                    if self._group_of.get(pid) != gname or kind_of.get(pid) != "micro":
                        continue
                    for sq, b in seen:
                        total += sq / (alpha * b) ** 2
                small[key] = total / n_micro / s2
        if collective:
            pairs = self._reduce(problem is None, present, small, big, b_local, s2)
            if pairs is None:
                if problem is None:
                    self._coverage = {n: "excluded: another rank could not measure this step"
                                      for n in trainable}
                return None
            b_big = pairs.pop(("", "batch"))[0]
        else:
            b_big = float(b_local)
            harmonic = n_micro / sum(1.0 / b for b in sizes)
            gscale = (1.0 / (alpha * b_local)) ** 2 / s2
            pairs = {}
            for key in present:
                sq_big = big.get(key, 0.0) * gscale
                if key[1] == "norm":
                    pairs[key] = (small[key] / b_local, 1.0, sq_big, b_big)
                else:
                    pairs[key] = (small[key], harmonic, sq_big, b_big)
        parts: dict[str, list[float]] = {}
        for key, (value, b_small, sq_big, b_eff) in pairs.items():
            if not b_small < b_eff:
                continue
            g2, tr = _unbiased(value, sq_big, b_small, b_eff)
            acc = parts.setdefault(key[0], [0.0, 0.0])
            acc[0] += g2
            acc[1] += tr
        if not parts:
            return None
        layers = [
            dict(name=g, b_simple=ratio(tr, g2), trace_sigma=tr, grad_sq_norm=g2)
            for g, (g2, tr) in parts.items()
        ]
        g_total = sum(v[0] for v in parts.values())
        tr_total = sum(v[1] for v in parts.values())
        return NoiseScale.from_parts(g_total, tr_total, int(round(b_big)), layers)

    def _local_problem(self, loss_scale: float, b_local: int,
                       trainable: dict[str, nn.Parameter], named: dict) -> str | None:
        """Why this rank cannot measure this step (``None``: it can); sets the coverage then."""
        problem = None
        if not self._micro_sizes:
            problem = "no forward pass with gradients this step"
        elif self._inexact:
            problem = "; ".join(self._step_notes)
            self._warn_once("deviation", "GradientNoiseScale: this step is not measured: "
                            + problem + ". The model is planned again.")
        else:
            try:
                self._collect_examples(loss_scale, b_local, named)
            except _CaptureFailed as exc:
                problem = f"per-example capture failed ({exc})"
                self._warn_once("capture",
                                f"GradientNoiseScale: per-example capture failed: {exc}")
        if problem is not None:
            self._coverage = {n: "excluded: " + problem for n in trainable}
        return problem

    def _kinds(self, trainable: dict[str, nn.Parameter], n_micro: int,
               world: int) -> dict[int, str]:
        """Per trainable parameter: ``"norm"`` (per-example) or ``"micro"`` (micro-batch or
        rank-local gradient); sets the coverage and warns about what is left out."""
        micro_ok = world > 1 or n_micro >= 2
        kind_of: dict[int, str] = {}
        cover: dict[str, str] = {}
        reasons = self._exclusion_reasons()
        excluded: dict[str, str] = {}
        for n, p in trainable.items():
            if p.grad is None and id(p) not in self._per_example_ids:
                cover[n] = "excluded: no gradient this step (unused by the forward pass)"
                continue
            if id(p) in self._per_example_ids:
                kind_of[id(p)] = "norm"
                cover[n] = "per-example"
            elif micro_ok and id(p) in self._param_handles:
                kind_of[id(p)] = "micro"
                cover[n] = "micro-batch"
            else:
                why = reasons.get(n, "no per-example gradient")
                excluded[n] = why
                cover[n] = (f"excluded: {why}, and only one micro-batch per step without DDP "
                            "(accumulate >= 2 micro-batches per step to include it)")
        if excluded and not kind_of and self._plan is not None and self._plan.coupled:
            self._coverage = cover
            raise ValueError(
                f"GradientNoiseScale: the examples are coupled at {self._plan.coupled[0]} "
                "(BatchNorm in training mode?), so per-example gradients are not defined, and "
                "there is only one micro-batch per step. Use GradientNoiseScale(model, "
                "per_example=False) with gradient accumulation (>= 2 micro-batches per step) or "
                "DDP, put the BatchNorm layers in eval mode, or use GroupNorm/LayerNorm."
            )
        if excluded:
            groups = sorted({self._group_of.get(id(trainable[n]), n) for n in excluded})
            first = next(iter(excluded.values()))
            self._warn_once("excluded:" + ",".join(groups), (
                f"GradientNoiseScale: parameter group(s) {groups!r} have no per-example gradient "
                f"({first}) and there is only one micro-batch per step without DDP, so they are "
                "left out of the totals (see coverage()). Accumulate >= 2 micro-batches per step "
                "to include them."
            ))
        self._coverage = cover
        return kind_of

    def _reduce(self, valid: bool, present: list[tuple[str, str]],
                small: dict[tuple[str, str], float], big: dict[tuple[str, str], float],
                b_local: int, s2: float
                ) -> dict[tuple[str, str], tuple[float, float, float, float]] | None:
        """The ONE collective of a measured step under DDP/FSDP2, and what it gives.

        Every rank sends the same layout -- ``[valid, key fingerprint, b_r, 1/b_r]``, then one
        small-batch value per (group, kind) of :attr:`group_names`, then (FSDP2 only) the local
        shards' :math:`|g|^2` per (group, kind) -- so the vector never depends on what happened
        on one rank. Returns ``{key: (small value, b_small, |G_big|^2, b_big)}`` (and the total
        batch under ``("", "batch")``), or ``None`` when some rank could not measure the step.
        """
        par = self.parallel
        world = par.world
        layout = [(g, k) for g in self.group_names for k in ("norm", "micro")]
        sharded = par.sharded
        finger = float(sum(zlib.crc32(f"{g}\0{k}".encode()) & 0xFFFFF for g, k in present))
        head = [1.0 if valid else 0.0, finger if valid else 0.0,
                float(b_local) if valid else 0.0, 1.0 / b_local if valid and b_local else 0.0]
        vec = head + [small.get(key, 0.0) for key in layout]
        if sharded:
            vec += [big.get(key, 0.0) for key in layout]
        device = next((p.device for p in self._named().values()), None)
        out = distributed.all_reduce_sum(vec, group=par.group, device=device)
        n_valid, finger_sum, b_sum, inv_sum = out[:4]
        if n_valid < world - 0.5:
            return None
        if abs(finger_sum - world * finger) > 0.5:
            raise distributed.DistributedError(
                "GradientNoiseScale: the ranks measured different parameter groups this step "
                "(per-example planning failed on some ranks only, e.g. a forward pass that "
                "depends on the data, or the trainable parameters differ between ranks); use "
                "per_example=False, which measures every parameter the same way on every rank"
            )
        smalls = dict(zip(layout, out[4 : 4 + len(layout)]))
        bigs = dict(zip(layout, out[4 + len(layout):])) if sharded else big
        harmonic = world / inv_sum
        if self.loss_reduction == "mean":  # .grad = mean over ranks of the ranks' means
            gscale, b_eff = 1.0 / s2, world * harmonic
        else:  # .grad = (1/world) sum over all examples
            gscale, b_eff = (world / b_sum) ** 2 / s2, b_sum
        pairs: dict[tuple[str, str], tuple[float, float, float, float]] = {
            ("", "batch"): (b_sum, 0.0, 0.0, 0.0)
        }
        for key in present:
            sq_big = bigs.get(key, 0.0) * gscale
            if key[1] == "norm":
                pairs[key] = (smalls[key] / b_sum, 1.0, sq_big, b_eff)
            else:
                pairs[key] = (smalls[key] / world, harmonic, sq_big, b_eff)
        return pairs

    def _exclusion_reasons(self) -> dict[str, str]:
        plan = self._plan
        out: dict[str, str] = {}
        if not self.per_example:
            return {n: "per_example=False" for n in self._named()}
        if self.compiled:
            return {n: "the model is compiled" for n in self._named()}
        if plan is None:
            why = self._plan_error or "the model was not planned"
            return {n: why for n in self._named()}
        for n in self._named():
            if plan.coupled:
                out[n] = f"the examples are coupled at {plan.coupled[0]}"
            elif n in plan.unseen:
                out[n] = plan.unseen[n]
            elif n not in plan.params:
                out[n] = "it was frozen when the model was planned"
        return out

    def _warn_once(self, key: str, message: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(message, stacklevel=4)

    def coverage(self) -> dict[str, str]:
        """For every trainable parameter, how its small-batch norm was obtained at the last
        measured step: ``"per-example"``, ``"micro-batch"`` or ``"excluded: <reason>"``."""
        return dict(self._coverage)

    def estimate(self, batch_size: int = 0) -> NoiseScale:
        """The current smoothed estimate: bias-corrected EMAs
        :math:`m_n / (1 - \\beta^n)` of each group's parts, summed over the groups estimated at
        the latest measured step (``nan`` before the first step). Standard errors as in the
        module documentation; ``b_simple`` is ``nan`` unless :math:`|G|^2` is resolved."""
        layers, g_total, tr_total = [], 0.0, 0.0
        for gname in self._last_groups:
            m_g, m_tr, n = self._ema[gname]
            if n == 0:
                continue
            corr = 1.0 - self.beta**n
            g2, tr = m_g / corr, m_tr / corr
            g_total += g2
            tr_total += tr
            se = moments_se(self._moments[gname], self.beta, n)
            layers.append(layer_entry(gname, g2, tr, *se, require_se=True))
        if not layers:
            g_total = tr_total = math.nan
        g_se, tr_se, cov = moments_se(self._moments_total, self.beta, self.steps)
        return NoiseScale.from_parts(
            g_total, tr_total, batch_size, layers,
            grad_sq_norm_se=g_se, trace_sigma_se=tr_se, covariance=cov, require_se=True,
        )

    # ------------------------------------------------------------------ state / lifetime

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume smoothing from a checkpoint."""
        return {
            "beta": self.beta,
            "steps": self.steps,
            "skipped": self.skipped,
            "ema": {g: list(v) for g, v in self._ema.items()},  # [m_G, m_Sigma, n_updates]
            "last_groups": list(self._last_groups),
            # exponentially weighted spread of the raw estimates (see moments_update)
            "moments": {g: list(v) for g, v in self._moments.items()},
            "moments_total": list(self._moments_total),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (group names must match)."""
        missing = set(state["ema"]) ^ set(self._ema)
        if missing:
            raise ValueError(f"state_dict groups do not match this tracker's: {sorted(missing)}")
        self.beta = float(state["beta"])
        self.steps = int(state["steps"])
        self.skipped = int(state["skipped"])
        self._ema = {g: [float(a), float(b), int(n)] for g, (a, b, n) in state["ema"].items()}
        self._last_groups = list(state.get("last_groups", [g for g, v in self._ema.items()
                                                           if v[2] > 0]))
        # states saved before standard errors existed: the spread restarts from here
        moments = state.get("moments") or {}
        self._moments = {
            g: [float(v) for v in moments[g]] if g in moments else moments_new() for g in self._ema
        }
        total = state.get("moments_total")
        self._moments_total = [float(v) for v in total] if total else moments_new()

    def close(self) -> None:
        """Remove every hook from the model (hooks on live autograd graphs become no-ops)."""
        if self._active is not None:
            self._active.__exit__(None, None, None)
            self._active.release()
            self._active = None
        for h in self._handles:
            h.remove()
        for h in self._param_handles.values():
            h.remove()
        self._handles = []
        self._param_handles = {}
        self._release_step()
        self._closed = True

    def __enter__(self) -> GradientNoiseScale:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _CaptureFailed(RuntimeError):
    pass


def _sq_norms(tensors: list[Tensor]) -> list[float]:
    """Squared norms (float64 values) of many tensors, with one device-to-host copy."""
    if not tensors:
        return []
    same = all(t.dtype == tensors[0].dtype and t.device == tensors[0].device for t in tensors)
    if same and tensors[0].dtype in (torch.float32, torch.float64):
        norms = torch._foreach_norm([t.detach() for t in tensors])
        return (torch.stack(norms).double() ** 2).tolist()
    return [float(_sq(t)) for t in tensors]


def _sq(t: Tensor) -> Tensor:
    """Squared norm in float64 (float32 partial sums; half precision upcast first)."""
    t = t.detach()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return torch.linalg.vector_norm(t).double() ** 2


def _has_tensor(args: tuple, kwargs: dict) -> bool:
    try:
        batch_inputs(args, kwargs)
        return True
    except DiscoveryError:
        return False


def _compiled(module: nn.Module) -> bool:
    """Whether ``module`` is a ``torch.compile`` wrapper or was compiled in place."""
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except Exception:  # pragma: no cover
        return False
    return isinstance(module, OptimizedModule) or (
        getattr(module, "_compiled_call_impl", None) is not None
    )
