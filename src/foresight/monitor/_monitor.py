"""The :class:`Monitor`: run metrics on a schedule during training, write records to sinks."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from foresight import distributed
from foresight._guard import preserved
from foresight.monitor.metrics import Context, Metric, as_metric, collect, needs_of
from foresight.monitor.sinks import FlatRecord, History, Sink
from foresight.results import flatten
from foresight.schedule import Schedule, every

_UNITS = ("step", "epoch")
_EVERY = every(1)


class Monitor:
    """Measure a model on a schedule while it trains, without changing the training.

    Call :meth:`step` where your loop steps the optimizer and/or :meth:`epoch_end` at the end of
    each epoch. ``schedule`` decides which calls measure: with ``unit="epoch"`` (the default) it
    counts ``epoch_end()`` calls, with ``unit="step"`` it counts ``step()`` calls; both counters
    start at 0 (the first call is step 0 / epoch 0), or take explicit ``step=``/``epoch=`` values.
    A measurement runs every metric that is due and writes one record -- ``step``, ``epoch``, the
    scalar keyword values you passed (e.g. ``loss=``) and those metrics' values -- to ``history``
    and to each sink.

    Every metric goes through one lifecycle (:class:`foresight.monitor.metrics.Metric`): it is
    attached once, sees every step if it ``needs`` to (the gradient noise tracker), and is
    measured when it is due -- at the Monitor's ``schedule``, or at its own when it has one
    (``EI(schedule=every(100), unit="step")`` beside metrics that run every epoch). Its records
    (:mod:`foresight.results`) are flattened into the record under their keys (``ei``,
    ``i_xt/fc1``, ...).

    Between measurements a call costs a counter increment and a schedule check (plus the gradient
    noise tracker's step when a tracking :class:`~foresight.monitor.GradientNoise` is used).
    A measurement never changes training: it runs inside :func:`foresight._guard.preserved` (mode,
    hooks, ``.grad``, ``requires_grad`` and buffers restored) with the random number generators
    forked (so perturbation or sampling noise does not shift your data order or dropout masks).

    Under DDP and FSDP2 (a ``DistributedDataParallel`` wrapper, or a model sharded with
    ``fully_shard``; see :mod:`foresight.distributed`) create the Monitor on every rank and call
    it on every rank: a measurement is collective. The metrics run on every rank in the same
    order -- on the full weights for a sharded model (:func:`foresight.distributed.full_weights`,
    one all-gather per measurement) and on the inner module of a DDP wrapper -- then one
    ``all_gather_object`` gives every rank rank 0's record (identical values everywhere, and an
    error on one rank raises on all of them). The values you pass (``loss=``) are rank 0's too:
    pass a value reduced over the ranks if you want the mean. Only rank 0 writes to the sinks:
    give every rank the same sinks. A Monitor on a plain module never communicates.

    Args:
        model: the model being trained (or its ``DistributedDataParallel`` wrapper).
        metrics: names (``"ei"``, ``"gns"``, ``"causal"``), adapters from :mod:`foresight.monitor`
            (:class:`EI`, :class:`GradientNoise`, :class:`InformationPlane`, :class:`CausalEI`) or
            callables ``fn(model) -> float | dict``.
        schedule: a :mod:`foresight.schedule` object (``every(n)``, ``log_spaced(...)``,
            ``at(...)``) or any ``callable(int) -> bool``.
        unit: ``"epoch"`` or ``"step"``: which counter the schedule reads.
        sinks: where records go besides ``history`` (:class:`CSVSink`, :class:`TensorBoardSink`,
            :class:`WandbSink`, or any object with ``write(record)`` and ``close()``).
        wrapper: the ``DistributedDataParallel`` wrapper around ``model`` when ``model`` is the
            module inside it (e.g. a LightningModule under ``strategy="ddp"``).

    Example:
        >>> import torch
        >>> from foresight.monitor import Function, Monitor
        >>> from foresight.schedule import every
        >>> model = torch.nn.Linear(4, 2)
        >>> norm = lambda m: float(m.weight.detach().norm())
        >>> mon = Monitor(model, [Function(norm, name="w")], schedule=every(2), unit="step")
        >>> for s in range(5):
        ...     _ = mon.step(loss=0.1 * s)
        >>> [(r["step"], r["loss"]) for r in mon.history]
        [(0, 0.0), (2, 0.2), (4, 0.4)]
    """

    def __init__(
        self,
        model: nn.Module,
        metrics: Iterable[Any] = ("ei",),
        *,
        schedule: Schedule = _EVERY,
        unit: str = "epoch",
        sinks: Iterable[Sink] = (),
        wrapper: nn.Module | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Monitor: model must be a torch.nn.Module, got {type(model).__name__}")
        if unit not in _UNITS:
            raise ValueError(f"Monitor: unit must be 'step' or 'epoch', got {unit!r}")
        if not callable(schedule):
            raise TypeError("Monitor: schedule must be callable (see foresight.schedule)")
        if isinstance(metrics, (str, bytes)) or callable(metrics):
            metrics = [metrics]
        self.model = model
        self.parallel = distributed.detect(model, wrapper)
        #: the module the metrics measure (the inner module of a DDP wrapper)
        self.module = self.parallel.module
        self.metrics = [as_metric(m) for m in metrics]
        names = [getattr(m, "name", "") for m in self.metrics]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"Monitor: metric names must be unique, repeated: {duplicates}")
        self.schedule = schedule
        self.unit = unit
        self.sinks = list(sinks)
        for sink in self.sinks:
            if not all(callable(getattr(sink, a, None)) for a in ("write", "close")):
                raise TypeError(f"Monitor: sink {sink!r} needs write(record) and close() methods")
        self.history = History()
        self.next_step = 0
        self.next_epoch = 0
        self._last_batch: Any = None
        self._stepping = [m for m in self.metrics if "steps" in needs_of(m)]
        self._closed = False
        for m in self.metrics:
            attach = getattr(m, "attach", None)
            if callable(attach):
                if self.parallel.wrapper is not None and _takes(attach, "wrapper"):
                    attach(self.module, wrapper=self.parallel.wrapper)
                else:
                    attach(model)

    # -- the calls a training loop makes ------------------------------------------------------

    def step(
        self, batch: Any = None, *, step: int | None = None, **values: Any
    ) -> FlatRecord | None:
        """Count one optimizer step; measure the metrics that are due (with ``unit="step"``:
        when the schedule fires).

        Args:
            batch: the current batch (some metrics, e.g. :class:`EI`, take an example input
                from it).
            step: this step's index (default: one more than the previous call's).
            **values: scalars to store in the record (``loss=loss``); tensors are read only when a
                measurement happens.

        Returns:
            The record written, or ``None`` when nothing was measured.
        """
        self._check_open()
        index = self.next_step if step is None else int(step)
        self.next_step = index + 1
        if batch is not None:
            self._last_batch = batch
        context = Context(step=index, epoch=self.next_epoch, batch=batch, values=values)
        for m in self._stepping:
            m.after_step(self.module, context)
        due = self._due("step", index)
        return None if due is None else self._measure(context, due)

    def epoch_end(
        self, batch: Any = None, *, epoch: int | None = None, **values: Any
    ) -> FlatRecord | None:
        """Count one epoch; measure the metrics that are due (with ``unit="epoch"``: when the
        schedule fires).

        Arguments as in :meth:`step` (``epoch=`` instead of ``step=``). The record's ``step`` is
        the number of ``step()`` calls so far. Without ``batch``, metrics see the last batch given
        to :meth:`step`.
        """
        self._check_open()
        index = self.next_epoch if epoch is None else int(epoch)
        self.next_epoch = index + 1
        due = self._due("epoch", index)
        if due is None:
            return None
        batch = self._last_batch if batch is None else batch
        context = Context(step=self.next_step, epoch=index, batch=batch, values=values)
        return self._measure(context, due)

    def measure(self, batch: Any = None, **values: Any) -> FlatRecord:
        """Measure now, whatever the schedule says (e.g. once before training starts)."""
        self._check_open()
        epoch = self.next_epoch if self.unit == "step" else max(self.next_epoch - 1, 0)
        batch = self._last_batch if batch is None else batch
        context = Context(step=self.next_step, epoch=epoch, batch=batch, values=values)
        return self._measure(context, self.metrics)

    def close(self) -> None:
        """Detach every metric (removing any hooks) and close the sinks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._last_batch = None
        for m in self.metrics:
            if callable(getattr(m, "close", None)):
                m.close()
        if self._writes:
            for sink in self.sinks:
                sink.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("Monitor: this monitor was closed; create a new one")

    @property
    def _writes(self) -> bool:
        """Whether this process writes to the sinks (rank 0 of a collective Monitor; always
        otherwise)."""
        return not self.parallel.collective or distributed.is_main()

    def _due(self, unit: str, index: int) -> list[Any] | None:
        """The metrics to measure at this ``step()``/``epoch_end()`` call, or ``None`` for no
        measurement: a metric is due when its schedule (its own, else the Monitor's) fires on
        its unit's counter (its own, else the Monitor's); a 0.2 adapter (not a
        :class:`~foresight.monitor.metrics.Metric`) follows the Monitor's. A Monitor without
        metrics measures (records the values) when its schedule fires."""
        due = []
        for m in self.metrics:
            own = isinstance(m, Metric)  # a 0.2 adapter's attributes are its own business
            schedule = m.schedule if own and m.schedule is not None else self.schedule
            m_unit = m.unit if own and m.unit is not None else self.unit
            if m_unit == unit and schedule(index):
                due.append(m)
        if due or (not self.metrics and self.unit == unit and self.schedule(index)):
            return due
        return None

    def _measure(self, context: Context, due: list[Any]) -> FlatRecord:
        record: FlatRecord = {"step": context.step, "epoch": context.epoch}
        for key, value in context.values.items():
            record[key] = _scalar(value, key)
        for m in due:
            if "batch" in needs_of(m) and context.batch is None:
                raise ValueError(
                    f"Monitor: metric {getattr(m, 'name', m)!r} needs an example input from the "
                    "batch at this measurement: pass batch= to step()/epoch_end()/measure() (or "
                    "give the metric its input, e.g. EI(input=x))"
                )

        def run() -> FlatRecord:
            with _isolated(self.module), distributed.full_weights(self.module):
                for m in due:
                    _, rows = collect(m, self.module, context)
                    record.update(flatten(rows))
            return record

        if self.parallel.collective:  # rank 0's record, your values (loss=...) included
            record = distributed.agree(run, same=(context.step, context.epoch))
        else:
            record = run()
        self.history.write(record)
        if self._writes:
            for sink in self.sinks:
                sink.write(record)
        return record


@contextlib.contextmanager
def _isolated(model: nn.Module) -> Iterator[None]:
    """Restore the model's state and every random number generator after measuring."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), preserved(model):
        yield


def _takes(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _scalar(value: Any, key: str) -> Any:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"Monitor: value {key!r} must be a scalar, got a tensor of shape "
                f"{tuple(value.shape)}"
            )
        return float(value.detach().item())
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"Monitor: value {key!r} must be a number or string, got {type(value).__name__}"
        ) from None
