"""Turn the ways a training history can be given into columns of floats, for the plots.

Records of any shape go through :mod:`foresight.results` (:func:`~foresight.results.wide`):
results, trackers, ``monitor.history``, tidy records, flat records, frames and dicts of columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from foresight.results import Record, wide

Columns = dict[str, list[float]]


def _flat(history: Any) -> Any:
    """``history`` as flat records when it is not already flat records, a frame or columns."""
    if hasattr(history, "to_dict") and hasattr(history, "columns"):  # pandas.DataFrame
        cols = set(map(str, history.columns))
        if {"field", "value"} <= cols or "layer" in cols:
            return wide(history.to_dict("records"))
        return history
    if hasattr(history, "to_records") and callable(history.to_records):
        return wide(history)  # a result, a tracker, a History
    if isinstance(history, Sequence) and not isinstance(history, (str, bytes)) and any(
        isinstance(r, Record) or (isinstance(r, Mapping) and (
            ("field" in r and "value" in r) or isinstance(r.get("layer"), str)))
        for r in history
    ):
        return wide(history)
    return history


def columns(history: Any) -> Columns:
    """Columns ``{key: [values]}`` from records, a ``pandas.DataFrame`` or a dict of sequences.

    Missing entries become ``nan``; non-numeric entries are dropped.

    >>> columns([{"epoch": 0, "ei": 1.0}, {"epoch": 1, "loss": 0.5}])
    {'epoch': [0.0, 1.0], 'ei': [1.0, nan], 'loss': [nan, 0.5]}
    """
    history = _flat(history)
    if hasattr(history, "to_dict") and hasattr(history, "columns"):  # pandas.DataFrame
        history = history.to_dict("records")
    if isinstance(history, Mapping):
        return {str(k): [_float(v) for v in vals] for k, vals in history.items()}
    if not isinstance(history, Sequence):
        raise TypeError(
            "history must be a list of records (e.g. monitor.history), a pandas.DataFrame or a "
            f"dict of columns, got {type(history).__name__}"
        )
    keys: dict[str, None] = {}
    for record in history:
        for k, v in record.items():
            if _is_number(v):
                keys.setdefault(k, None)
    return {k: [_float(r.get(k)) for r in history] for k in keys}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def series(cols: Columns, x: str, y: str) -> tuple[list[float], list[float]]:
    """The finite (x, y) pairs of two columns."""
    pairs = [
        (a, b)
        for a, b in zip(cols[x], cols[y])
        if math.isfinite(a) and math.isfinite(b)
    ]
    return [a for a, _ in pairs], [b for _, b in pairs]
