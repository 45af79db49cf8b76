"""A small tracker: :func:`~foresight.causal.report` on a schedule, as flat records.

For use without :class:`foresight.Monitor` (which offers the same through its ``"causal"``
metric). The records have the Monitor's keys, so :mod:`foresight.plot.causal` draws both.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from foresight.causal.report import CausalReport, report
from foresight.schedule import Schedule, log_spaced

__all__ = ["CausalTracker"]


class CausalTracker:
    """Measure a model's causal structure at the steps a schedule picks.

    ``seed`` is fixed (default 0) so that measuring never draws from torch's global generator:
    training is bit-identical with and without the tracker.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Linear(3, 2), nn.Sigmoid())
        >>> tracker = CausalTracker(net, bins=8, samples=20000)
        >>> for epoch in range(3):
        ...     _ = tracker.step(epoch, loss=1.0 / (epoch + 1))
        >>> sorted(k for k in tracker.history[0] if not k.endswith("converged/0"))
        ['causal_degeneracy/0', 'causal_ei/0', 'ei_parts/0', 'epoch', 'loss', 'sensitivity/0']
        >>> tracker.history[0]["causal_ei_converged/0"], tracker.history[0]["ei_parts_converged/0"]
        (True, True)
    """

    def __init__(
        self,
        model: nn.Module,
        when: Schedule | None = None,
        *,
        key: str = "epoch",
        seed: int = 0,
        **report_options: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.model = model
        self.when = when if when is not None else log_spaced(dense_until=10, per_decade=10)
        self.key = key
        self.options = {"progress": False, **report_options, "seed": seed}
        self.history: list[dict[str, float]] = []
        self.reports: list[tuple[int, CausalReport]] = []

    def step(self, step: int, **extra: float) -> dict[str, float] | None:
        """Measure if the schedule fires at ``step``; ``extra`` values (losses) join the record."""
        if not self.when(step):
            return None
        rep = report(self.model, **self.options)
        record = {self.key: step, **extra, **rep.record()}
        self.history.append(record)
        self.reports.append((step, rep))
        return record
