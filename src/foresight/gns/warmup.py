r"""Batch-size warmup: grow the batch as the noise scale grows.

Early in training the gradient is large and the noise scale small, so a small batch loses little;
later the noise scale (and the critical batch size) grows, and a larger batch takes fewer steps
for the same examples (McCandlish et al. 2018). Gray et al. (2024) grow the batch with the
tracked noise scale; Merrill et al. (2025) with a measured :math:`B_\text{crit}`.
:class:`BatchSizeWarmup` does either:

* ``update(estimate)`` with a :class:`~foresight.gns.NoiseScale` from
  :class:`~foresight.gns.GradientNoiseScale` (resolved estimates only, or their lower bound with
  ``use_lower_bound=True``) or a number such as a measured :math:`B_\text{crit}`;
* :meth:`BatchSizeWarmup.from_measurements` with ``(examples, b_crit)`` points, e.g.
  :meth:`foresight.gns.BranchedCriticalBatchSize.schedule`, then ``update(examples=n)``.

The batch size never shrinks, grows at most by ``max_growth`` per update, is a multiple of
``multiple_of`` (the micro-batch size when growing by gradient accumulation, see
:meth:`~BatchSizeWarmup.micro_batches`) and stops at ``max_batch_size``. The learning rate follows
the rule you choose: ``"linear"`` (:math:`\eta = \eta_0 B/B_0`), ``"sqrt"``, ``"constant"`` or
a callable ``batch_size -> lr`` (e.g. :meth:`foresight.gns.CriticalBatchSize.lr_for`, the best
learning rates a sweep found).

>>> warmup = BatchSizeWarmup(16, 0.05, max_batch_size=256, multiple_of=16)
>>> warmup.update(100.0), warmup.lr            # at most doubles per update
(32, 0.1)
>>> warmup.update(100.0), warmup.update(100.0)  # 64, then the target 100 rounded down
(64, 96)
>>> warmup.update(40.0)                         # never shrinks
96
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["BatchSizeWarmup"]


class BatchSizeWarmup:
    """Grow the batch size (and the learning rate with it) as the measured noise scale grows.

    Args:
        batch_size: the starting batch size :math:`B_0`.
        lr: the starting learning rate :math:`\\eta_0`.
        max_batch_size: the largest batch size to grow to.
        lr_rule: ``"linear"``, ``"sqrt"``, ``"constant"`` or ``batch_size -> lr``.
        factor: train at ``factor`` times the measurement (1: at :math:`B_\\text{crit}` itself,
            where steps and examples are both twice their minimum).
        multiple_of: batch sizes are multiples of this.
        max_growth: the batch grows at most by this factor per update (smooths a noisy
            estimate).
        use_lower_bound: let an unresolved :class:`~foresight.gns.NoiseScale` count by its lower
            bound (otherwise it leaves the batch size alone).

    Attributes:
        batch_size: the batch size to use now.
        lr: the learning rate to use now (:meth:`apply` sets it in an optimizer).
        history: one dict per update that changed something: ``update``, ``examples``,
            ``measured``, ``batch_size``, ``lr``.
    """

    def __init__(
        self,
        batch_size: int,
        lr: float,
        *,
        max_batch_size: int,
        lr_rule: str | Callable[[int], float] = "linear",
        factor: float = 1.0,
        multiple_of: int = 1,
        max_growth: float = 2.0,
        use_lower_bound: bool = False,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("max_batch_size", max_batch_size),
                            ("multiple_of", multiple_of)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if max_batch_size < batch_size:
            raise ValueError(
                f"max_batch_size ({max_batch_size}) is smaller than batch_size ({batch_size})"
            )
        if not (float(lr) > 0 and math.isfinite(float(lr))):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        if not (factor > 0 and math.isfinite(factor)):
            raise ValueError(f"factor must be a positive number, got {factor!r}")
        if not max_growth > 1.0:
            raise ValueError(f"max_growth must be > 1, got {max_growth!r}")
        if not (callable(lr_rule) or lr_rule in ("linear", "sqrt", "constant")):
            raise ValueError(
                "lr_rule must be 'linear', 'sqrt', 'constant' or a callable batch_size -> lr, "
                f"got {lr_rule!r}"
            )
        self.base_batch_size = batch_size
        self.base_lr = float(lr)
        self.max_batch_size = max_batch_size
        self.lr_rule = lr_rule
        self.factor = float(factor)
        self.multiple_of = multiple_of
        self.max_growth = float(max_growth)
        self.use_lower_bound = use_lower_bound
        self.batch_size = batch_size
        self.lr = self._lr_for(batch_size)
        self.updates = 0
        self.history: list[dict[str, Any]] = []
        self._schedule: list[tuple[float, float]] | None = None
        self._group_base: list[float] | None = None

    # ----------------------------------------------------------------- constructors

    @classmethod
    def from_measurements(
        cls,
        points: Sequence[tuple[float, float]],
        batch_size: int,
        lr: float,
        **options: Any,
    ) -> BatchSizeWarmup:
        """A warmup that follows measured ``(examples, b_crit)`` points: after ``n`` examples
        the target is the ``b_crit`` of the last point at or before ``n`` (the first point's
        before it). Call ``update(examples=n)``.

        >>> w = BatchSizeWarmup.from_measurements([(0, 8), (1000, 64), (5000, 512)], 8, 0.1,
        ...                                       max_batch_size=128, max_growth=100)
        >>> [w.update(examples=n) for n in (10, 2000, 9000)]
        [8, 64, 128]
        """
        pts = sorted((float(e), float(b)) for e, b in points)
        if not pts:
            raise ValueError("from_measurements needs at least one (examples, b_crit) point")
        if any(not (b > 0 and math.isfinite(b)) for _, b in pts):
            raise ValueError(f"from_measurements: every b_crit must be positive, got {pts}")
        warmup = cls(batch_size, lr, **options)
        warmup._schedule = pts
        return warmup

    # ----------------------------------------------------------------- the rule

    def _lr_for(self, batch_size: int) -> float:
        rule = self.lr_rule
        if callable(rule):
            out = float(rule(batch_size))
        elif rule == "linear":
            out = self.base_lr * batch_size / self.base_batch_size
        elif rule == "sqrt":
            out = self.base_lr * math.sqrt(batch_size / self.base_batch_size)
        else:
            out = self.base_lr
        if not (out > 0 and math.isfinite(out)):
            raise ValueError(f"lr_rule gave learning rate {out!r} for batch size {batch_size}")
        return out

    def _measured(self, measurement: Any, examples: float | None) -> float:
        if measurement is None:
            if self._schedule is None:
                raise ValueError("update() needs a measurement (a NoiseScale or a number), or "
                                 "build the warmup with from_measurements() and pass examples=")
            if examples is None:
                raise ValueError("a warmup from measurements needs update(examples=n)")
            xs = [e for e, _ in self._schedule]
            i = max(bisect.bisect_right(xs, float(examples)) - 1, 0)
            return self._schedule[i][1]
        if isinstance(measurement, (int, float)):
            return float(measurement)
        if getattr(measurement, "resolved", True) is False:
            lower = float(getattr(measurement, "b_simple_lower", math.nan))
            return lower if self.use_lower_bound else math.nan
        return float(getattr(measurement, "b_simple", math.nan))

    def target(self, value: float) -> int:
        """The batch size a measurement of ``value`` asks for, before the growth limit."""
        want = self.factor * value
        rounded = int(want // self.multiple_of) * self.multiple_of
        return max(self.multiple_of, min(rounded, self.max_batch_size))

    def update(self, measurement: Any = None, *, examples: float | None = None) -> int:
        """Fold in a measurement; return the batch size to use from now on.

        ``measurement``: a :class:`~foresight.gns.NoiseScale` (its ``b_simple``; unresolved
        estimates are skipped unless ``use_lower_bound``), a number (e.g. a measured
        :math:`B_\\text{crit}`), or ``None`` with ``examples=`` for a warmup built by
        :meth:`from_measurements`. Non-finite or non-positive values leave everything as it is.
        """
        self.updates += 1
        value = self._measured(measurement, examples)
        if not (value > 0 and math.isfinite(value)):
            return self.batch_size
        cap = int(self.batch_size * self.max_growth // self.multiple_of) * self.multiple_of
        new = min(self.target(value), max(cap, self.batch_size))
        if new > self.batch_size:
            self.batch_size = new
            self.lr = self._lr_for(new)
            self.history.append(dict(update=self.updates, examples=examples, measured=value,
                                     batch_size=self.batch_size, lr=self.lr))
        return self.batch_size

    # ----------------------------------------------------------------- applying it

    def apply(self, optimizer: Any) -> None:
        """Set the current learning rate in ``optimizer``: each parameter group's learning rate
        is scaled by ``lr / lr_0`` from the value it had at the first call."""
        if self._group_base is None or len(self._group_base) != len(optimizer.param_groups):
            self._group_base = [float(g["lr"]) for g in optimizer.param_groups]
        for group, base in zip(optimizer.param_groups, self._group_base):
            group["lr"] = base * self.lr / self.base_lr

    def micro_batches(self, micro_batch_size: int) -> int:
        """Micro-batches per step when the batch grows by gradient accumulation (divide the loss
        by this number); use ``multiple_of=micro_batch_size`` so that it divides evenly.

        >>> BatchSizeWarmup(64, 0.1, max_batch_size=512).micro_batches(16)
        4
        """
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        return math.ceil(self.batch_size / micro_batch_size)

    def state_dict(self) -> dict[str, Any]:
        """The state to resume from (the rule and options are not included)."""
        return dict(batch_size=self.batch_size, lr=self.lr, updates=self.updates,
                    history=[dict(h) for h in self.history], group_base=self._group_base)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.batch_size = int(state["batch_size"])
        self.lr = float(state["lr"])
        self.updates = int(state["updates"])
        self.history = [dict(h) for h in state.get("history", [])]
        self._group_base = state.get("group_base")

    def __repr__(self) -> str:
        return (f"BatchSizeWarmup(batch_size={self.batch_size}, lr={self.lr:g}, "
                f"max_batch_size={self.max_batch_size})")
