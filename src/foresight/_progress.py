"""A progress bar: tqdm when it is installed, otherwise a small bar drawn on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from foresight._optional import available


class SimpleBar:
    """A minimal text progress bar (used when tqdm is not installed).

    >>> import io
    >>> out = io.StringIO()
    >>> for _ in SimpleBar(range(3), desc="demo", file=out, min_interval=0):
    ...     pass
    >>> out.getvalue().splitlines()[-1].strip()
    'demo [##############################] 3/3'
    """

    def __init__(
        self,
        iterable: Iterable[Any],
        *,
        total: int | None = None,
        desc: str = "",
        file: TextIO | None = None,
        width: int = 30,
        min_interval: float = 0.1,
    ) -> None:
        self.iterable = iterable
        self.total = total if total is not None else _len(iterable)
        self.desc = desc
        self.file = file if file is not None else sys.stderr
        self.width = width
        self.min_interval = min_interval
        self.postfix = ""
        self._last = -float("inf")
        self._n = 0
        self._started = False

    def set_postfix(self, values: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Show ``key=value`` pairs after the bar (same call as tqdm's)."""
        items = {**(values or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={_fmt(v)}" for k, v in items.items())
        if self._started:
            self._draw(self._n)  # redraw (rate-limited), as tqdm does

    def _draw(self, n: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        if self.total:
            filled = round(self.width * n / self.total)
            bar = "#" * filled + "-" * (self.width - filled)
            text = f"{self.desc} [{bar}] {n}/{self.total}"
        else:
            text = f"{self.desc} {n}"
        if self.postfix:
            text += f" {self.postfix}"
        self.file.write("\r" + text)
        self.file.flush()

    def __iter__(self) -> Iterator[Any]:
        n = 0
        self._started = True
        self._draw(0, force=True)
        for item in self.iterable:
            yield item
            n += 1
            self._n = n
            self._draw(n)
        self._draw(n, force=True)
        self.file.write("\n")
        self.file.flush()


def progress(
    iterable: Iterable[Any], *, total: int | None = None, desc: str = "", enabled: bool = True
) -> Any:
    """Wrap ``iterable`` in a progress bar on stderr (tqdm if available); a no-op if not enabled.

    The returned object is iterable and has ``set_postfix(dict)``.
    """
    if not enabled:
        return _Silent(iterable)
    if available("tqdm"):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=True)
    return SimpleBar(iterable, total=total, desc=desc)


class _Silent:
    def __init__(self, iterable: Iterable[Any]) -> None:
        self.iterable = iterable

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __iter__(self) -> Iterator[Any]:
        return iter(self.iterable)


def _len(iterable: Iterable[Any]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
