"""Thin adapters between :class:`foresight.Monitor` and training frameworks.

Each integration is imported only when used (its framework is an optional dependency):

* :mod:`foresight.integrations.lightning` -- :class:`ForesightCallback` for Lightning's ``Trainer``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"ForesightCallback": "lightning"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    if name == "lightning":
        return importlib.import_module(f"{__name__}.lightning")
    raise AttributeError(f"module 'foresight.integrations' has no attribute {name!r}")
