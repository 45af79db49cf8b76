"""When to measure: schedule objects shared by every tracker and :class:`~foresight.Monitor`.

A schedule is a callable ``schedule(step) -> bool`` over a non-negative integer counter (optimizer
steps or epochs, whichever the caller counts).

>>> [s for s in range(12) if every(3)(s)]
[0, 3, 6, 9]
>>> [s for s in range(200) if log_spaced(dense_until=3, per_decade=2)(s)]
[0, 1, 2, 3, 10, 32, 100]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Schedule", "every", "log_spaced", "at", "never"]

#: What every ``schedule=`` argument accepts: a callable ``schedule(step) -> bool``.
Schedule = Callable[[int], bool]


@dataclass(frozen=True)
class every:  # noqa: N801 - reads as a function: ``every(10)``
    """Fire at ``start, start + n, start + 2n, ...``."""

    n: int = 1
    start: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"every(n): n must be a positive integer, got {self.n!r}")

    def __call__(self, step: int) -> bool:
        return step >= self.start and (step - self.start) % self.n == 0


@dataclass(frozen=True)
class log_spaced:  # noqa: N801
    """Fire at every step up to ``dense_until``, then at ``per_decade`` log-spaced steps per decade.

    The information-bottleneck papers record every epoch early in training and ever more rarely
    later; this is that schedule. Step ``s > dense_until`` fires when it is the nearest integer to
    ``10 ** (k / per_decade)`` for some integer ``k``.
    """

    dense_until: int = 10
    per_decade: int = 10

    def __post_init__(self) -> None:
        if self.dense_until < 0:
            raise ValueError(f"log_spaced: dense_until must be >= 0, got {self.dense_until}")
        if self.per_decade < 1:
            raise ValueError(f"log_spaced: per_decade must be >= 1, got {self.per_decade}")

    def __call__(self, step: int) -> bool:
        if step <= self.dense_until:
            return step >= 0
        k = round(self.per_decade * math.log10(step))
        return any(
            round(10 ** (j / self.per_decade)) == step for j in (k - 1, k, k + 1)
        )


@dataclass(frozen=True)
class at:  # noqa: N801
    """Fire at an explicit set of steps."""

    steps: frozenset[int]

    def __init__(self, *steps: int) -> None:
        object.__setattr__(self, "steps", frozenset(int(s) for s in steps))

    def __call__(self, step: int) -> bool:
        return step in self.steps


def never(step: int) -> bool:
    """A schedule that never fires."""
    return False
