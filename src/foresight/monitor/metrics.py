"""The one lifecycle of a tracked metric: what the :class:`~foresight.Monitor` (and the standalone
trackers) drive, and the library's metrics written to it.

A metric (:class:`Metric`, modelled on Cockpit's ``Quantity``) declares

* **when it runs**: ``schedule`` (a :mod:`foresight.schedule` object; ``None``: the Monitor's) and
  ``unit`` (which counter that schedule reads, ``"step"`` or ``"epoch"`` -- ``"epoch"``: it runs
  at epoch ends; ``None``: the Monitor's unit);
* **what it needs**: ``needs``, a set of ``"batch"`` (an example batch from the current
  ``step()``/``epoch_end()`` call, ``context.batch``) and ``"steps"`` (to see *every* training
  step, between measurements: :meth:`Metric.after_step`); empty: the model only;
* **what it records**: ``model_fields`` and ``layer_fields``, the fields of its result's
  :meth:`~foresight.results.Result.to_records` it keeps (see :data:`foresight.results.SCHEMA`);

and implements :meth:`Metric.compute` (the measurement, returning a result of
:mod:`foresight.results`), optionally :meth:`~Metric.attach` (once, when the Monitor is made;
``attach(model, wrapper=ddp)`` under a ``DistributedDataParallel`` wrapper), ``after_step`` and
``close``. The Monitor and the trackers drive every metric the same way -- :func:`collect` runs
one measurement and gives the result and its tidy records -- and a record's flat key is the
records' :attr:`~foresight.results.Record.key`: whole-model quantities under their plain names
(``ei``, ``determinism``, ``b_simple`` ...), per-layer ones as ``"<field>/<layer>"``
(``i_xt/fc1``), which TensorBoard groups into one section per quantity. Under DDP/FSDP2
``compute`` runs on every rank, on the full weights of a sharded model, and the Monitor keeps rank
0's values; ``after_step`` runs on every rank.

The 0.2 adapter protocol still works: any object with a ``name`` and ``measure(model, context) ->
dict[str, float]`` (and the optional methods above) is a metric, and so is any plain callable
``fn(model)`` or ``fn(model, context)`` returning a number or a ``dict`` of numbers (see
:func:`as_metric`).

The metric modules are imported inside ``compute``, so a Monitor that does not use a metric never
imports it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from foresight.results import (
    CAUSAL_CONVERGED_KEYS,
    CAUSAL_RECORD_KEYS,
    I_XT_LIMITED,
    Record,
    flatten,
)
from foresight.schedule import Schedule

Values = dict[str, Any]

#: What a metric may declare in ``needs``.
NEEDS = ("batch", "steps")
_UNITS = ("step", "epoch")


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


class Metric:
    """Base class of a tracked metric: when it runs, what it needs, what it records.

    Subclasses set ``name``, implement :meth:`compute` and, when they keep only some of their
    result's records, ``model_fields`` and ``layer_fields``. ``schedule`` and ``unit`` may be
    given to any metric of the library (``EI(schedule=every(10), unit="step")``) to run it on
    its own schedule inside a Monitor with others.

    >>> from foresight.schedule import every
    >>> class WeightNorm(Metric):
    ...     name = "weight_norm"
    ...     def compute(self, model, context):
    ...         return float(sum(p.detach().norm() for p in model.parameters()))
    ...     def records(self, result):
    ...         return [Record(self.name, None, self.name, result)]
    >>> m = WeightNorm(schedule=every(5), unit="step")
    >>> m.schedule(10), m.unit, sorted(m.needs)
    (True, 'step', [])
    """

    #: The metric's name: its records' ``metric``, unique in a Monitor.
    name: str = ""
    #: When it runs (``None``: the Monitor's schedule); set by ``__init__``.
    schedule: Schedule | None = None
    #: Which counter ``schedule`` reads, ``"step"`` or ``"epoch"`` (``None``: the Monitor's).
    unit: str | None = None
    #: What it needs besides the model (a subset of :data:`NEEDS`).
    needs: frozenset[str] = frozenset()
    #: The fields of its result's records it keeps for a whole-model value and a layer's.
    model_fields: tuple[str, ...] = ()
    layer_fields: tuple[str, ...] = ()

    def __init__(self, *, schedule: Schedule | None = None, unit: str | None = None) -> None:
        if schedule is not None and not callable(schedule):
            raise TypeError(f"{type(self).__name__}: schedule must be callable (see "
                            f"foresight.schedule), got {schedule!r}")
        if unit is not None and unit not in _UNITS:
            raise ValueError(f"{type(self).__name__}: unit must be 'step', 'epoch' or None, "
                             f"got {unit!r}")
        self.schedule = schedule
        self.unit = unit

    def attach(self, model: nn.Module, wrapper: nn.Module | None = None) -> None:
        """Called once when the Monitor is made (nothing by default)."""

    def after_step(self, model: nn.Module, context: Context) -> None:
        """Called on every ``Monitor.step()`` when ``"steps"`` is in :attr:`needs`."""

    def compute(self, model: nn.Module, context: Context) -> Any:
        """One measurement: a result (:mod:`foresight.results`), or ``None`` when there is
        nothing to record yet."""
        raise NotImplementedError

    def records(self, result: Any) -> list[Record]:
        """The records of ``result`` this metric keeps (its ``model_fields`` and
        ``layer_fields``)."""
        return [r for r in result.to_records()
                if r.field in (self.model_fields if r.layer is None else self.layer_fields)]

    def measure(self, model: nn.Module, context: Context) -> Values:
        """The flat values of one measurement (the 0.2 adapter protocol): the records' keys."""
        return flatten(collect(self, model, context)[1])

    def close(self) -> None:
        """Release what :meth:`attach` set up (nothing by default)."""


def collect(metric: Any, model: nn.Module, context: Context) -> tuple[Any, list[Record]]:
    """Run one measurement of ``metric``: its result and the records it keeps.

    A :class:`Metric` is asked to :meth:`~Metric.compute` and its records are
    :meth:`~Metric.records` of the result; any other metric (the 0.2 protocol) is asked to
    ``measure`` and its flat values are read back as records (:meth:`Record.from_key
    <foresight.results.Record.from_key>`), the metric's ``name`` as their ``metric``.
    """
    if isinstance(metric, Metric):
        result = metric.compute(model, context)
        return result, ([] if result is None else metric.records(result))
    values = metric.measure(model, context)
    name = getattr(metric, "name", "") or ""
    return values, [Record.from_key(str(k), v, metric=name) for k, v in values.items()]


def needs_of(metric: Any) -> frozenset[str]:
    """What ``metric`` needs: its ``needs``, or, for a 0.2 adapter, ``{"steps"}`` when it has an
    ``after_step`` method."""
    if isinstance(metric, Metric):
        return frozenset(metric.needs)
    return frozenset({"steps"}) if callable(getattr(metric, "after_step", None)) else frozenset()


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


class EI(Metric):
    """Effective information of the weight graph (:mod:`foresight.ei`) at each measurement.

    Records ``ei``, ``determinism`` and ``degeneracy`` (bits), and with ``layers=True`` also
    ``ei/<layer>`` for every weight layer. Needs the batch (for the layer shapes, at the first
    measurement) unless ``input`` is given.

    Args:
        input: an example input (a batch of one is enough) used to find layer shapes; by default
            the first tensor of the ``batch`` given to the Monitor, at the first measurement.
        norm: the row normalisation (default :func:`foresight.ei.lin_norm`).
        layers: also record each layer's EI.
        schedule, unit: when it runs (default: the Monitor's schedule and unit).
    """

    name = "ei"
    model_fields = ("ei", "determinism", "degeneracy")

    def __init__(
        self,
        input: torch.Tensor | None = None,
        *,
        norm: Callable | None = None,
        layers: bool = False,
        schedule: Schedule | None = None,
        unit: str | None = None,
    ) -> None:
        super().__init__(schedule=schedule, unit=unit)
        self.input = input
        self.norm = norm
        self.layers = layers
        self.layer_fields = ("ei",) if layers else ()
        self._shapes: Any = None

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        """``{"batch"}`` until the layer shapes are known (no ``input`` given), then nothing."""
        return frozenset() if self.input is not None or self._shapes is not None else frozenset(
            {"batch"})

    def compute(self, model: nn.Module, context: Context) -> Any:
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
            return ei_module.report(model, shapes=self._shapes, norm=norm)


class GradientNoise(Metric):
    """Gradient noise scale (:mod:`foresight.gns`).

    Two ways to measure:

    * ``GradientNoise()`` (tracking): a :class:`foresight.gns.GradientNoiseScale` tracker is
      attached to the model and stepped on *every* ``monitor.step()`` call (its hooks read the
      per-example gradient norms of your own backward pass, so call ``monitor.step()`` after
      ``loss.backward()`` and before ``optimizer.zero_grad()``); the smoothed estimate is recorded
      at the scheduled steps. This is the one metric that needs every step (``needs`` holds
      ``"steps"``).
    * ``GradientNoise(loss_fn, inputs, targets)`` (probe): at each measurement only, the noise scale
      of that fixed batch is computed with :func:`foresight.gns.noise_scale` (an extra
      forward/backward of that batch, leaving ``.grad`` as it was).

    Records ``b_simple``, ``trace_sigma`` and ``grad_sq_norm``, and with ``per_layer=True`` also
    ``b_simple/<group>`` for each parameter group the estimate reports (by default one per layer).
    ``schedule`` and ``unit`` (keywords) say when it records (default: the Monitor's); the other
    keywords go to the tracker.
    """

    name = "gns"
    model_fields = ("b_simple", "trace_sigma", "grad_sq_norm")

    def __init__(
        self,
        loss_fn: Callable | None = None,
        inputs: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        *,
        per_layer: bool = False,
        schedule: Schedule | None = None,
        unit: str | None = None,
        **tracker_options: Any,
    ) -> None:
        super().__init__(schedule=schedule, unit=unit)
        probe = (loss_fn, inputs, targets)
        if any(p is not None for p in probe) and not all(p is not None for p in probe):
            raise ValueError(
                "GradientNoise: pass all of loss_fn, inputs and targets (probe mode) or none "
                "(tracking mode)"
            )
        self.loss_fn, self.inputs, self.targets = probe
        self.per_layer = per_layer
        self.layer_fields = ("b_simple",) if per_layer else ()
        self.needs = frozenset({"steps"}) if self.tracking else frozenset()
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

    def compute(self, model: nn.Module, context: Context) -> Any:
        if self.tracking:
            return self._last  # None before the first step: nothing to record
        from foresight.gns import noise_scale

        return noise_scale(model, self.loss_fn, self.inputs, self.targets)

    def close(self) -> None:
        if self.tracker is not None and hasattr(self.tracker, "close"):
            self.tracker.close()
        self.tracker = None


class InformationPlane(Metric):
    """Per-layer mutual information I(X;T), I(T;Y) (:func:`foresight.ib.information_plane`).

    Measured on the fixed samples ``inputs``, ``labels`` given here (X uniform over them). Records
    ``i_xt/<layer>`` and ``i_ty/<layer>`` in bits, and ``i_xt_limited/<layer>`` (a ``bool``: true
    when I(X;T) is within 1 bit of its ceiling log2 N, see
    :class:`~foresight.ib.LayerInformation`). Extra keyword options go to
    :func:`foresight.ib.information_plane` (``layers``, ``method``, ``bins``, ...); ``schedule``
    and ``unit`` say when it runs (default: the Monitor's).
    """

    name = "ib"
    layer_fields = ("i_xt", "i_ty", I_XT_LIMITED)

    def __init__(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        *,
        schedule: Schedule | None = None,
        unit: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(schedule=schedule, unit=unit)
        self.inputs = inputs
        self.labels = labels
        self.options = {"progress": False, **options}  # no bar inside a training loop's own

    def compute(self, model: nn.Module, context: Context) -> Any:
        from foresight.ib import information_plane

        return information_plane(model, self.inputs, self.labels, **self.options)


class CausalEI(Metric):
    """Perturbational (causal) EI of each weight layer (:func:`foresight.causal.report`).

    Records ``causal_ei/<layer>``, ``ei_parts/<layer>``, ``sensitivity/<layer>`` and
    ``causal_degeneracy/<layer>`` in bits, and the flags ``causal_ei_converged/<layer>``,
    ``ei_parts_converged/<layer>``, ``sensitivity_converged/<layer>`` (``bool``: false when the
    sampled measure is limited by the sample count; :mod:`foresight.plot.causal` draws such
    points hollow) -- the keys :data:`foresight.causal.RECORD_KEYS` and
    :data:`~foresight.causal.CONVERGED_KEYS` define. Keyword options go to
    :func:`foresight.causal.report` (pass ``samples=`` and ``seed=`` for a fixed cost and
    reproducible numbers); ``schedule`` and ``unit`` say when it runs (default: the Monitor's).
    The Monitor restores the random number generators after measuring, so the perturbation noise
    never changes training.
    """

    name = "causal"
    layer_fields = (*CAUSAL_RECORD_KEYS.values(), *CAUSAL_CONVERGED_KEYS.values())

    def __init__(
        self, *, schedule: Schedule | None = None, unit: str | None = None, **options: Any
    ) -> None:
        super().__init__(schedule=schedule, unit=unit)
        self.options = {"progress": False, **options}  # no bar inside a training loop's own

    def compute(self, model: nn.Module, context: Context) -> Any:
        from foresight.causal import report

        return report(model, **self.options)


class Function(Metric):
    """A user's callable as a metric.

    ``fn(model)`` or ``fn(model, context)`` returning a number (recorded under ``name``) or a
    ``dict`` of numbers (recorded under ``"<name>/<key>"``).

    >>> m = Function(lambda model: sum(p.numel() for p in model.parameters()), name="params")
    >>> m.measure(torch.nn.Linear(3, 2), Context(step=0, epoch=0))
    {'params': 8.0}
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str | None = None,
        *,
        schedule: Schedule | None = None,
        unit: str | None = None,
    ) -> None:
        super().__init__(schedule=schedule, unit=unit)
        if not callable(fn):
            raise TypeError(f"a metric must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "") or type(fn).__name__
        if self.name == "<lambda>":
            raise ValueError(
                "a lambda metric needs a name: foresight.monitor.Function(fn, name=...)"
            )
        self._wants_context = _positional_arity(fn) >= 2

    def compute(self, model: nn.Module, context: Context) -> Any:
        return self.fn(model, context) if self._wants_context else self.fn(model)

    def records(self, result: Any) -> list[Record]:
        """A number as one record under ``name``; a ``dict`` as ``"<name>/<key>"`` records."""
        if isinstance(result, Mapping):
            return [Record(self.name, str(k), self.name, _to_float(v, f"{self.name}/{k}"))
                    for k, v in result.items()]
        return [Record(self.name, None, self.name, _to_float(result, self.name))]


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
    if isinstance(metric, Metric) or (hasattr(metric, "measure") and callable(metric.measure)):
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
