"""A small tracker: :func:`~foresight.causal.report` on a schedule, as flat records.

For use without :class:`foresight.Monitor` (which offers the same through its ``"causal"``
metric). It is a thin shell over the Monitor's lifecycle
(:class:`foresight.monitor.tracker.Tracker` driving :class:`foresight.monitor.CausalEI`): the
records have the Monitor's keys (:data:`~foresight.causal.RECORD_KEYS`,
:data:`~foresight.causal.CONVERGED_KEYS`), so :mod:`foresight.plot.causal` draws both.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from foresight.causal.report import CausalReport
from foresight.monitor.metrics import CausalEI
from foresight.monitor.sinks import FlatRecord
from foresight.monitor.tracker import Tracker
from foresight.schedule import Schedule, log_spaced

__all__ = ["CausalTracker"]

_UNSET: Any = object()


class CausalTracker(Tracker):
    """Measure a model's causal structure at the steps a schedule picks.

    Call :meth:`update` with your counter (an epoch, or a step: ``key`` names it); it measures
    when ``schedule(index)`` fires and appends one record to :attr:`history`: ``{key: index}``,
    the values you pass (``loss=``) and :meth:`CausalReport.record
    <foresight.causal.CausalReport.record>`. The reports themselves are kept in :attr:`reports`.

    ``seed`` is fixed (default 0) so that measuring never draws from torch's global generator:
    training is bit-identical with and without the tracker.

    Args:
        model: the network (never changed).
        schedule: when to measure (default ``log_spaced(dense_until=10, per_decade=10)``).
        key: the counter's name in the records.
        seed: the seed of every measurement.
        when: the 0.2 name of ``schedule`` (deprecated).
        **report_options: options of :func:`~foresight.causal.report` (``bins``, ``samples``...).

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Linear(3, 2), nn.Sigmoid())
        >>> tracker = CausalTracker(net, bins=8, samples=20000)
        >>> for epoch in range(3):
        ...     _ = tracker.update(epoch, loss=1.0 / (epoch + 1))
        >>> sorted(k for k in tracker.history[0] if not k.endswith("converged/0"))
        ['causal_degeneracy/0', 'causal_ei/0', 'ei_parts/0', 'epoch', 'loss', 'sensitivity/0']
        >>> tracker.history[0]["causal_ei_converged/0"], tracker.history[0]["ei_parts_converged/0"]
        (True, True)
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: Schedule | None = None,
        *,
        key: str = "epoch",
        seed: int = 0,
        when: Schedule | None = _UNSET,
        **report_options: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if when is not _UNSET:
            warnings.warn(
                "CausalTracker(when=...) is deprecated: the argument is called schedule, as in "
                "every tracker and the Monitor",
                DeprecationWarning,
                stacklevel=2,
            )
            if schedule is not None:
                raise TypeError("CausalTracker: pass schedule= or the deprecated when=, not both")
            schedule = when
        self.options = {"progress": False, **report_options, "seed": seed}
        super().__init__(
            model, CausalEI(**self.options),
            schedule if schedule is not None else log_spaced(dense_until=10, per_decade=10),
            key=key,
        )
        #: ``(index, report)`` of each measurement, in order.
        self.reports: list[tuple[int, CausalReport]] = []

    @property
    def when(self) -> Schedule:
        """Deprecated: :attr:`schedule`."""
        warnings.warn("CausalTracker.when is deprecated: use CausalTracker.schedule",
                      DeprecationWarning, stacklevel=2)
        return self.schedule

    def update(self, index: int, **values: Any) -> CausalReport | None:
        """Measure if the schedule fires at ``index``: the report, else ``None``; ``values``
        (losses) join the record."""
        return super().update(index, **values)

    def measure(self, index: int, **values: Any) -> CausalReport:
        """Measure now, whatever the schedule says, and record it under ``index``."""
        return super().measure(index, **values)

    def step(self, step: int, **extra: Any) -> FlatRecord | None:
        """Deprecated (the 0.2 name): :meth:`update`, returning the record written (not the
        report) or ``None``."""
        warnings.warn(
            "CausalTracker.step() is deprecated: use CausalTracker.update(), as on every tracker "
            "(it returns the report; the record is tracker.history[-1])",
            DeprecationWarning,
            stacklevel=2,
        )
        return None if self.update(step, **extra) is None else self.history[-1]

    def _keep(self, index: int, result: Any, record: FlatRecord) -> None:
        self.reports.append((index, result))
