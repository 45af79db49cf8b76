"""Adapters that let the :class:`~foresight.Monitor` run each of the library's metrics.

A metric adapter has a ``name`` and a ``measure(model, context) -> dict[str, float]``; optionally
``attach(model)`` (called once by the Monitor; ``attach(model, wrapper=ddp)`` when the Monitor
was given the module inside a ``DistributedDataParallel`` wrapper and ``attach`` takes
``wrapper``), ``after_step(model, context)`` (called on *every* ``monitor.step()``; only metrics
that must see every step define it) and ``close()``. Any plain callable ``fn(model)`` or
``fn(model, context)`` returning a number or a ``dict`` of numbers is a metric too (see
:func:`as_metric`). Under DDP/FSDP2 ``measure`` runs on every rank, on the full weights of a
sharded model, and the Monitor keeps rank 0's values; ``after_step`` runs on every rank.

Record keys: the whole-model quantities use the metric's plain names (``ei``, ``determinism``,
``b_simple`` ...); per-layer quantities are ``"<quantity>/<layer name>"`` (``i_xt/fc1``), which
TensorBoard groups into one section per quantity.

The metric modules are imported inside the adapters, so a Monitor that does not use a metric never
imports it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Values = dict[str, float]


@dataclass
class Context:
    """What a metric may look at when it is measured.

    Attributes:
        step: the Monitor's step counter (0-based count of ``step()`` calls).
        epoch: the Monitor's epoch counter (0-based count of ``epoch_end()`` calls).
        batch: the ``batch`` given to the current ``step()``/``epoch_end()`` call, if any.
        values: the scalar keyword values given to the current call (e.g. ``loss=...``).
    """

    step: int
    epoch: int
    batch: Any = None
    values: dict[str, Any] = field(default_factory=dict)


def _first_tensor(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, Mapping):
        for v in batch.values():
            if isinstance(v, torch.Tensor):
                return v
    return None


class EI:
    """Effective information of the weight graph (:mod:`foresight.ei`) at each measurement.

    Records ``ei``, ``determinism`` and ``degeneracy`` (bits), and with ``layers=True`` also
    ``ei/<layer>`` for every weight layer.

    Args:
        input: an example input (a batch of one is enough) used to find layer shapes; by default
            the first tensor of the ``batch`` given to the Monitor, at the first measurement.
        norm: the row normalisation (default :func:`foresight.ei.lin_norm`).
        layers: also record each layer's EI.
    """

    name = "ei"

    def __init__(
        self,
        input: torch.Tensor | None = None,
        *,
        norm: Callable | None = None,
        layers: bool = False,
    ) -> None:
        self.input = input
        self.norm = norm
        self.layers = layers
        self._shapes: Any = None

    def measure(self, model: nn.Module, context: Context) -> Values:
        from foresight import ei as ei_module

        norm = self.norm if self.norm is not None else ei_module.lin_norm
        if self._shapes is None:
            example = self.input if self.input is not None else _first_tensor(context.batch)
            if example is None:
                raise ValueError(
                    "foresight.monitor.EI needs an example input to find layer shapes: pass "
                    "EI(input=x) or give the Monitor a batch (monitor.step(batch=(x, y)))"
                )
            self._shapes = ei_module.get_shapes(model, example[:1])
        with torch.no_grad():
            result = ei_module.report(model, shapes=self._shapes, norm=norm)
        values = {
            "ei": float(result.ei),
            "determinism": float(result.determinism),
            "degeneracy": float(result.degeneracy),
        }
        if self.layers:
            for row in result.layers:
                values[f"ei/{_field(row, 'name')}"] = float(_field(row, "ei"))
        return values


class GradientNoise:
    """Gradient noise scale (:mod:`foresight.gns`).

    Two ways to measure:

    * ``GradientNoise()`` (tracking): a :class:`foresight.gns.GradientNoiseScale` tracker is
      attached to the model and stepped on *every* ``monitor.step()`` call (its hooks read the
      per-example gradient norms of your own backward pass, so call ``monitor.step()`` after
      ``loss.backward()`` and before ``optimizer.zero_grad()``); the smoothed estimate is recorded
      at the scheduled steps. This is the one metric that does a little work between measurements.
    * ``GradientNoise(loss_fn, inputs, targets)`` (probe): at each measurement only, the noise scale
      of that fixed batch is computed with :func:`foresight.gns.noise_scale` (an extra
      forward/backward of that batch, leaving ``.grad`` as it was).

    Records ``b_simple``, ``trace_sigma`` and ``grad_sq_norm``, and with ``per_layer=True`` also
    ``b_simple/<group>`` for each parameter group the estimate reports (by default one per layer).
    """

    name = "gns"

    def __init__(
        self,
        loss_fn: Callable | None = None,
        inputs: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        *,
        per_layer: bool = False,
        **tracker_options: Any,
    ) -> None:
        probe = (loss_fn, inputs, targets)
        if any(p is not None for p in probe) and not all(p is not None for p in probe):
            raise ValueError(
                "GradientNoise: pass all of loss_fn, inputs and targets (probe mode) or none "
                "(tracking mode)"
            )
        self.loss_fn, self.inputs, self.targets = probe
        self.per_layer = per_layer
        self.tracker_options = tracker_options
        self.tracker: Any = None
        self._last: Any = None

    @property
    def tracking(self) -> bool:
        return self.loss_fn is None

    def attach(self, model: nn.Module, wrapper: nn.Module | None = None) -> None:
        if self.tracking:
            from foresight.gns import GradientNoiseScale

            self.tracker = GradientNoiseScale(model, wrapper=wrapper, **self.tracker_options)

    def after_step(self, model: nn.Module, context: Context) -> None:
        if self.tracker is not None:
            estimate = self.tracker.step()
            if estimate is not None:
                self._last = estimate

    def measure(self, model: nn.Module, context: Context) -> Values:
        if self.tracking:
            estimate = self._last
            if estimate is None:
                return {}
        else:
            from foresight.gns import noise_scale

            estimate = noise_scale(model, self.loss_fn, self.inputs, self.targets)
        values = {
            "b_simple": float(estimate.b_simple),
            "trace_sigma": float(estimate.trace_sigma),
            "grad_sq_norm": float(estimate.grad_sq_norm),
        }
        if self.per_layer:
            for row in getattr(estimate, "layers", None) or []:
                values[f"b_simple/{_field(row, 'name')}"] = float(_field(row, "b_simple"))
        return values

    def close(self) -> None:
        if self.tracker is not None and hasattr(self.tracker, "close"):
            self.tracker.close()
        self.tracker = None


class InformationPlane:
    """Per-layer mutual information I(X;T), I(T;Y) (:func:`foresight.ib.information_plane`).

    Measured on the fixed samples ``inputs``, ``labels`` given here (X uniform over them). Records
    ``i_xt/<layer>`` and ``i_ty/<layer>`` in bits, and ``i_xt_limited/<layer>`` (a ``bool``: true
    when I(X;T) is within 1 bit of its ceiling log2 N, see
    :class:`~foresight.ib.LayerInformation`). Extra keyword options go to
    :func:`foresight.ib.information_plane` (``layers``, ``method``, ``bins``, ...).
    """

    name = "ib"

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, **options: Any) -> None:
        self.inputs = inputs
        self.labels = labels
        self.options = {"progress": False, **options}  # no bar inside a training loop's own

    def measure(self, model: nn.Module, context: Context) -> Values:
        from foresight.ib import information_plane

        result = information_plane(model, self.inputs, self.labels, **self.options)
        values: Values = {}
        for row in _rows(result):
            name = _field(row, "name")
            values[f"i_xt/{name}"] = float(_field(row, "i_xt"))
            values[f"i_ty/{name}"] = float(_field(row, "i_ty"))
            values[f"i_xt_limited/{name}"] = _optional_field(row, "limited_by") is not None
        return values


class CausalEI:
    """Perturbational (causal) EI of each weight layer (:func:`foresight.causal.report`).

    Records ``causal_ei/<layer>``, ``ei_parts/<layer>``, ``sensitivity/<layer>`` and
    ``causal_degeneracy/<layer>`` in bits, and the flags ``causal_ei_converged/<layer>``,
    ``ei_parts_converged/<layer>``, ``sensitivity_converged/<layer>`` (``bool``: false when the
    sampled measure is limited by the sample count; :mod:`foresight.plot.causal` draws such
    points hollow). Keyword options go to :func:`foresight.causal.report`
    (pass ``samples=`` and ``seed=`` for a fixed cost and reproducible numbers). The Monitor
    restores the random number generators after measuring, so the perturbation noise never changes
    training.
    """

    name = "causal"

    _KEYS = (("ei", "causal_ei"), ("ei_parts", "ei_parts"), ("sensitivity", "sensitivity"),
             ("degeneracy", "causal_degeneracy"))
    _CONVERGED = (("ei", "causal_ei_converged"), ("ei_parts", "ei_parts_converged"),
                  ("sensitivity", "sensitivity_converged"))

    def __init__(self, **options: Any) -> None:
        self.options = {"progress": False, **options}  # no bar inside a training loop's own

    def measure(self, model: nn.Module, context: Context) -> Values:
        from foresight.causal import report

        result = report(model, **self.options)
        values: Values = {}
        for row in _rows(result):
            name = _field(row, "name")
            for src, dst in self._KEYS:
                values[f"{dst}/{name}"] = float(_field(row, src))
            unconverged = _optional_field(row, "unconverged", ()) or ()
            for measure, key in self._CONVERGED:
                values[f"{key}/{name}"] = measure not in unconverged
        return values


class Function:
    """A user's callable as a metric.

    ``fn(model)`` or ``fn(model, context)`` returning a number (recorded under ``name``) or a
    ``dict`` of numbers (recorded under ``"<name>/<key>"``).

    >>> m = Function(lambda model: sum(p.numel() for p in model.parameters()), name="params")
    >>> m.measure(torch.nn.Linear(3, 2), Context(step=0, epoch=0))
    {'params': 8.0}
    """

    def __init__(self, fn: Callable[..., Any], name: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"a metric must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "") or type(fn).__name__
        if self.name == "<lambda>":
            raise ValueError(
                "a lambda metric needs a name: foresight.monitor.Function(fn, name=...)"
            )
        self._wants_context = _positional_arity(fn) >= 2

    def measure(self, model: nn.Module, context: Context) -> Values:
        out = self.fn(model, context) if self._wants_context else self.fn(model)
        if isinstance(out, Mapping):
            return {f"{self.name}/{k}": _to_float(v, f"{self.name}/{k}") for k, v in out.items()}
        return {self.name: _to_float(out, self.name)}


_BY_NAME: dict[str, Callable[[], Any]] = {
    "ei": EI,
    "gns": GradientNoise,
    "causal": CausalEI,
}


def as_metric(metric: Any) -> Any:
    """Turn a name (``"ei"``, ``"gns"``, ``"causal"``), an adapter or a callable into a metric."""
    if isinstance(metric, str):
        if metric == "ib":
            raise ValueError(
                "the information plane needs data: use "
                "foresight.monitor.InformationPlane(inputs, labels) instead of 'ib'"
            )
        if metric not in _BY_NAME:
            raise ValueError(
                f"unknown metric {metric!r}: use one of {sorted(_BY_NAME)}, an adapter from "
                "foresight.monitor, or a callable fn(model) -> float"
            )
        return _BY_NAME[metric]()
    if hasattr(metric, "measure") and callable(metric.measure):
        return metric
    return Function(metric)


def _positional_arity(fn: Callable[..., Any]) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    count = 0
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            return 2
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def _to_float(value: Any, key: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"metric {key!r} returned a tensor of shape {tuple(value.shape)}, "
                            "not a scalar")
        return float(value.item())
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"metric {key!r} returned {type(value).__name__}, not a number") from None


def _rows(result: Any) -> list[Any]:
    """Per-layer rows of a result: its ``layers`` attribute, or the result itself if a list."""
    if hasattr(result, "layers"):
        return list(result.layers)
    return list(result)


def _field(row: Any, key: str) -> Any:
    if isinstance(row, Mapping):
        return row[key]
    return getattr(row, key)


def _optional_field(row: Any, key: str, default: Any = None) -> Any:
    if isinstance(row, Mapping):
        return row.get(key, default)
    return getattr(row, key, default)


def is_finite_number(value: Any) -> bool:
    """Whether ``value`` is a finite real number."""
    return isinstance(value, (int, float)) and math.isfinite(value)
