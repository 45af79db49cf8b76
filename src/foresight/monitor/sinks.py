"""Where the :class:`~foresight.Monitor` writes its records.

A sink is any object with ``write(record)`` and ``close()``; a record is a flat ``dict`` holding
``step``, ``epoch`` and one numeric entry per measured quantity (keys such as ``"ei"`` or
``"i_xt/fc1"``: quantity, then layer). The sinks here cover the usual destinations:

* :class:`CSVSink` -- a CSV file, ``layout="wide"`` (one row per measurement, one column per
  quantity; columns grow as new keys appear), ``layout="long"`` (one row per value with
  ``step, epoch, metric, layer, value``, ``metric`` being the key's quantity) or
  ``layout="tidy"`` (the records of :mod:`foresight.results`: ``step, epoch, metric, layer,
  field, value``);
* :class:`TensorBoardSink` -- scalars through :class:`torch.utils.tensorboard.SummaryWriter`;
* :class:`WandbSink` -- ``wandb.log`` (Weights & Biases is an optional import);
* :class:`History` -- the in-memory list kept by every Monitor as ``monitor.history`` (and by
  the standalone trackers as ``tracker.history``).

A record's keys and the tidy records they stand for are one definition
(:attr:`foresight.results.Record.key`, :func:`foresight.results.unflatten`): every sink that
splits a key into its quantity and layer goes through it.

Every sink records both ``step`` and ``epoch``. Where the names share a namespace with the rest
of a run (TensorBoard tags, W&B keys, Lightning's loggers) they carry one prefix,
:data:`DEFAULT_PREFIX` (``"foresight/"``) unless ``prefix=`` says otherwise: ``foresight/ei``,
``foresight/i_xt/fc1``, ``foresight/epoch``.

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
from foresight.results import INDEX_KEYS, Record, tidy, unflatten

__all__ = [
    "Sink", "History", "CSVSink", "TensorBoardSink", "WandbSink", "split_key", "DEFAULT_PREFIX",
    "INDEX_KEYS", "LONG_COLUMNS", "TIDY_COLUMNS",
]

#: What a Monitor writes: one flat ``dict`` per measurement (``step``, ``epoch``, the values).
FlatRecord = dict[str, Any]

#: The namespace of foresight's names in shared logs (TensorBoard tags, W&B keys, Lightning).
DEFAULT_PREFIX = "foresight/"

#: Columns of :class:`CSVSink` with ``layout="long"``.
LONG_COLUMNS = ("step", "epoch", "metric", "layer", "value")

#: Columns of :class:`CSVSink` with ``layout="tidy"``: the fields of
#: :class:`foresight.results.Record`.
TIDY_COLUMNS = ("step", "epoch", "metric", "layer", "field", "value")


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

    def to_records(self) -> list[Record]:
        """Every value of every record as a tidy :class:`foresight.results.Record` (with its
        ``step`` and ``epoch``).

        >>> h = History([{"step": 10, "epoch": 1, "ei": 1.5, "i_xt/fc1": 2.0}])
        >>> [(r.metric, r.layer, r.field, r.value, r.step) for r in h.to_records()]
        [('ei', None, 'ei', 1.5, 10), ('ib', 'fc1', 'i_xt', 2.0, 10)]
        """
        return tidy(list(self))

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


def split_key(key: str) -> tuple[str, str]:
    """A record key as ``(quantity, layer)``: ``"i_xt/fc1"`` -> ``("i_xt", "fc1")``, ``"ei"`` ->
    ``("ei", "")``. The layer is everything after the first ``/``
    (:meth:`foresight.results.Record.from_key`, with ``""`` for no layer).

    >>> split_key("b_simple/encoder.0"), split_key("train_loss")
    (('b_simple', 'encoder.0'), ('train_loss', ''))
    """
    r = Record.from_key(key, None, metric="")
    return r.field, r.layer or ""


class CSVSink:
    """Write records to a CSV file, wide (one row per record), long or tidy (one row per value).

    ``layout="wide"``: the header is the union of all keys seen so far (``step``, ``epoch``, then
    one column per quantity); when a record brings a key the file has no column for, the file is
    rewritten with the wider header (earlier rows get empty cells), so the file on disk is always a
    valid, rectangular CSV.

    ``layout="long"`` (tidy): the fixed header ``step, epoch, metric, layer, value`` and one row per
    numeric entry of each record, ``metric``/``layer`` split from the key at the first ``/``
    (``i_xt/fc1`` -> ``i_xt``, ``fc1``; ``ei`` -> ``ei`` with an empty layer). Rows are appended,
    never rewritten; non-numeric entries (strings, ``None``) are left out. This is the shape
    ``pandas``/``seaborn``/R read directly (``df.pivot_table(index="epoch", columns=...)``).

    ``layout="tidy"``: the records of :mod:`foresight.results` -- ``step, epoch, metric, layer,
    field, value`` (``metric`` the metric that measured the value, ``field`` the quantity, as in
    :class:`~foresight.results.Record`; ``layer`` empty for a whole-model value) -- appended like
    the long layout.

    The file is foresight's own, so its names carry no prefix.

    The file is created (parent directories too; an existing file is replaced) at the first
    write, or at ``close()`` if nothing was written -- never by a sink that is not used, such as
    the sinks of the ranks other than 0 under DDP/FSDP2, where only rank 0 writes.

    Args:
        path: file to write.
        layout: ``"wide"`` (default) or ``"long"``.

    >>> import csv, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "m.csv")
    >>> sink = CSVSink(path, layout="long")
    >>> sink.write({"step": 5, "epoch": 1, "ei": 1.5, "i_xt/fc1": 2.0})
    >>> [tuple(r.values()) for r in csv.DictReader(open(path))]
    [('5', '1', 'ei', '', '1.5'), ('5', '1', 'i_xt', 'fc1', '2.0')]
    """

    def __init__(self, path: str | os.PathLike[str], *, layout: str = "wide") -> None:
        if layout not in ("wide", "long", "tidy"):
            raise ValueError(f"CSVSink: layout must be 'wide', 'long' or 'tidy', got {layout!r}")
        self.path = os.fspath(path)
        self.layout = layout
        self._rows: list[FlatRecord] = []
        self._columns: list[str] = []
        self._started = False

    def _start(self) -> None:
        self._started = True
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            if self.layout in ("long", "tidy"):
                csv.writer(f).writerow(LONG_COLUMNS if self.layout == "long" else TIDY_COLUMNS)

    def write(self, record: Mapping[str, Any]) -> None:
        if not self._started:
            self._start()
        row = {k: _plain_scalar(v) for k, v in record.items()}
        if self.layout in ("long", "tidy"):
            self._append_long(row)
            return
        self._rows.append(row)
        new = [k for k in row if k not in self._columns]
        if new or len(self._rows) == 1:
            self._columns.extend(new)
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._columns).writerow(row)

    def _append_long(self, row: FlatRecord) -> None:
        step, epoch = row.get("step", ""), row.get("epoch", "")
        lines = []
        for r in unflatten(row):
            layer = "" if r.layer is None else r.layer
            if self.layout == "long":
                lines.append((step, epoch, r.field, layer, r.value))
            else:
                lines.append((step, epoch, r.metric, layer, r.field, r.value))
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerows(lines)

    def _rewrite(self) -> None:
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns)
            writer.writeheader()
            writer.writerows(self._rows)

    def close(self) -> None:
        """Nothing stays open between writes; creates the (empty) file if nothing was
        written."""
        if not self._started:
            self._start()


class TensorBoardSink:
    """Log every numeric entry of a record as a TensorBoard scalar, tagged ``prefix + key``.

    The record's ``step_key`` entry is the x axis (``global_step``); the other index entry is
    logged as a scalar of its own (``foresight/epoch`` against the step, or ``foresight/step``
    against the epoch), so both are in the event file.

    A writer this sink creates is created at the first write (so unused sinks, such as those of
    the ranks other than 0 under DDP/FSDP2, leave no event files).

    Args:
        log_dir: directory for the event files, or an existing ``SummaryWriter`` in ``writer``.
        writer: a ``torch.utils.tensorboard.SummaryWriter`` to use instead of creating one.
        step_key: which record entry is the x axis (``"step"`` or ``"epoch"``).
        prefix: prepended to every tag (default ``"foresight/"``; ``""`` for none).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] | None = None,
        *,
        writer: Any = None,
        step_key: str = "step",
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        if step_key not in INDEX_KEYS:
            raise ValueError(
                f"TensorBoardSink: step_key must be 'step' or 'epoch', got {step_key!r}"
            )
        if writer is None:
            require("tensorboard", "TensorBoardSink")
        self._owns = writer is None
        self._writer = writer
        self._log_dir = None if log_dir is None else os.fspath(log_dir)
        self.step_key = step_key
        self.prefix = _check_prefix(prefix, "TensorBoardSink")

    @property
    def writer(self) -> Any:
        """The ``SummaryWriter`` (created on first use if this sink owns it)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self._log_dir)
        return self._writer

    def write(self, record: Mapping[str, Any]) -> None:
        step = record.get(self.step_key)
        step = None if step is None else int(step)
        for key, value in record.items():
            if key == self.step_key:
                continue
            number = _number(value)
            if number is not None:
                self.writer.add_scalar(self.prefix + key, number, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        """Flush, and close the writer if this sink created it."""
        if self._writer is None:
            return
        self._writer.flush()
        if self._owns:
            self._writer.close()


class WandbSink:
    """Log records to Weights & Biases with ``wandb.log`` (``wandb`` is an optional dependency).

    Every numeric entry is logged as ``prefix + key``, ``step`` and ``epoch`` included
    (``foresight/step``, ``foresight/epoch``), so W&B charts can use either as the x axis
    (``wandb.define_metric("foresight/*", step_metric="foresight/epoch")``).

    Args:
        run: an active ``wandb`` run; by default the current run, or a new one started with
            ``wandb.init(**init_kwargs)`` at the first write (so the unused sinks of the ranks
            other than 0 under DDP/FSDP2 start no run).
        step_key: the record entry also passed as ``step=`` to ``run.log`` (``None``, the
            default: let wandb count, which never clashes with the run's other logging; W&B
            drops values logged with a step lower than one it has seen).
        prefix: prepended to every key (default ``"foresight/"``; ``""`` for none).
    """

    def __init__(
        self,
        run: Any = None,
        *,
        step_key: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        **init_kwargs: Any,
    ) -> None:
        if step_key is not None and step_key not in INDEX_KEYS:
            raise ValueError(
                f"WandbSink: step_key must be 'step', 'epoch' or None, got {step_key!r}"
            )
        self._wandb = require("wandb", "WandbSink")
        self._run = run
        self._init_kwargs = init_kwargs
        self.step_key = step_key
        self.prefix = _check_prefix(prefix, "WandbSink")

    @property
    def run(self) -> Any:
        """The ``wandb`` run (the current one, or one started on first use)."""
        if self._run is None:
            wandb = self._wandb
            self._run = wandb.run if wandb.run is not None else wandb.init(**self._init_kwargs)
        return self._run

    def write(self, record: Mapping[str, Any]) -> None:
        data = {
            self.prefix + k: n for k, v in record.items() if (n := _number(v)) is not None
        }
        for key in INDEX_KEYS:  # whole numbers stay integers
            if self.prefix + key in data and float(data[self.prefix + key]).is_integer():
                data[self.prefix + key] = int(data[self.prefix + key])
        if self.step_key is None:
            self.run.log(data)
        else:
            self.run.log(data, step=int(record[self.step_key]))

    def close(self) -> None:
        """The run belongs to the user; it is left open."""


def _check_prefix(prefix: Any, who: str) -> str:
    if not isinstance(prefix, str):
        raise TypeError(f"{who}: prefix must be a string such as 'foresight/', got {prefix!r}")
    return prefix


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
