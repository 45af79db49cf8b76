"""A standalone tracker: one metric on a schedule of the caller's counter, without a Monitor.

:class:`Tracker` is the shell of :class:`foresight.ib.InformationPlaneTracker` and
:class:`foresight.causal.CausalTracker`: it drives its metric through the same lifecycle as the
:class:`~foresight.Monitor` (:func:`foresight.monitor.metrics.collect`, with the model's state and
the random number generators restored afterwards), so a tracker's ``history`` is a
:class:`~foresight.monitor.History` of flat records with the Monitor's keys, and every figure that
reads ``monitor.history`` reads ``tracker.history`` too.

>>> import torch
>>> from foresight.monitor import Function
>>> from foresight.schedule import every
>>> net = torch.nn.Linear(3, 2)
>>> norm = Function(lambda m: float(m.weight.detach().norm()), name="w")
>>> tracker = Tracker(net, norm, every(2))
>>> [tracker.update(epoch, loss=1.0) is not None for epoch in range(4)]
[True, False, True, False]
>>> [sorted(r) for r in tracker.history][0]
['epoch', 'loss', 'w']
"""

from __future__ import annotations

from typing import Any

from torch import nn

from foresight.monitor._monitor import _isolated, _scalar
from foresight.monitor.metrics import Context, as_metric, collect
from foresight.monitor.sinks import FlatRecord, History
from foresight.results import Record, flatten
from foresight.schedule import Schedule

__all__ = ["Tracker"]


class Tracker:
    """Measure one metric of ``model`` whenever ``schedule(index)`` fires.

    Call :meth:`update` with your counter (epoch or step: ``key`` names it in the records); it
    measures when the schedule fires and appends one flat record -- ``{key: index}``, the values
    you passed and the metric's values -- to :attr:`history`. :meth:`measure` measures now.

    Args:
        model: the network (never changed: measured inside the Monitor's isolation).
        metric: a :class:`~foresight.monitor.metrics.Metric` (or anything the Monitor takes).
        schedule: when to measure, a :mod:`foresight.schedule` object or any ``f(index) -> bool``.
        key: the name of the counter in the records (``"epoch"``).
    """

    def __init__(self, model: nn.Module, metric: Any, schedule: Schedule, *,
                 key: str = "epoch") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not callable(schedule):
            raise TypeError("schedule must be callable (see foresight.schedule), got "
                            f"{schedule!r}")
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty string such as 'epoch', got {key!r}")
        self.model = model
        self.metric = as_metric(metric)
        self.schedule: Schedule = schedule
        self.key = key
        #: One flat record per measurement, in order (the Monitor's :class:`History`).
        self.history = History()

    def update(self, index: int, **values: Any) -> Any:
        """Measure if ``schedule(index)``: the result measured, else ``None``."""
        if not self.schedule(int(index)):
            return None
        return self.measure(index, **values)

    def measure(self, index: int, **values: Any) -> Any:
        """Measure now, whatever the schedule says, and record it under ``index``: the result."""
        index = int(index)
        context = Context(step=index, epoch=index, values=values)
        with _isolated(self.model):
            result, rows = collect(self.metric, self.model, context)
        record: FlatRecord = {self.key: index}
        record.update({k: _scalar(v, k) for k, v in values.items()})
        record.update(flatten(rows))
        self.history.write(record)
        self._keep(index, result, record)
        return result

    def _keep(self, index: int, result: Any, record: FlatRecord) -> None:
        """Keep what a subclass keeps besides the history (its results)."""

    def to_records(self) -> list[Record]:
        """The history as tidy :class:`foresight.results.Record` rows (with the index)."""
        return self.history.to_records()

    def to_dataframe(self):
        """The history as a ``pandas.DataFrame``, one row per measurement (needs pandas)."""
        return self.history.to_dataframe()
