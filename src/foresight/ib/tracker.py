"""Record the information plane during training, on a schedule (every epoch early, then rarer).

:class:`InformationPlaneTracker` is a thin shell over the Monitor's lifecycle
(:class:`foresight.monitor.tracker.Tracker` driving :class:`foresight.monitor.InformationPlane`):
its ``history`` holds the Monitor's records, ``i_xt/<layer>``, ``i_ty/<layer>`` and
``i_xt_limited/<layer>``, one record per measured epoch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from foresight.ib.plane import InformationPlane, _check_method, _label_symbols
from foresight.monitor.metrics import InformationPlane as _PlaneMetric
from foresight.monitor.sinks import FlatRecord
from foresight.monitor.tracker import Tracker
from foresight.results import Result
from foresight.schedule import Schedule, log_spaced

__all__ = ["InformationPlaneTracker", "InformationPlaneRecord"]


@dataclass
class InformationPlaneRecord(Result):
    """Deprecated: one layer's point at one epoch, the row of ``InformationPlaneTracker.history``
    in foresight 0.2. The history now holds one flat record per measurement (as
    ``monitor.history`` does); per-layer rows are ``tracker.to_records()`` (tidy) or
    ``tracker.planes[epoch].row(layer)``."""

    epoch: int
    layer: str
    i_xt: float
    i_ty: float
    h_t: float
    n_states: int

    def __post_init__(self) -> None:
        warnings.warn(
            "InformationPlaneRecord is deprecated: InformationPlaneTracker.history holds one "
            "flat record per measurement; use tracker.to_records() or "
            "tracker.planes[epoch].row(layer)",
            DeprecationWarning,
            stacklevel=3,
        )


class _PlaneRecord(dict):
    """A flat record of the history that says what to do when read as a 0.2 per-layer row."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"InformationPlaneTracker.history holds one flat record (a dict) per measurement, "
            f"not one row per layer as in foresight 0.2: read record['i_xt/<layer>'], or "
            f"tracker.planes[epoch].row(layer).{name}, or the tidy tracker.to_records()"
        )


class InformationPlaneTracker(Tracker):
    """Compute :func:`~foresight.ib.information_plane` at the epochs a schedule picks.

    Call :meth:`update` once per epoch (or per step: the counter is yours); it measures when
    ``schedule(epoch)`` is true and appends one record to :attr:`history` -- ``epoch``, the
    values you pass (``loss=``), and ``i_xt/<layer>``, ``i_ty/<layer>``, ``i_xt_limited/<layer>``
    for every layer (the keys of :class:`foresight.monitor.InformationPlane`). The full result of
    each measurement is kept in :attr:`planes`. The default schedule,
    ``log_spaced(dense_until=10, per_decade=20)``, measures every epoch up to 10, then 20 times
    per decade, as in the information-bottleneck papers.

    Args:
        model: the network (never changed; see :func:`~foresight.ib.information_plane`).
        inputs: ``[N, ...]`` fixed samples (X uniform over them).
        labels: ``[N]`` integer labels.
        schedule: when to measure, a ``foresight.schedule`` object or any ``f(epoch) -> bool``.
        layers: module names (default: see :func:`~foresight.ib.information_plane`).
        method: ``"binning"`` or ``"kde"``.
        batch_size: forward the inputs in batches of this size.
        **options: the estimator's options (``bins``, ``range``, ``bin_size``, ``noise_var``...).

    >>> from foresight.schedule import every
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> tracker = InformationPlaneTracker(net, x, y, schedule=every(2), bin_size=0.5)
    >>> for epoch in range(4):
    ...     _ = tracker.update(epoch)
    >>> [r["epoch"] for r in tracker.history], [k for k in tracker.history[0] if "i_xt/" in k]
    ([0, 2], ['i_xt/1', 'i_xt/output'])
    >>> tracker.planes[2].row("1").i_xt == tracker.history[1]["i_xt/1"]
    True
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        schedule: Schedule | None = None,
        layers: Sequence[str] | None = None,
        method: str = "binning",
        batch_size: int | None = None,
        **options: Any,
    ) -> None:
        _check_method(method, options)
        _label_symbols(labels)
        metric = _PlaneMetric(inputs, labels, layers=layers, method=method,
                              batch_size=batch_size, **options)
        super().__init__(
            model, metric,
            log_spaced(dense_until=10, per_decade=20) if schedule is None else schedule,
            key="epoch",
        )
        self.inputs = inputs
        self.labels = labels
        self.layers = layers
        self.method = method
        self.batch_size = batch_size
        self.options = options
        #: The result of each measurement, by epoch.
        self.planes: dict[int, InformationPlane] = {}

    def measure(self, epoch: int, **values: Any) -> InformationPlane:
        """Measure now, whatever the schedule says, and record it under ``epoch``."""
        return super().measure(epoch, **values)

    def update(self, epoch: int, **values: Any) -> InformationPlane | None:
        """Measure if ``schedule(epoch)``; returns the plane measured, else ``None``."""
        return super().update(epoch, **values)

    def _keep(self, index: int, result: Any, record: FlatRecord) -> None:
        self.planes[index] = result
        self.history[-1] = _PlaneRecord(self.history[-1])
