"""Flattening the arguments of an intercepted call, the same way at discovery and at run time.

Every intercepted call ``func(*args, **kwargs)`` is seen as one flat list of leaves: positional
arguments first (lists and tuples expanded, recursively), then keyword arguments in their order.
Rules and plans refer to arguments by their position in this list.

>>> import torch
>>> a, b = torch.zeros(1), torch.ones(1)
>>> [type(x).__name__ for x in flatten((a, [b, 3]), {"alpha": 2})]
['Tensor', 'Tensor', 'int', 'int']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["flatten", "structure", "Pos", "outputs", "func_name", "is_inplace"]


def flatten(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> list[Any]:
    """The leaves of ``args`` then ``kwargs`` (see the module documentation)."""
    out: list[Any] = []
    _walk(args, out)
    if kwargs:
        for v in kwargs.values():
            _walk(v, out)
    return out


class Pos(int):
    """Marks a tensor argument in :func:`structure`: its position in the flat list."""

    def __repr__(self) -> str:
        return f"Pos({int(self)})"


def structure(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> tuple[tuple, dict]:
    """``(args, kwargs)`` with every tensor replaced by its :class:`Pos` in :func:`flatten`.

    >>> import torch
    >>> structure((torch.zeros(1), [torch.ones(1), 3]), {"alpha": 2})
    ((Pos(0), [Pos(1), 3]), {'alpha': 2})
    """
    counter = [0]

    def rebuild(obj: Any) -> Any:
        if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
            items = [rebuild(o) for o in obj]
            return items if isinstance(obj, list) else tuple(items)
        i = counter[0]
        counter[0] += 1
        return Pos(i) if isinstance(obj, Tensor) else obj

    new_args = tuple(rebuild(a) for a in args)
    new_kwargs = {k: rebuild(v) for k, v in (kwargs or {}).items()}
    return new_args, new_kwargs


def _walk(obj: Any, out: list[Any]) -> None:
    if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        for o in obj:
            _walk(o, out)
    else:
        out.append(obj)


def outputs(result: Any) -> list[Tensor]:
    """The tensors a call returned (a tensor, or the tensors of a tuple/list), in order."""
    if isinstance(result, Tensor):
        return [result]
    if isinstance(result, (list, tuple)):
        return [r for r in result if isinstance(r, Tensor)]
    return []


def func_name(func: Callable[..., Any]) -> str:
    """``"linear"``, ``"mul"``, ``"addmm"``: the short name of a torch function or method."""
    name = getattr(func, "__name__", None) or type(func).__name__
    return str(name)


def is_inplace(func: Callable[..., Any]) -> bool:
    """Whether the call writes into its first argument (``add_``, ``__iadd__``, ...)."""
    name = func_name(func)
    return (name.endswith("_") and not name.endswith("__")) or name.startswith("__i")
