r"""``mutual_information(x, y, method=...)``: one entry point for every estimator, in bits.

Both arguments are sample tensors with the same first dimension ``N``; any trailing shape is
flattened per sample. Integer and bool tensors are *symbols* (each distinct row is one symbol);
floating-point tensors are *continuous*.

============  ==========================  =====================================================
method        sides                       options
============  ==========================  =====================================================
"discrete"    both symbolic               --
"binning"     any (float sides binned)    ``bins=30`` | ``bins``, ``range=(lo, hi)`` |
                                          ``bin_size``
"kde"         one symbolic, one float     ``noise_var=0.1``, ``bound="upper"|"lower"``,
                                          ``chunk_size``
"ksg"         both float                  ``k=3``, ``chunk_size``, ``algorithm="auto"``,
                                          ``progress``
============  ==========================  =====================================================

A plug-in estimate (``"discrete"``, ``"binning"``) from ``N`` samples cannot exceed
:math:`\log_2 N`; one within 1 bit of it says more about ``N`` than about the variables (nearly
every sample is its own state) and comes with a ``RuntimeWarning``.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable

import torch

from foresight.ib._samples import (
    as_samples,
    is_symbolic,
    positive_float,
    positive_int,
    same_length,
)
from foresight.ib.binning import bin_indices, check_range
from foresight.ib.discrete import code_entropy, code_mi, row_code, row_labels, symbols_of
from foresight.ib.kde import kde_mi_bits
from foresight.ib.ksg import ksg_mi_bits


def code_for(
    t: torch.Tensor,
    bins: int | None = None,
    bin_size: float | None = None,
    range: tuple[float, float] | None = None,  # noqa: A002
) -> tuple[torch.Tensor, int]:
    """Row code ``(code, card)`` of a checked ``[N, D]`` tensor: integers as they are, floats
    binned (see :func:`foresight.ib.discrete.row_code`)."""
    if is_symbolic(t):
        return row_code(t)
    idx = bin_indices(t, bins=bins, bin_size=bin_size, range=range)
    if bin_size is None:  # indices lie in 0 .. bins-1: no need for the column ranges
        return row_code(idx, [30 if bins is None else int(bins)] * idx.shape[1])
    return row_code(idx)


def _at_ceiling(value: float, n: int) -> float:
    """Warn when a plug-in estimate is within 1 bit of its ceiling log2 N; return it."""
    if n > 1 and value > math.log2(n) - 1.0:
        warnings.warn(
            f"foresight.ib: the plug-in estimate {value:.3g} bits is within 1 bit of log2(N) = "
            f"{math.log2(n):.3g}, the most {n} samples can show (nearly every sample is its own "
            "state): it is limited by the sample count. Use coarser bins or more samples",
            RuntimeWarning,
            stacklevel=4,
        )
    return value


def _discrete(x: torch.Tensor, y: torch.Tensor) -> float:
    value = code_mi(*row_code(symbols_of(x, "x")), *row_code(symbols_of(y, "y")))
    return _at_ceiling(value, x.shape[0])


def _binning(
    x: torch.Tensor,
    y: torch.Tensor,
    bins: int | None = None,
    bin_size: float | None = None,
    range: tuple[float, float] | None = None,  # noqa: A002
) -> float:
    value = code_mi(*code_for(x, bins, bin_size, range), *code_for(y, bins, bin_size, range))
    return _at_ceiling(value, x.shape[0])


def _kde(
    x: torch.Tensor,
    y: torch.Tensor,
    noise_var: float = 0.1,
    bound: str = "upper",
    chunk_size: int | None = None,
) -> float:
    if is_symbolic(x) == is_symbolic(y):
        kind = "symbolic" if is_symbolic(x) else "float"
        raise ValueError(
            "method='kde' needs one symbolic (integer/bool) and one continuous (float) side; "
            f"x and y are both {kind}"
        )
    sym, cont = (x, y) if is_symbolic(x) else (y, x)
    labels, k = row_labels(sym.to(torch.int64))
    return kde_mi_bits(cont, labels, k, noise_var, bound, chunk_size)[0]


def _ksg(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int = 3,
    chunk_size: int | None = None,
    algorithm: str = "auto",
    progress: bool | None = None,
) -> float:
    for name, t in (("x", x), ("y", y)):
        if is_symbolic(t):
            raise ValueError(
                f"method='ksg' needs continuous (float) samples; {name} is {t.dtype}. "
                "Use method='discrete' or 'kde' for symbols"
            )
    return ksg_mi_bits(x, y, positive_int(k, "k"), chunk_size, algorithm, progress)


ESTIMATORS: dict[str, Callable[..., float]] = {
    "discrete": _discrete,
    "binning": _binning,
    "kde": _kde,
    "ksg": _ksg,
}


def check_options(method: str, options: dict) -> None:
    """Raise :class:`ValueError` for an unknown method or an option ``method`` does not take."""
    if method not in ESTIMATORS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(ESTIMATORS)}")
    allowed = list(inspect.signature(ESTIMATORS[method]).parameters)[2:]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"method={method!r} does not take option(s) {unknown}; "
            f"its options are {allowed or 'none'}"
        )
    check_values(options)


def check_values(options: dict) -> None:
    """Raise :class:`ValueError` for an option value no estimator can use (before any work):
    a ``range`` with an infinite or NaN end, non-positive or non-finite ``bins``, ``bin_size``,
    ``noise_var``, ``k`` or ``chunk_size``, an unknown ``bound``."""
    if options.get("range") is not None:
        check_range(options["range"])
    for name in ("bins", "k", "chunk_size"):
        if options.get(name) is not None:
            positive_int(options[name], name)
    for name in ("bin_size", "noise_var"):
        if options.get(name) is not None:
            positive_float(options[name], name)
    if "bound" in options and options["bound"] not in ("upper", "lower"):
        raise ValueError(f"bound must be 'upper' or 'lower', got {options['bound']!r}")
    if options.get("bin_size") is not None and (
        options.get("bins") is not None or options.get("range") is not None
    ):
        raise ValueError("pass either bin_size= or bins=/range=, not both")


def mutual_information(
    x: torch.Tensor, y: torch.Tensor, method: str = "binning", **options: object
) -> float:
    r"""Estimate the mutual information :math:`I(X;Y)` in bits from paired samples.

    Args:
        x: ``[N, ...]`` samples of X (integer/bool: symbols; float: continuous).
        y: ``[N, ...]`` samples of Y, paired with ``x`` row by row.
        method: ``"discrete"`` (plug-in on symbols), ``"binning"`` (float sides discretised, then
            plug-in), ``"kde"`` (pairwise Gaussian-mixture bounds, one side symbolic) or
            ``"ksg"`` (Kraskov et al. algorithm 1, both sides continuous).
        **options: the method's options (see the module table): ``bins``, ``range``,
            ``bin_size`` for binning; ``noise_var``, ``bound``, ``chunk_size`` for KDE;
            ``k``, ``chunk_size``, ``algorithm`` (``"auto"``, ``"tree"``: scipy's KD-tree on
            CPU, ``"brute"``: chunked torch, any device), ``progress`` for KSG.

    Returns:
        The estimate in bits, as a Python ``float``.

    Raises:
        ValueError: unknown method or option, an option value that cannot be used (``range``
            with an infinite or NaN end -- which would put every value into one bin and give 0
            bits --, non-positive ``bins``/``bin_size``/``noise_var``/``k``), different numbers of
            samples, NaN/inf values, or sides of the wrong kind for the method.

    The plug-in estimate is :math:`\hat H(X) + \hat H(Y) - \hat H(X, Y)`:

    >>> x = torch.arange(16)
    >>> mutual_information(x, x % 4, method="discrete")
    2.0
    >>> t = torch.tensor([[-0.9], [-0.5], [0.4], [0.8]])
    >>> mutual_information(torch.arange(4), t, bins=2, range=(-1.0, 1.0))
    1.0
    """
    check_options(method, options)
    xs, ys = as_samples(x, "x"), as_samples(y, "y")
    same_length(xs, ys)
    return ESTIMATORS[method](xs, ys, **options)


def entropy(x: torch.Tensor, method: str = "binning", **options: object) -> float:
    """Plug-in entropy in bits of symbols (``"discrete"``) or of binned floats (``"binning"``).

    >>> entropy(torch.tensor([[0.1], [0.2], [0.9], [1.0]]), bins=2)
    1.0
    """
    if method not in ("discrete", "binning"):
        raise ValueError(f"entropy supports method='discrete' or 'binning', got {method!r}")
    check_options(method, options)
    xs = as_samples(x, "x")
    if method == "discrete":
        xs = symbols_of(xs, "x")
    return code_entropy(*code_for(xs, **options))  # type: ignore[arg-type]
