"""The gradient-noise-scale tracker for training loops.

:class:`GradientNoiseScale` reads what the user's own forward and backward passes compute -- no
extra pass -- and returns, at every ``step()``, the smoothed :math:`|G|^2`,
:math:`\\mathrm{tr}(\\Sigma)` and :math:`B_\\text{simple}`.

Where each parameter's "small batch" comes from:

* **per-example** (``b = 1``): parameters of layers with a rule (:mod:`foresight.gns.rules`), used
  once per forward pass. Forward hooks keep the layer input; a hook on the layer output receives its
  gradient during ``loss.backward()`` and the rule turns the pair into per-example squared norms.
* **micro-batch**: every other parameter (no rule, tied, used outside its layer) and all parameters
  with ``per_example=False``. A hook on the parameter sees each micro-batch's gradient before it is
  accumulated into ``.grad``; the big batch is the accumulated gradient. Needs >= 2 micro-batches
  per step (gradient accumulation), or DDP.
* **DDP** (``DistributedDataParallel``): the rank's local gradient (the micro-batch sum, read by
  the parameter hook *before* DDP's all-reduce replaces ``.grad``) is the small batch of
  :math:`b = ` micro-batch :math:`\\times` micro-steps examples, the all-reduced ``.grad`` the big
  batch of :math:`b \\times` world size. Per-example squared norms are averaged over ranks too.
  The ranks' small-batch values travel in **one** ``all_reduce`` of a few scalars per step; DDP's
  own communication is untouched (no comm hook is installed, so yours keeps working).

The big-batch gradient is read from ``.grad`` at ``step()``, so call ``step()`` after the last
``backward()`` of the step and **before** gradient clipping, ``scaler.unscale_()`` and
``optimizer.zero_grad()``. Under a loss scaler pass ``loss_scale=scaler.get_scale()``: all squared
norms are divided by its square. ``loss_reduction="mean"`` means ``.grad`` holds the mean gradient
over all examples of the step (divide a mean loss by the number of micro-batches when
accumulating, as usual); ``"sum"`` means each backward used a sum over its examples.

Every forward pass of the model with gradients enabled counts as one micro-batch of the step (its
batch size is read from the first tensor argument, dim 0): run evaluation under
``torch.no_grad()``, and zero the gradients after each optimizer step. Passes run by foresight's
own measurements (:func:`~foresight.gns.noise_scale` etc.) are ignored.

Smoothing: the raw unbiased estimates of :math:`|G|^2` and :math:`\\mathrm{tr}(\\Sigma)` are
averaged separately with an exponential moving average with bias correction,
:math:`m_n = \\beta m_{n-1} + (1-\\beta) x_n`, :math:`\\hat m_n = m_n / (1 - \\beta^n)`, and
:math:`B_\\text{simple} = \\hat m^{\\Sigma}_n / \\hat m^{G}_n`. Ratios are never averaged,
negative raw estimates are kept (clipping them would bias the average), steps with a non-finite
value (e.g. a loss-scaler overflow) are skipped.

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
import warnings
from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

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
from foresight.gns.per_example import (
    _Call,
    _lead,
    check_reduction,
    graph_uses,
    route,
    trackers_suspended,
    trainable,
)
from foresight.gns.rules import coupled_batch_norms, find_rule

__all__ = ["GradientNoiseScale"]


def _tensors(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


class GradientNoiseScale:
    """Track the gradient noise scale during training (see the module documentation).

    Args:
        model: the model being trained, or its ``DistributedDataParallel`` wrapper.
        beta: EMA decay of the smoothed :math:`|G|^2` and :math:`\\mathrm{tr}(\\Sigma)`.
        loss_reduction: ``"mean"`` (``.grad`` is the mean gradient over the step's examples) or
            ``"sum"``.
        groups: optional ``{name: parameters}`` (e.g. the optimizer's parameter groups) for the
            per-group estimates; by default one group per layer.
        per_example: use per-example norms where a rule exists (default); ``False`` uses the
            micro-batch/DDP estimator for every parameter.

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
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        beta: float = 0.99,
        loss_reduction: str = "mean",
        groups: dict[str, Iterable[nn.Parameter]] | None = None,
        per_example: bool = True,
    ) -> None:
        check_reduction(loss_reduction)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        from torch.nn.parallel import DistributedDataParallel

        self.distributed = isinstance(model, DistributedDataParallel)
        self.module: nn.Module = model.module if self.distributed else model
        self.beta = beta
        self.loss_reduction = loss_reduction
        self.per_example = per_example
        self.params = trainable(self.module)
        if not self.params:
            raise ValueError("model has no trainable parameters (requires_grad=True)")
        self.group_of = self._assign_groups(groups)
        self.group_names = list(dict.fromkeys(self.group_of.values()))
        self._handles: list = []
        self._closed = False
        self._plan: dict[int, str] = {}
        self._signature: Counter | None = None
        self._fw_calls: list[_Call] = []
        self._fw_batch = 0
        self._warned: set[str] = set()
        self._reset_step()
        self.steps = 0
        self.skipped = 0
        self._ema = {g: [0.0, 0.0, 0] for g in self.group_names}  # |G|^2, tr(Sigma), updates
        self._moments = {g: moments_new() for g in self.group_names}  # spread of the raw values
        self._moments_total = moments_new()
        self.last_raw: NoiseScale | None = None
        self._install()

    # ------------------------------------------------------------------ setup

    def _assign_groups(self, groups: dict[str, Iterable[nn.Parameter]] | None) -> dict[int, str]:
        if groups is None:
            return {id(p): layer_name(n) for n, p in self.params}
        out: dict[int, str] = {}
        for gname, ps in groups.items():
            for p in ps:
                out[id(p)] = str(gname)
        for _, p in self.params:
            out.setdefault(id(p), "(other)")
        return out

    def _install(self) -> None:
        root = self.module
        self._handles.append(root.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
        if self.per_example:
            for m in root.modules():
                rule = find_rule(m)
                if rule is not None and any(p.requires_grad for p in m.parameters(recurse=False)):
                    self._handles.append(m.register_forward_hook(self._layer_hook(rule)))
        # registered last so that it runs after the layer hooks when the root is itself a layer
        self._handles.append(root.register_forward_hook(self._post_forward))
        for _, p in self.params:
            self._handles.append(p.register_hook(self._param_hook(p)))

    def _reset_step(self) -> None:
        self._example_sq: dict[str, float] = {}  # group -> sum over examples of captured |g_i|^2
        self._micro_sq: dict[str, float] = {}  # group -> sum over micro-batches of |c_k|^2
        self._local_sq: dict[int, Tensor] = {}  # param -> |sum_k c_k|^2 so far
        self._micro_sizes: list[int] = []
        self._nonfinite = False

    # ------------------------------------------------------------------ hooks

    def _pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._closed or trackers_suspended() or not torch.is_grad_enabled():
            return
        first = next(iter(_tensors(args) + _tensors(kwargs)), None)
        self._fw_batch = int(first.shape[0]) if first is not None and first.dim() > 0 else 1
        self._micro_sizes.append(self._fw_batch)
        self._fw_calls = []

    def _post_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._closed or trackers_suspended() or not torch.is_grad_enabled():
            return
        calls, self._fw_calls = self._fw_calls, []
        signature = Counter((id(c.module), tuple(c.a.shape[:1]), c.out_batch) for c in calls)
        if signature != self._signature or not self._plan:
            outs = [t for t in _tensors(output) if t.requires_grad]
            self._plan = route(calls, self.params, graph_uses(*outs), self._fw_batch)
            if not self.per_example:
                self._plan = {k: "micro" for k in self._plan}
            self._signature = signature

    def _layer_hook(self, rule):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if self._closed or trackers_suspended() or not torch.is_grad_enabled() or not args:
                return
            if not isinstance(args[0], Tensor) or not isinstance(output, Tensor):
                return
            if not output.requires_grad:
                return
            call = _Call(module, rule, args[0], _lead(output))
            self._fw_calls.append(call)
            a = args[0].detach()
            output.register_hook(self._output_grad_hook(module, rule, a))

        return hook

    def _output_grad_hook(self, module: nn.Module, rule, a: Tensor):
        def hook(grad: Tensor) -> None:
            if self._closed or trackers_suspended():
                return
            own = [
                (n, p)
                for n, p in module.named_parameters(recurse=False)
                if p.requires_grad and self._plan.get(id(p)) == "norm"
            ]
            if not own:
                return
            with torch.no_grad():
                sq = rule.sq_norms(module, a, grad.detach())
                for n, p in own:
                    g = self.group_of[id(p)]
                    self._example_sq[g] = self._example_sq.get(g, 0.0) + float(sq[n].double().sum())

        return hook

    def _param_hook(self, p: nn.Parameter):
        def hook(grad: Tensor) -> None:
            if self._closed or trackers_suspended() or self._plan.get(id(p)) == "norm":
                return
            with torch.no_grad():
                g = self.group_of[id(p)]
                micro = float(grad.double().square().sum())
                self._micro_sq[g] = self._micro_sq.get(g, 0.0) + micro
                if self.distributed:
                    old = p.grad
                    local = grad if old is None else old + grad
                    self._local_sq[id(p)] = local.double().square().sum()

        return hook

    # ------------------------------------------------------------------ estimation

    def _world(self) -> int:
        if not self.distributed:
            return 1
        import torch.distributed as dist

        return dist.get_world_size() if dist.is_initialized() else 1

    def step(self, *, loss_scale: float = 1.0) -> NoiseScale:
        """Fold the step's gradients into the estimate and return the smoothed one.

        Call after the last ``backward()`` of the step, before clipping / unscaling / zeroing.

        Args:
            loss_scale: the factor the loss was multiplied by (``scaler.get_scale()`` under AMP).
        """
        if self._closed:
            raise RuntimeError("this GradientNoiseScale was closed")
        coupled = coupled_batch_norms(self.module) if self.per_example else []
        if coupled and any(v == "norm" for v in self._plan.values()):
            raise ValueError(
                f"BatchNorm layer(s) {coupled} use batch statistics, which couple the examples, "
                "so per-example gradients are not defined. Use GradientNoiseScale(model, "
                "per_example=False) with gradient accumulation or DDP (the two-batch estimator), "
                "put those layers in eval mode, or use GroupNorm."
            )
        try:
            raw = self._raw_estimate(float(loss_scale))
        finally:
            self._reset_step()
        if raw is not None:
            self.last_raw = raw
            values = [raw.grad_sq_norm, raw.trace_sigma] + [
                v for lay in raw.layers for v in (lay["grad_sq_norm"], lay["trace_sigma"])
            ]
            if all(math.isfinite(v) for v in values):
                self.steps += 1
                by_group = {lay["name"]: lay for lay in raw.layers}
                for gname in self.group_names:
                    lay = by_group.get(gname)
                    if lay is None:
                        continue
                    ema = self._ema[gname]
                    ema[0] = self.beta * ema[0] + (1 - self.beta) * lay["grad_sq_norm"]
                    ema[1] = self.beta * ema[1] + (1 - self.beta) * lay["trace_sigma"]
                    ema[2] += 1
                    moments_update(
                        self._moments[gname], lay["grad_sq_norm"], lay["trace_sigma"], self.beta
                    )
                moments_update(self._moments_total, raw.grad_sq_norm, raw.trace_sigma, self.beta)
            else:
                self.skipped += 1
        return self.estimate(batch_size=raw.batch_size if raw is not None else 0)

    def _raw_estimate(self, loss_scale: float) -> NoiseScale | None:
        sizes = self._micro_sizes
        if not sizes:
            return None
        n_micro, b_micro = len(sizes), sizes[0]
        b_local = sum(sizes)
        world = self._world()
        b_big = b_local * world
        alpha = 1.0 / b_local if self.loss_reduction == "mean" else 1.0
        s2 = loss_scale**2
        kind_of = self._kinds()
        # global mean gradient per (group, kind), from .grad
        big: dict[tuple[str, str], float] = {}
        for _, p in self.params:
            if p.grad is None or id(p) not in kind_of:
                continue
            key = (self.group_of[id(p)], kind_of[id(p)])
            big[key] = big.get(key, 0.0) + float(p.grad.detach().double().square().sum())
        gscale = (world / (alpha * b_big)) ** 2 / s2
        small: dict[tuple[str, str], tuple[float, float]] = {}  # key -> (|G_small|^2, b_small)
        for key in dict.fromkeys((self.group_of[pid], k) for pid, k in kind_of.items()):
            gname, kind = key
            if kind == "norm":
                value = self._example_sq.get(gname, 0.0) / (alpha**2 * b_local) / s2
                small[key] = (value, 1.0)
            elif world > 1:
                loc = sum(
                    float(v)
                    for pid, v in self._local_sq.items()
                    if self.group_of[pid] == gname and kind_of.get(pid) == "micro"
                )
                small[key] = (loc / (alpha * b_local) ** 2 / s2, float(b_local))
            elif n_micro >= 2:
                value = self._micro_sq.get(gname, 0.0) / (alpha * b_micro) ** 2 / n_micro / s2
                small[key] = (value, float(b_micro))
            else:
                self._warn_excluded(gname)
        if world > 1:
            small = self._all_reduce_mean(small)
        parts: dict[str, list[float]] = {}
        for key, (value, b_small) in small.items():
            if not b_small < b_big:
                continue
            g2, tr = _unbiased(value, big.get(key, 0.0) * gscale, b_small, float(b_big))
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
        return NoiseScale.from_parts(g_total, tr_total, b_big, layers)

    def _kinds(self) -> dict[int, str]:
        """``id(param) -> "norm"`` (per-example rule) ``| "micro"``; unused parameters omitted."""
        out = {}
        for _, p in self.params:
            kind = self._plan.get(id(p), "micro")
            if kind != "zero":
                out[id(p)] = "norm" if kind == "norm" else "micro"
        return out

    def _warn_excluded(self, gname: str) -> None:
        if gname in self._warned:
            return
        self._warned.add(gname)
        warnings.warn(
            f"GradientNoiseScale: parameter group {gname!r} has no per-example rule and there is "
            "only one micro-batch per step without DDP, so its noise scale cannot be estimated; it "
            "is left out of the totals. Accumulate >= 2 micro-batches per step to include it.",
            stacklevel=3,
        )

    def _all_reduce_mean(self, small: dict) -> dict:
        import torch.distributed as dist

        names = sorted(small)
        if not names:
            return small
        device = self.params[0][1].device
        vec = torch.tensor([small[n][0] for n in names], dtype=torch.float64, device=device)
        dist.all_reduce(vec)
        vec /= dist.get_world_size()
        return {n: (float(v), small[n][1]) for n, v in zip(names, vec.tolist())}

    def estimate(self, batch_size: int = 0) -> NoiseScale:
        """The current smoothed estimate: bias-corrected EMAs
        :math:`m_n / (1 - \\beta^n)` of each group's parts, summed over groups (``nan`` before
        the first step); groups never estimated are left out. Standard errors as in the module
        documentation; ``b_simple`` is ``nan`` unless :math:`|G|^2` is resolved."""
        layers, g_total, tr_total = [], 0.0, 0.0
        for gname in self.group_names:
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
        # states saved before standard errors existed: the spread restarts from here
        moments = state.get("moments") or {}
        self._moments = {
            g: [float(v) for v in moments[g]] if g in moments else moments_new() for g in self._ema
        }
        total = state.get("moments_total")
        self._moments_total = [float(v) for v in total] if total else moments_new()

    def close(self) -> None:
        """Remove every hook from the model (hooks on live autograd graphs become no-ops)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._closed = True

    def __enter__(self) -> GradientNoiseScale:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
