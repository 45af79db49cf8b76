"""Unbiased estimators of :math:`|G|^2`, :math:`\\mathrm{tr}(\\Sigma)` and :math:`B_\\text{simple}`.

For a batch of :math:`B` i.i.d. examples the batch gradient :math:`G_B` satisfies
:math:`\\mathbb{E}|G_B|^2 = |G|^2 + \\mathrm{tr}(\\Sigma)/B`. Two batch sizes
:math:`b < B` give two equations and hence the unbiased estimates (McCandlish et al. 2018, app. A)

.. math::

    \\widehat{|G|^2} = \\frac{B |G_B|^2 - b |G_b|^2}{B - b}, \\qquad
    \\widehat{\\mathrm{tr}\\Sigma} = \\frac{|G_b|^2 - |G_B|^2}{1/b - 1/B}, \\qquad
    B_\\text{simple} = \\widehat{\\mathrm{tr}\\Sigma} / \\widehat{|G|^2}.

Per-example gradients are the case :math:`b = 1` (with :math:`|G_b|^2` the mean per-example squared
norm), which is the usual sample-covariance estimator. The ratio is *not* unbiased: a tracker
should smooth the numerator and denominator separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from foresight._result import Result
from foresight.gns.per_example import per_parameter_sq_norms

__all__ = ["NoiseScale", "two_batch", "noise_scale", "ratio"]


def ratio(num: float, den: float) -> float:
    """``num / den`` with IEEE semantics for a zero denominator (``inf``/``nan``, no error)."""
    if den == 0:
        return math.nan if num == 0 else math.copysign(math.inf, num)
    return num / den


@dataclass
class NoiseScale(Result):
    """A gradient-noise-scale estimate.

    Attributes:
        b_simple: :math:`\\mathrm{tr}(\\Sigma) / |G|^2` (may be negative or infinite for a noisy
            single-step estimate; smooth the two parts instead of the ratio).
        trace_sigma: unbiased estimate of :math:`\\mathrm{tr}(\\Sigma)`, the per-example gradient
            variance summed over parameters.
        grad_sq_norm: unbiased estimate of :math:`|G|^2`, the squared norm of the true gradient.
        batch_size: the (big) batch size the estimate was made from.
        layers: per-layer (or per-parameter-group) estimates, dicts with keys ``name``,
            ``b_simple``, ``trace_sigma``, ``grad_sq_norm``.
    """

    b_simple: float
    trace_sigma: float
    grad_sq_norm: float
    batch_size: int
    layers: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_parts(
        cls, grad_sq_norm: float, trace_sigma: float, batch_size: int, layers=None
    ) -> NoiseScale:
        return cls(
            b_simple=ratio(trace_sigma, grad_sq_norm),
            trace_sigma=float(trace_sigma),
            grad_sq_norm=float(grad_sq_norm),
            batch_size=int(batch_size),
            layers=list(layers or []),
        )


def _unbiased(sq_small: float, sq_big: float, b_small: float, b_big: float) -> tuple[float, float]:
    g2 = (b_big * sq_big - b_small * sq_small) / (b_big - b_small)
    tr = (sq_small - sq_big) / (1.0 / b_small - 1.0 / b_big)
    return g2, tr


def _check_sizes(b_small: float, b_big: float) -> None:
    if not (0 < b_small < b_big):
        raise ValueError(
            f"two_batch needs 0 < b_small < b_big, got b_small={b_small}, b_big={b_big}"
        )


def two_batch(
    sq_small: float | Tensor, sq_big: float | Tensor, b_small: float, b_big: float
) -> NoiseScale:
    """Noise scale from the squared gradient norms at two batch sizes.

    Args:
        sq_small: :math:`|G_b|^2` of a batch of ``b_small`` examples (or the mean of several such
            squared norms -- averaging keeps it unbiased and lowers the variance).
        sq_big: :math:`|G_B|^2` of a batch of ``b_big`` examples.
        b_small: the small batch size :math:`b`.
        b_big: the big batch size :math:`B > b`.

    Raises:
        ValueError: unless ``0 < b_small < b_big``.

    >>> est = two_batch(sq_small=3.0, sq_big=1.5, b_small=1, b_big=4)
    >>> est.grad_sq_norm, est.trace_sigma, est.b_simple
    (1.0, 2.0, 2.0)
    """
    _check_sizes(b_small, b_big)
    g2, tr = _unbiased(float(sq_small), float(sq_big), float(b_small), float(b_big))
    return NoiseScale.from_parts(g2, tr, int(b_big))


def layer_name(param_name: str) -> str:
    """The layer a parameter belongs to: its name without the last component."""
    return param_name.rpartition(".")[0] or "(root)"


def noise_scale(
    model: nn.Module,
    loss_fn: Any,
    inputs: Tensor | tuple[Tensor, ...],
    targets: Any,
    *,
    loss_reduction: str = "mean",
) -> NoiseScale:
    """Unbiased :math:`|G|^2`, :math:`\\mathrm{tr}(\\Sigma)`, :math:`B_\\text{simple}` from a batch.

    With :math:`n_b = |\\nabla \\ell_b|^2` (:func:`~foresight.gns.per_example_sq_norms`) and
    :math:`G_B` the batch-mean gradient,

    .. math::

        \\widehat{\\mathrm{tr}\\Sigma} = \\frac{B}{B-1}\\Big(\\frac1B\\sum_b n_b - |G_B|^2\\Big),
        \\qquad
        \\widehat{|G|^2} = \\frac{B |G_B|^2 - \\frac1B\\sum_b n_b}{B-1},

    i.e. :func:`two_batch` with :math:`b = 1`. One forward and one backward pass (plus the exact
    fallback for layers without a rule). Per-layer values are in ``layers``.

    Raises:
        ValueError: for a batch of one example (the variance is not identifiable).

    >>> import torch
    >>> torch.manual_seed(0) is not None
    True
    >>> model = torch.nn.Linear(4, 1)
    >>> x, y = torch.randn(64, 4), torch.randn(64, 1)
    >>> est = noise_scale(model, torch.nn.functional.mse_loss, x, y)
    >>> est.batch_size, est.trace_sigma > 0
    (64, True)
    """
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    batch = int(args[0].shape[0])
    if batch < 2:
        raise ValueError(
            f"noise_scale needs a batch of at least 2 examples (got {batch}): the gradient "
            "variance cannot be estimated from one example"
        )
    norms, grads = per_parameter_sq_norms(
        model, loss_fn, inputs, targets, loss_reduction=loss_reduction, batch_gradient=True
    )
    assert grads is not None
    per_layer: dict[str, list[float]] = {}
    for name in norms:
        small = float(norms[name].double().mean())
        big = float(grads[name].double().square().sum())
        acc = per_layer.setdefault(layer_name(name), [0.0, 0.0])
        acc[0] += small
        acc[1] += big
    layers, g_total, tr_total = [], 0.0, 0.0
    for lname, (small, big) in per_layer.items():
        g2, tr = _unbiased(small, big, 1.0, float(batch))
        g_total += g2
        tr_total += tr
        layers.append(dict(name=lname, b_simple=ratio(tr, g2), trace_sigma=tr, grad_sq_norm=g2))
    return NoiseScale.from_parts(g_total, tr_total, batch, layers)


def _sq(t: Tensor) -> float:
    return float(torch.as_tensor(t).double().square().sum())
