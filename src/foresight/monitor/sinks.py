"""Where the :class:`~foresight.Monitor` writes its records.

A sink is any object with ``write(record)`` and ``close()``; a record is a flat ``dict`` holding
``step``, ``epoch`` and one numeric entry per measured quantity (keys such as ``"ei"`` or
``"i_xt/fc1"``). The sinks here cover the usual destinations:

* :class:`CSVSink` -- one row per measurement in a CSV file (columns grow as new keys appear);
* :class:`TensorBoardSink` -- scalars through :class:`torch.utils.tensorboard.SummaryWriter`;
* :class:`WandbSink` -- ``wandb.log`` (Weights & Biases is an optional import);
* :class:`History` -- the in-memory list kept by every Monitor as ``monitor.history``.

Optional packages (tensorboard, wandb, pandas) are imported only when a sink that needs them is
created.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from foresight._optional import require

Record = dict[str, Any]

#: Keys of a record that say *when* it was measured rather than *what* was measured.
INDEX_KEYS = ("step", "epoch")


@runtime_checkable
class Sink(Protocol):
    """What a Monitor needs from a sink."""

    def write(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class History(list):
    """The records of a Monitor, in order; a ``list`` of ``dict`` with :meth:`to_dataframe`.

    >>> h = History([{"step": 0, "ei": 1.0}, {"step": 10, "ei": 1.5}])
    >>> h.column("ei")
    [1.0, 1.5]
    """

    def write(self, record: Mapping[str, Any]) -> None:
        """Append a copy of ``record`` (a History is itself a sink)."""
        self.append(dict(record))

    def close(self) -> None:
        """Nothing to release."""

    def column(self, key: str) -> list[Any]:
        """The values of ``key`` over the records, ``nan`` where a record lacks it."""
        return [r.get(key, math.nan) for r in self]

    def keys(self) -> list[str]:
        """Every key seen, in first-seen order."""
        return _union_keys(self)

    def to_dataframe(self):
        """A ``pandas.DataFrame`` with one row per record (needs pandas)."""
        pd = require("pandas", "History.to_dataframe()")
        return pd.DataFrame(list(self), columns=self.keys())


def _union_keys(records: Iterable[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        for k in r:
            seen.setdefault(k, None)
    return list(seen)


class CSVSink:
    """Write each record as one CSV row; the header is the union of all keys seen so far.

    When a record brings a key the file has no column for, the file is rewritten with the wider
    header (earlier rows get empty cells), so the file on disk is always a valid, rectangular CSV.

    Args:
        path: file to write (parent directories are created; an existing file is replaced).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._rows: list[Record] = []
        self._columns: list[str] = []
        open(self.path, "w").close()

    def write(self, record: Mapping[str, Any]) -> None:
        row = {k: _plain_scalar(v) for k, v in record.items()}
        self._rows.append(row)
        new = [k for k in row if k not in self._columns]
        if new or len(self._rows) == 1:
            self._columns.extend(new)
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._columns).writerow(row)

    def _rewrite(self) -> None:
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns)
            writer.writeheader()
            writer.writerows(self._rows)

    def close(self) -> None:
        """Nothing stays open between writes."""


class TensorBoardSink:
    """Log every numeric entry of a record as a TensorBoard scalar.

    Args:
        log_dir: directory for the event files, or an existing ``SummaryWriter`` in ``writer``.
        writer: a ``torch.utils.tensorboard.SummaryWriter`` to use instead of creating one.
        step_key: which record entry is the x axis (``"step"`` or ``"epoch"``).
        prefix: prepended to every tag (e.g. ``"foresight/"``).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] | None = None,
        *,
        writer: Any = None,
        step_key: str = "step",
        prefix: str = "",
    ) -> None:
        if writer is None:
            require("tensorboard", "TensorBoardSink")
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=None if log_dir is None else os.fspath(log_dir))
            self._owns = True
        else:
            self._owns = False
        if step_key not in INDEX_KEYS:
            raise ValueError(
                f"TensorBoardSink: step_key must be 'step' or 'epoch', got {step_key!r}"
            )
        self.writer = writer
        self.step_key = step_key
        self.prefix = prefix

    def write(self, record: Mapping[str, Any]) -> None:
        step = record.get(self.step_key)
        for key, value in record.items():
            if key in INDEX_KEYS:
                continue
            number = _number(value)
            if number is not None:
                self.writer.add_scalar(self.prefix + key, number, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        """Flush, and close the writer if this sink created it."""
        self.writer.flush()
        if self._owns:
            self.writer.close()


class WandbSink:
    """Log records to Weights & Biases with ``wandb.log`` (``wandb`` is an optional dependency).

    Args:
        run: an active ``wandb`` run; by default the current run, or a new one started with
            ``wandb.init(**init_kwargs)``.
        step_key: the record entry passed as ``step=`` (``None``: let wandb count).
        prefix: prepended to every key.
    """

    def __init__(
        self,
        run: Any = None,
        *,
        step_key: str | None = "step",
        prefix: str = "",
        **init_kwargs: Any,
    ) -> None:
        wandb = require("wandb", "WandbSink")
        if run is None:
            run = wandb.run if wandb.run is not None else wandb.init(**init_kwargs)
        self.run = run
        self.step_key = step_key
        self.prefix = prefix

    def write(self, record: Mapping[str, Any]) -> None:
        data = {
            self.prefix + k: n
            for k, v in record.items()
            if k not in INDEX_KEYS and (n := _number(v)) is not None
        }
        if self.step_key is None:
            self.run.log(data)
        else:
            self.run.log(data, step=int(record[self.step_key]))

    def close(self) -> None:
        """The run belongs to the user; it is left open."""


def _plain_scalar(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            return value
    return value


def _number(value: Any) -> float | None:
    value = _plain_scalar(value)
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None
