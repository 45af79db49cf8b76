"""Lazy imports of optional dependencies.

Design rules: the core (``ei``, ``gns``, ``ib``, ``causal``) needs only torch and numpy. Anything
else (matplotlib, pandas, scikit-learn, scipy, networkx, tensorboard, wandb, lightning, tqdm) is
imported inside the function that needs it, through :func:`require`, so that a missing package
fails with one clear message naming the extra to install -- never at ``import foresight``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_EXTRA = {
    "matplotlib": "plot",
    "pandas": "pandas",
    "sklearn": "data",
    "scipy": "graph",
    "networkx": "graph",
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "lightning": "lightning",
    "tqdm": "progress",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`ImportError` saying how to install it.

    >>> require("math", "arithmetic").sqrt(4.0)
    2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        top = module.split(".")[0]
        extra = _EXTRA.get(top)
        hint = f"pip install 'torch-foresight[{extra}]'" if extra else f"pip install {top}"
        raise ImportError(f"{purpose} needs the optional package {top!r}: {hint}") from exc


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without raising)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
