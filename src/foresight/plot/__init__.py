"""Matplotlib figures of foresight's measurements (matplotlib is imported only when used).

Every function returns the :class:`matplotlib.figure.Figure` it drew, works headless (Agg), and
takes training histories as ``monitor.history``, a list of records, a ``pandas.DataFrame`` or a
dict of columns. Functions are re-exported lazily from their topic modules:

* :func:`ei_training` (:mod:`foresight.plot.ei`): the seed's figure, accuracy, train/test loss
  and EI against steps, the test-loss minimum and the phases marked;
* :func:`training_dashboard` (:mod:`foresight.plot.dashboard`): one panel per measured quantity;
* the metric-specific figures in :mod:`foresight.plot.gns` (``noise_scale_over_training``),
  :mod:`foresight.plot.ib` (``information_plane_plot``, ``mutual_information_curves``) and
  :mod:`foresight.plot.causal`, re-exported here under their own names.

Compute modules never import this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_TOPICS = ("ei", "dashboard", "gns", "ib", "causal")
_EXPORTS = {"ei_training": "ei", "training_dashboard": "dashboard"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    if name in _TOPICS:
        return importlib.import_module(f"{__name__}.{name}")
    for topic in ("gns", "ib", "causal"):  # the metric owners' figures, found on first use
        try:
            module = importlib.import_module(f"{__name__}.{topic}")
        except ImportError:
            continue
        if name in getattr(module, "__all__", ()) or (
            not name.startswith("_") and callable(getattr(module, name, None))
            and getattr(getattr(module, name), "__module__", "") == module.__name__
        ):
            return getattr(module, name)
    raise AttributeError(f"module 'foresight.plot' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_TOPICS))
