"""Checking and reshaping the sample tensors every estimator receives."""

from __future__ import annotations

import math

import torch


def as_samples(t: torch.Tensor, name: str) -> torch.Tensor:
    """``t`` as a 2-D ``[N, D]`` tensor (trailing dimensions flattened per sample).

    A 1-D tensor becomes one column. Raises :class:`TypeError` for non-tensors and
    :class:`ValueError` for zero samples, complex values, or NaN/inf in a float tensor.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() == 0:
        raise ValueError(f"{name} must have a sample dimension; got a 0-d tensor")
    if t.shape[0] == 0:
        raise ValueError(f"{name} has no samples (first dimension is 0)")
    if t.is_complex():
        raise ValueError(f"{name} is complex; pass real-valued samples")
    t = t.detach().reshape(t.shape[0], -1)
    if t.shape[1] == 0:
        raise ValueError(f"{name} has no features per sample (shape {tuple(t.shape)})")
    # a finite sum proves every entry finite (one cheap reduction); otherwise check each entry
    if (
        t.is_floating_point()
        and not math.isfinite(float(t.sum()))
        and not bool(torch.isfinite(t).all())
    ):
        raise ValueError(f"{name} contains NaN or inf; remove or replace those samples first")
    return t


def is_symbolic(t: torch.Tensor) -> bool:
    """Integer and bool tensors are symbols; floating-point tensors are continuous."""
    return not t.is_floating_point()


def same_length(x: torch.Tensor, y: torch.Tensor, xname: str = "x", yname: str = "y") -> None:
    """Raise :class:`ValueError` unless ``x`` and ``y`` have the same number of samples."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{xname} and {yname} must have the same number of samples (first dimension); "
            f"got {x.shape[0]} and {y.shape[0]}"
        )


def positive_int(value: object, name: str) -> int:
    """``value`` as a positive ``int`` or a :class:`ValueError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def positive_float(value: object, name: str) -> float:
    """``value`` as a finite positive ``float`` or a :class:`ValueError` naming ``name``."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not (v > 0 and v < float("inf")):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def chunk_rows(n_rows: int, n_cols: int, chunk_size: int | None, budget: int = 1 << 21) -> int:
    """Rows per chunk so that a ``[rows, n_cols]`` block holds about ``budget`` elements."""
    if chunk_size is not None:
        return positive_int(chunk_size, "chunk_size")
    return max(1, min(n_rows, budget // max(1, n_cols)))
