"""Base class for result dataclasses: ``to_dict()`` and an optional ``to_dataframe()``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any


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
    if isinstance(value, float) and not math.isfinite(value):
        return value
    return value


class Result:
    """Mixin for the small result dataclasses every metric returns."""

    def to_dict(self) -> dict[str, Any]:
        """A plain ``dict`` (JSON-serialisable: tensors become lists, nested results dicts)."""
        return _plain(self)  # type: ignore[return-value]

    def to_dataframe(self):
        """A ``pandas.DataFrame``: one row per ``self.layers`` entry when present, else one row."""
        from foresight._optional import require

        pd = require("pandas", "to_dataframe()")
        data = self.to_dict()
        rows = data.get("layers")
        if isinstance(rows, list):
            return pd.DataFrame(rows)
        return pd.DataFrame([data])
