"""A progress bar: tqdm when it is installed, otherwise a small bar drawn on stderr.

:func:`progress` wraps an iterable; :func:`bar` is a bar updated by hand (``update(n)``,
``set_postfix``, ``close``). Both take ``enabled``: ``True`` draws at once (the command line),
``False`` never, ``None`` (library calls) only once the work has lasted :data:`AUTO_DELAY`
seconds, so quick calls stay quiet.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from foresight._optional import available

#: Seconds of work after which an ``enabled=None`` bar appears.
AUTO_DELAY = 2.0


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
        delay: float = 0.0,
    ) -> None:
        self.iterable = iterable
        self.total = total if total is not None else _len(iterable)
        self.desc = desc
        self.file = file if file is not None else sys.stderr
        self.width = width
        self.min_interval = min_interval
        self.postfix = ""
        self._last = -float("inf")
        self._start = time.monotonic()
        self.delay = delay
        self.n = 0
        self._shown = False
        self._started = False

    def set_postfix(
        self, values: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any
    ) -> None:
        """Show ``key=value`` pairs after the bar (same call as tqdm's)."""
        items = {**(values or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={_fmt(v)}" for k, v in items.items())
        if refresh and self._started:
            self._draw(self.n)  # redraw (rate-limited), as tqdm does

    def _draw(self, n: int, force: bool = False) -> None:
        now = time.monotonic()
        if now - self._start < self.delay:
            return
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        self._shown = True
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
            self.n = n
            self._draw(n)
        self._draw(n, force=True)
        if self._shown:
            self.file.write("\n")
            self.file.flush()

    def update(self, n: int = 1) -> None:
        """Advance a hand-driven bar by ``n``."""
        self._started = True
        self.n += n
        self._draw(self.n)

    def close(self) -> None:
        """Finish a hand-driven bar (a newline if it was drawn)."""
        self._draw(self.n, force=True)
        if self._shown:
            self.file.write("\n")
            self.file.flush()


def bar(
    total: int | None = None, *, desc: str = "", enabled: bool | None = None, unit: str = "it"
) -> Any:
    """A bar driven by hand: ``update(n)``, ``set_postfix(...)``, ``close()``.

    ``enabled=None`` shows it only after :data:`AUTO_DELAY` seconds of work; ``False`` never.

    >>> b = bar(10, desc="quiet", enabled=False)
    >>> b.update(3); b.close()
    """
    if enabled is False:
        return _Silent(())
    delay = AUTO_DELAY if enabled is None else 0.0
    if available("tqdm"):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, file=sys.stderr, leave=True, delay=delay, unit=unit)
    return SimpleBar((), total=total, desc=desc, delay=delay)


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

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
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
