"""torch-foresight: exact, fast measurements of what happens inside a neural network as it trains.

Submodules are imported lazily, so ``import foresight`` costs almost nothing:

* :mod:`foresight.ei` -- effective information of the weight graph (the 2020 package's API);
* :mod:`foresight.gns` -- the gradient noise scale (McCandlish et al. 2018);
* :mod:`foresight.ib` -- mutual-information estimators and the information plane;
* :mod:`foresight.causal` -- perturbational (causal) EI of layers;
* :class:`foresight.Monitor` -- runs any of them on a schedule during training;
* :mod:`foresight.plot` -- matplotlib figures (imported only when used).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0.dev0"

_SUBMODULES = {"ei", "gns", "ib", "causal", "plot", "monitor", "data", "integrations", "cli"}
_LAZY_ATTRS = {"Monitor": "monitor"}

__all__ = ["__version__", *sorted(_SUBMODULES), *sorted(_LAZY_ATTRS)]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_ATTRS:
        module = importlib.import_module(f"{__name__}.{_LAZY_ATTRS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'foresight' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES | set(_LAZY_ATTRS))
