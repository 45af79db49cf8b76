"""Record the information plane during training, on a schedule (every epoch early, then rarer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from foresight._result import Result
from foresight.ib.plane import (
    InformationPlane,
    _check_method,
    _label_symbols,
    information_plane,
)
from foresight.schedule import Schedule, log_spaced


@dataclass
class InformationPlaneRecord(Result):
    """One layer's point at one epoch (a row of :attr:`InformationPlaneTracker.history`)."""

    epoch: int
    layer: str
    i_xt: float
    i_ty: float
    h_t: float
    n_states: int


class InformationPlaneTracker:
    """Compute :func:`~foresight.ib.information_plane` at the epochs a schedule picks.

    Call :meth:`update` once per epoch (or per step: the counter is yours); it measures when
    ``schedule(epoch)`` is true and appends one record per layer to :attr:`history`. The default
    schedule, ``log_spaced(dense_until=10, per_decade=20)``, measures every epoch up to 10, then
    20 times per decade, as in the information-bottleneck papers.

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
    >>> sorted({r.epoch for r in tracker.history}), [r.layer for r in tracker.history[:2]]
    ([0, 2], ['1', 'output'])
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
        self.model = model
        self.inputs = inputs
        self.labels = labels
        self.schedule: Schedule = (
            log_spaced(dense_until=10, per_decade=20) if schedule is None else schedule
        )
        self.layers = layers
        self.method = method
        self.batch_size = batch_size
        self.options = options
        self.history: list[InformationPlaneRecord] = []
        self.planes: dict[int, InformationPlane] = {}

    def measure(self, epoch: int) -> InformationPlane:
        """Measure now, whatever the schedule says, and record it under ``epoch``."""
        plane = information_plane(
            self.model,
            self.inputs,
            self.labels,
            layers=self.layers,
            method=self.method,
            batch_size=self.batch_size,
            **self.options,
        )
        self.planes[int(epoch)] = plane
        for la in plane.layers:
            self.history.append(
                InformationPlaneRecord(int(epoch), la.name, la.i_xt, la.i_ty, la.h_t, la.n_states)
            )
        return plane

    def update(self, epoch: int) -> InformationPlane | None:
        """Measure if ``schedule(epoch)``; returns the plane measured, else ``None``."""
        if self.schedule(int(epoch)):
            return self.measure(epoch)
        return None

    def to_records(self) -> list[dict[str, Any]]:
        """The history as plain dicts (for plotting or JSON)."""
        return [r.to_dict() for r in self.history]

    def to_dataframe(self):
        """The history as a ``pandas.DataFrame`` (one row per epoch and layer)."""
        from foresight._optional import require

        pd = require("pandas", "InformationPlaneTracker.to_dataframe()")
        return pd.DataFrame(self.to_records())
