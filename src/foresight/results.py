"""One result schema: every measurement is a dataclass with ``to_dict()`` and ``to_records()``.

Every function of :mod:`foresight.ei`, :mod:`foresight.gns`, :mod:`foresight.ib` and
:mod:`foresight.causal` returns a :class:`Result`: a public dataclass with

* ``to_dict()`` -- the whole result as plain Python (JSON-serialisable: tensors become lists,
  nested results dicts);
* ``to_records()`` -- its measured values as **tidy records**, one :class:`Record` per value:
  ``(metric, layer, field, value)``; ``layer`` is ``None`` for a value of the whole model;
* ``to_dataframe()`` -- a ``pandas.DataFrame`` (one row per layer when the result has rows).

A result with one row per layer (:class:`Rows`: the EI report, the noise scale, the information
plane, the causal report) looks its rows up by name and iterates over them in the same way::

    result.row("fc1")      # the row of layer "fc1" (KeyError naming the layers if absent)
    result["fc1"]          # the same
    "fc1" in result        # whether there is one
    for row in result:     # every row, in order (result.layers)

The fields a result records are written down once, in :data:`SCHEMA`; record fields that are not
a row attribute's name are defined here too (:data:`CAUSAL_RECORD_KEYS`,
:data:`CAUSAL_CONVERGED_KEYS`, :data:`I_XT_LIMITED`). A record's flat key -- the name it has in
``monitor.history``, a CSV column, a TensorBoard tag -- is :attr:`Record.key`: the field for a
whole-model value (``"ei"``), ``"<field>/<layer>"`` for a layer's (``"i_xt/fc1"``);
:meth:`Record.from_key` reads it back. :func:`flatten` turns records into one flat record,
:func:`tidy` turns any history -- records, ``monitor.history``, a tracker, a result, a list of
flat dicts, a ``pandas.DataFrame``, a dict of columns -- into records: the Monitor, its sinks and
the figures all go through these two.

>>> from foresight.results import Record, flatten, tidy
>>> rows = [Record("ib", "fc1", "i_xt", 2.5), Record("ib", "fc1", "i_ty", 0.75)]
>>> flatten(rows)
{'i_xt/fc1': 2.5, 'i_ty/fc1': 0.75}
>>> [tuple(r) for r in tidy([{"epoch": 3, "i_xt/fc1": 2.5}])]
[('ib', 'fc1', 'i_xt', 2.5, None, 3)]
"""

from __future__ import annotations

import dataclasses
import math
import types
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

__all__ = [
    "Result",
    "Rows",
    "Row",
    "Record",
    "Fields",
    "SCHEMA",
    "CAUSAL_RECORD_KEYS",
    "CAUSAL_CONVERGED_KEYS",
    "I_XT_LIMITED",
    "INDEX_KEYS",
    "TRACKED",
    "DictAccess",
    "flatten",
    "unflatten",
    "tidy",
    "wide",
    "metric_of",
]

#: Keys of a flat record that say *when* it was measured rather than *what* was measured.
INDEX_KEYS = ("step", "epoch")

#: Causal measure (an attribute of :class:`~foresight.causal.CausalRow`) -> record field:
#: ``causal_ei/<layer>``, ``ei_parts/<layer>``, ``sensitivity/<layer>``,
#: ``causal_degeneracy/<layer>`` (bits). Also :data:`foresight.causal.RECORD_KEYS`.
CAUSAL_RECORD_KEYS: Mapping[str, str] = types.MappingProxyType({
    "ei": "causal_ei",
    "ei_parts": "ei_parts",
    "sensitivity": "sensitivity",
    "degeneracy": "causal_degeneracy",
})

#: Causal measure -> record field of its convergence flag (a ``bool``: false when the sampled
#: measure is limited by the sample count). Degeneracy has no flag of its own: it is converged when
#: EI_parts and sensitivity are. Also :data:`foresight.causal.CONVERGED_KEYS`.
CAUSAL_CONVERGED_KEYS: Mapping[str, str] = types.MappingProxyType({
    "ei": "causal_ei_converged",
    "ei_parts": "ei_parts_converged",
    "sensitivity": "sensitivity_converged",
})

#: Record field of the information plane's flag: true when a layer's I(X;T) is within 1 bit of
#: its ceiling log2 N (:attr:`foresight.ib.LayerInformation.limited_by` is ``"samples"``).
I_XT_LIMITED = "i_xt_limited"


class Fields(NamedTuple):
    """The record fields of one metric's results: of the whole model and of each layer's row."""

    model: tuple[str, ...] = ()
    layer: tuple[str, ...] = ()


_GNS = ("b_simple", "trace_sigma", "grad_sq_norm", "b_simple_se", "b_simple_lower",
        "grad_sq_norm_se", "trace_sigma_se", "resolved")
_CAUSAL = (*CAUSAL_RECORD_KEYS.values(), *CAUSAL_CONVERGED_KEYS.values())

#: Metric -> the fields its results record, in order: what each measures, with its standard
#: errors and flags (settings -- bins, ranges, sample counts, methods -- stay in ``to_dict()``).
#: A field is the attribute of that name unless this module defines it (the causal keys, the
#: information plane's flag).
SCHEMA: Mapping[str, Fields] = types.MappingProxyType({
    "ei": Fields(model=("ei", "determinism", "degeneracy"),
                 layer=("ei", "determinism", "degeneracy", "effectiveness")),
    "gns": Fields(model=_GNS, layer=_GNS),
    "ib": Fields(model=("h_y",), layer=("i_xt", "i_ty", "h_t", "n_states", I_XT_LIMITED)),
    "causal": Fields(model=_CAUSAL, layer=_CAUSAL),
    "b_noise": Fields(model=("b_noise", "tr_h_sigma", "g_h_g")),
    "graph_ei": Fields(model=("ei", "mean_out_entropy", "avg_out_entropy", "determinism_hoel",
                              "degeneracy_hoel", "effectiveness", "n_nodes",
                              "n_nodes_with_out_edges", "n_edges")),
    "critical": Fields(model=("b_crit", "s_min", "e_min", "b_simple", "b_simple_lower",
                              "b_simple_batch", "b_noise")),
    "critical_branched": Fields(model=("loss", "reference_loss", "b_crit", "b_simple",
                                       "b_simple_se", "b_simple_lower")),
})


#: The metrics a :class:`~foresight.Monitor` records (whose fields :func:`metric_of` knows).
TRACKED = ("ei", "gns", "ib", "causal")


def metric_of(field: str) -> str:
    """The metric of the Monitor's (:data:`TRACKED`) whose results record ``field``, or ``""``
    (a loss, a user's metric, a field only a one-off result has).

    >>> metric_of("i_xt"), metric_of("causal_ei"), metric_of("train_loss")
    ('ib', 'causal', '')
    """
    for metric in TRACKED:
        if field in SCHEMA[metric].model or field in SCHEMA[metric].layer:
            return metric
    return ""


# --------------------------------------------------------------------------------------- records


class Record(NamedTuple):
    """One measured value, tidy: which metric, which layer (``None``: the whole model), which
    field, the value -- and, in a history, when (``step``, ``epoch``).

    >>> r = Record("ei", "fc1", "ei", 1.5)
    >>> r.key, Record.from_key(r.key, r.value, metric="ei") == r
    ('ei/fc1', True)
    """

    metric: str
    layer: str | None
    field: str
    value: Any
    step: int | None = None
    epoch: int | None = None

    @property
    def key(self) -> str:
        """The flat key: ``field`` for the whole model, ``"<field>/<layer>"`` for a layer."""
        return self.field if self.layer is None else f"{self.field}/{self.layer}"

    @classmethod
    def from_key(
        cls,
        key: str,
        value: Any,
        *,
        metric: str | None = None,
        step: int | None = None,
        epoch: int | None = None,
    ) -> Record:
        """The record of a flat ``key``: the field is everything before the first ``/``, the
        layer everything after (``None`` without a ``/``); ``metric`` defaults to
        :func:`metric_of` the field."""
        field, slash, layer = key.partition("/")
        return cls(metric_of(field) if metric is None else metric, layer if slash else None,
                   field, value, step, epoch)

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain ``dict``."""
        return self._asdict()


def flatten(records: Iterable[Record]) -> dict[str, Any]:
    """One flat record ``{key: value}`` of ``records`` (their :attr:`Record.key`), in order.

    >>> flatten([Record("ei", None, "ei", 2.0), Record("ei", "0", "ei", 1.0)])
    {'ei': 2.0, 'ei/0': 1.0}
    """
    return {r.key: r.value for r in records}


def unflatten(record: Mapping[str, Any]) -> list[Record]:
    """The records of one flat record (the inverse of :func:`flatten`): every numeric entry
    (``bool`` included) but ``step`` and ``epoch``, which become the records' ``step`` and
    ``epoch``; strings and ``None`` are left out.

    >>> [tuple(r) for r in unflatten({"step": 5, "epoch": 1, "ei": 1.5, "i_xt/fc1": 2.0})]
    [('ei', None, 'ei', 1.5, 5, 1), ('ib', 'fc1', 'i_xt', 2.0, 5, 1)]
    """
    step, epoch = _index(record.get("step")), _index(record.get("epoch"))
    out = []
    for key, value in record.items():
        value = _plain_value(value)
        if key not in INDEX_KEYS and _is_value(value):
            out.append(Record.from_key(str(key), value, step=step, epoch=epoch))
    return out


def _index(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f):
        return None
    return int(f) if f.is_integer() else f  # type: ignore[return-value]


def _plain_value(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            return value
    return value


def _is_value(value: Any) -> bool:
    return isinstance(value, (bool, int, float))


def _mappings(history: Any) -> list[Mapping[str, Any]]:
    if hasattr(history, "to_dict") and hasattr(history, "columns"):  # pandas.DataFrame
        return history.to_dict("records")
    if isinstance(history, Mapping):
        if not all(isinstance(v, Sequence) and not isinstance(v, str) for v in history.values()):
            return [history]  # one flat record (what monitor.step() returns)
        keys = list(history)  # a dict of columns
        n = max((len(v) for v in history.values()), default=0)
        return [{k: history[k][i] for k in keys if i < len(history[k])} for i in range(n)]
    if not isinstance(history, Iterable) or isinstance(history, (str, bytes)):
        raise TypeError(
            "expected records, a result, a tracker, monitor.history, a list of dicts, a "
            f"pandas.DataFrame or a dict of columns, got {type(history).__name__}"
        )
    out = []
    for item in history:
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            item = _plain(item)
        if not isinstance(item, Mapping):
            raise TypeError(f"a history entry must be a record or a dict, got {item!r}")
        out.append(item)
    return out


def tidy(history: Any) -> list[Record]:
    """Records of any history, with ``step``/``epoch`` where the history has them.

    Accepted: a :class:`Result` or a tracker or ``monitor.history`` (anything with
    ``to_records()``), a list of :class:`Record`, and lists of dicts, ``pandas.DataFrame`` and
    dicts of columns holding flat records (``{"epoch": 3, "i_xt/fc1": 2.5, ...}``: each key is
    read by :meth:`Record.from_key`), tidy records (``metric``, ``layer``, ``field``, ``value``
    columns) or per-layer rows (a ``layer`` column beside value columns: ``{"epoch": 3,
    "layer": "fc1", "i_xt": 2.5}``), or one flat record (a ``dict`` of scalars). Non-numeric
    values (strings, ``None``) are left out; NaN is kept.

    >>> [r.key for r in tidy([{"step": 0, "epoch": 0, "ei": 1.0, "loss": 0.5}])]
    ['ei', 'loss']
    """
    if hasattr(history, "to_records") and callable(history.to_records) and not (
        hasattr(history, "columns")  # pandas.DataFrame has a to_records of its own
    ):
        return list(history.to_records())
    if isinstance(history, Sequence) and history and all(isinstance(r, Record) for r in history):
        return list(history)
    out: list[Record] = []
    for row in _mappings(history):
        step, epoch = _index(row.get("step")), _index(row.get("epoch"))
        if "field" in row and "value" in row:  # a tidy record as a dict
            value = _plain_value(row["value"])
            if _is_value(value):
                layer = row.get("layer")
                layer = None if layer is None or (isinstance(layer, float) and
                                                  math.isnan(layer)) else str(layer)
                metric = row.get("metric")
                out.append(Record(metric_of(row["field"]) if not isinstance(metric, str)
                                  else metric, layer, str(row["field"]), value, step, epoch))
            continue
        layer = row.get("layer")
        if not isinstance(layer, str):  # a flat record
            out += unflatten(row)
            continue
        for key, value in row.items():  # a per-layer row
            value = _plain_value(value)
            if key not in INDEX_KEYS and key != "layer" and _is_value(value):
                out.append(Record(metric_of(key), layer, key, value, step, epoch))
    return out


def wide(history: Any) -> list[dict[str, Any]]:
    """Flat records (one ``dict`` per ``step``/``epoch``) of any history :func:`tidy` accepts:
    the inverse of :func:`tidy` for ``monitor.history``.

    >>> wide([Record("ib", "1", "i_xt", 2.0, epoch=0), Record("ib", "1", "i_ty", 0.5, epoch=0)])
    [{'epoch': 0, 'i_xt/1': 2.0, 'i_ty/1': 0.5}]
    """
    if isinstance(history, Sequence) and history and all(
        isinstance(r, Mapping) and not ("field" in r and "value" in r) and "layer" not in r
        for r in history
    ):
        return [dict(r) for r in history]  # already flat
    rows: dict[tuple[Any, Any], dict[str, Any]] = {}
    for r in tidy(history):
        index = (r.step, r.epoch)
        row = rows.get(index)
        if row is None:
            row = rows[index] = {}
            if r.step is not None:
                row["step"] = r.step
            if r.epoch is not None:
                row["epoch"] = r.epoch
        row[r.key] = r.value
    return list(rows.values())


# --------------------------------------------------------------------------------------- results


def _plain(value: Any) -> Any:
    """Convert tensors, numpy scalars, nested results and containers to plain Python objects."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # torch.Tensor, numpy array/scalar
        return value.tolist()
    return value


class Result:
    """Base class of every result dataclass: ``to_dict()``, ``to_records()``,
    ``to_dataframe()``.

    A subclass names its ``metric`` (a key of :data:`SCHEMA`, whose ``model`` fields it
    records); a field that is not an attribute of that name comes from :meth:`_value`.
    """

    #: The metric that made this result (its records' ``metric``).
    metric: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """A plain ``dict`` (JSON-serialisable: tensors become lists, nested results dicts)."""
        return _plain(self)  # type: ignore[no-any-return]

    def _fields(self) -> tuple[str, ...]:
        return SCHEMA[self.metric].model if self.metric in SCHEMA else ()

    def _value(self, field: str) -> Any:
        """The value of a record field (by default the attribute of that name)."""
        return getattr(self, field)

    def _own_records(self, layer: str | None) -> list[Record]:
        out = []
        for f in self._fields():
            value = _plain_value(self._value(f))
            if _is_value(value):
                out.append(Record(self.metric, layer, f, value))
        return out

    def to_records(self) -> list[Record]:
        """The measured values as tidy :class:`Record` rows (fields: :data:`SCHEMA`)."""
        return self._own_records(None)

    def to_dataframe(self):
        """A ``pandas.DataFrame``: one row per ``self.layers`` entry when present, else one row."""
        from foresight._optional import require

        pd = require("pandas", "to_dataframe()")
        data = self.to_dict()
        rows = data.get("layers")
        if isinstance(rows, list):
            return pd.DataFrame(rows)
        return pd.DataFrame([data])


class Row(Result):
    """A result's row for one layer (its ``name``); its records carry that layer."""

    name: str

    def _fields(self) -> tuple[str, ...]:
        return SCHEMA[self.metric].layer if self.metric in SCHEMA else ()

    def to_records(self) -> list[Record]:
        """This layer's values as tidy records (``layer`` is the row's ``name``, as a str)."""
        return self._own_records(str(self.name))


class Rows(Result):
    """A result with one :class:`Row` per layer in ``layers``: lookup by name, iteration.

    >>> from foresight.ib import InformationPlane, LayerInformation
    >>> plane = InformationPlane([LayerInformation("1", 3.0, 0.9, 3.0, 8, 4, "binning")],
    ...                          n_samples=64, h_y=1.0, method="binning")
    >>> [row.name for row in plane], plane.row("1").i_xt, plane["1"] is plane.row("1")
    (['1'], 3.0, True)
    >>> "1" in plane, "output" in plane
    (True, False)
    """

    layers: list[Any]

    def row(self, name: str) -> Any:
        """The row of the layer called ``name``."""
        for r in self.layers:
            if r.name == name:
                return r
        if isinstance(name, int):
            raise TypeError(
                f"rows are looked up by layer name (a str), got {name!r}: result.row('0'), or "
                "result.layers[i] by position"
            )
        raise KeyError(f"no layer {name!r}; layers: {[r.name for r in self.layers]}")

    def __getitem__(self, name: str) -> Any:
        return self.row(name)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.layers)

    def __contains__(self, name: object) -> bool:
        return any(r.name == name for r in self.layers)

    def to_records(self) -> list[Record]:
        """The whole-model values, then every row's, as tidy records."""
        out = self._own_records(None)
        for r in self.layers:
            out += r.to_records()
        return out


class DictAccess:
    """Mixin for rows that were ``dict`` objects in foresight 0.2: ``row["b_simple"]``, ``row.get``,
    ``row.keys()``, ``row.items()``, ``"b_simple" in row`` and ``dict(row)`` keep working for one
    release, with a :class:`DeprecationWarning` (use the attributes: ``row.b_simple``). A row is
    not iterable (so ``pandas.DataFrame(rows)`` reads it as the dataclass it is)."""

    def _deprecated(self, how: str) -> None:
        warnings.warn(
            f"{type(self).__name__} rows are dataclasses (they were dicts in foresight 0.2): {how} "
            "on a row is deprecated and will be removed; use its attributes (row.b_simple) or "
            "row.to_dict()",
            DeprecationWarning,
            stacklevel=3,
        )

    def _keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]

    def __getitem__(self, key: str) -> Any:
        self._deprecated(f"row[{key!r}]")
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """Deprecated: ``getattr(row, key, default)``."""
        self._deprecated("row.get()")
        return getattr(self, key) if key in self._keys() else default

    def keys(self) -> list[str]:
        """Deprecated: the field names (``row.to_dict().keys()``)."""
        self._deprecated("row.keys()")
        return self._keys()

    def values(self) -> list[Any]:
        """Deprecated: the field values."""
        self._deprecated("row.values()")
        return [getattr(self, k) for k in self._keys()]

    def items(self) -> list[tuple[str, Any]]:
        """Deprecated: ``(field, value)`` pairs (``row.to_dict().items()``)."""
        self._deprecated("row.items()")
        return [(k, getattr(self, k)) for k in self._keys()]

    def __contains__(self, key: object) -> bool:
        self._deprecated("'key' in row")
        return key in self._keys()
