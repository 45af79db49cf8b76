"""The Hessian-aware noise scale :math:`B_\\text{noise} = \\mathrm{tr}(H\\Sigma)/(G^\\top H G)`.

With per-example gradients :math:`g_b`, their mean :math:`\\bar g` and :math:`H` the Hessian of the
batch-mean loss, the quadratic forms

.. math::

    q_1 = \\frac1B \\sum_b g_b^\\top H g_b, \\qquad q_B = \\bar g^\\top H \\bar g

have expectations :math:`G^\\top H G + \\mathrm{tr}(H\\Sigma)` and
:math:`G^\\top H G + \\mathrm{tr}(H\\Sigma)/B` (for a fixed :math:`H`), so the two-batch formulas
give unbiased :math:`\\widehat{\\mathrm{tr}(H\\Sigma)} = \\frac{B}{B-1}(q_1 - q_B)` and
:math:`\\widehat{G^\\top H G} = \\frac{B q_B - q_1}{B-1}`; their ratio is returned.

**Cost.** The per-example gradients are materialised (``torch.func.vmap`` of ``grad``: memory
:math:`B \\times` the number of parameters) and :math:`B` Hessian-vector products are taken
(reverse-over-reverse: one ``vjp`` of ``grad``, applied to all :math:`g_b` with ``vmap``).
:math:`H \\bar g` is the mean of the :math:`H g_b` and costs nothing more. Each product runs
over the whole batch, so the total is :math:`O(B^2)` example-gradients (about :math:`3B`
backward passes of the batch) and :math:`2B` parameter copies of memory. Pass ``probes`` to
multiply only a random subset of the :math:`g_b` by :math:`H` (cost ``probes + 1`` products).
For large models prefer :math:`B_\\text{simple}` (:func:`~foresight.gns.noise_scale`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from foresight._guard import preserved
from foresight.gns.estimators import ratio
from foresight.gns.per_example import (
    check_no_coupling,
    check_reduction,
    suspend_trackers,
    trainable,
)
from foresight.results import Result

__all__ = ["BNoise", "b_noise"]


@dataclass(eq=False, repr=True)
class BNoise(float, Result):
    """The Hessian-aware noise scale of one batch (:func:`b_noise`): a result that is also its
    value as a ``float``.

    Up to 0.2 :func:`b_noise` returned a bare ``float``; the result still is one (a ``float``
    subclass), so ``float(result)``, ``result > 0``, arithmetic and formatting keep working and
    give :attr:`b_noise`.

    Attributes:
        b_noise: :math:`\\widehat{\\mathrm{tr}(H\\Sigma)} / \\widehat{G^\\top H G}` (``nan`` or
            ``inf`` when the denominator is 0).
        tr_h_sigma: the unbiased estimate of :math:`\\mathrm{tr}(H\\Sigma)`.
        g_h_g: the unbiased estimate of :math:`G^\\top H G` (may be negative).
        batch_size: the batch size :math:`B`.
        probes: how many per-example gradients were multiplied by :math:`H` (``B`` for all).

    >>> r = BNoise(b_noise=4.0, tr_h_sigma=8.0, g_h_g=2.0, batch_size=16, probes=16)
    >>> float(r), r > 3, r.to_dict()["g_h_g"]
    (4.0, True, 2.0)
    """

    b_noise: float
    tr_h_sigma: float = math.nan
    g_h_g: float = math.nan
    batch_size: int = 0
    probes: int = 0

    metric = "b_noise"

    def __new__(cls, b_noise: float, *args: Any, **kwargs: Any) -> BNoise:
        return super().__new__(cls, b_noise)

    def __str__(self) -> str:  # prints as the number, as the 0.2 float did
        return float.__repr__(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.b_noise, self.tr_h_sigma, self.g_h_g, self.batch_size,
                             self.probes))


def b_noise(
    model: nn.Module,
    loss_fn: Any,
    inputs: Tensor | tuple[Tensor, ...],
    targets: Any,
    *,
    loss_reduction: str = "mean",
    probes: int | None = None,
    generator: torch.Generator | None = None,
) -> BNoise:
    """:math:`B_\\text{noise} = \\mathrm{tr}(H\\Sigma)/(G^\\top H G)` from one batch.

    ``loss_fn(model(inputs), targets)`` is the batch loss (mean or sum of per-example losses,
    per ``loss_reduction``); the Hessian is that of the batch-mean loss.

    Args:
        model: the model (any parameterised modules; BatchNorm in eval mode).
        loss_fn: ``loss_fn(output, targets) -> scalar``.
        inputs: a tensor or tuple of tensors, batch first.
        targets: batch first.
        loss_reduction: ``"mean"`` or ``"sum"``.
        probes: multiply only this many per-example gradients, drawn uniformly without
            replacement, by :math:`H` (``None``: all :math:`B`). :math:`q_1` stays unbiased; the
            cost drops from :math:`B` to ``probes + 1`` Hessian-vector products.
        generator: random generator for the probe draw.

    Returns:
        A :class:`BNoise` result (``b_noise``, ``tr_h_sigma``, ``g_h_g``, ``batch_size``,
        ``probes``; ``to_dict()``, ``to_records()``). It is a ``float`` subclass equal to
        ``b_noise``, so code written for 0.2, which returned a bare ``float`` (``b_noise(...) >
        0``, ``float(b_noise(...))``), keeps working.

    Raises:
        ValueError: batch of one, train-mode BatchNorm, bad ``loss_reduction`` or ``probes``.

    >>> import torch
    >>> model = torch.nn.Linear(3, 1)
    >>> x = torch.randn(256, 3) * torch.tensor([3.0, 1.0, 0.3])
    >>> result = b_noise(model, torch.nn.functional.mse_loss, x, torch.randn(256, 1))
    >>> result > 0, result.batch_size, result.probes
    (True, 256, 256)
    """
    from torch.func import functional_call, grad, vjp, vmap

    check_reduction(loss_reduction)
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    check_no_coupling(model, args)
    batch = int(args[0].shape[0])
    if batch < 2:
        raise ValueError(f"b_noise needs a batch of at least 2 examples (got {batch})")
    named = trainable(model)
    if not named:
        raise ValueError("model has no trainable parameters (requires_grad=True)")
    params = {n: p.detach() for n, p in named}
    div = 1.0 if loss_reduction == "mean" else float(batch)

    def one(p: dict[str, Tensor], xs: tuple[Tensor, ...], y: Any) -> Tensor:
        return loss_fn(functional_call(model, p, tuple(x.unsqueeze(0) for x in xs)), y.unsqueeze(0))

    def batch_loss(p: dict[str, Tensor]) -> Tensor:
        return loss_fn(functional_call(model, p, args), targets) / div

    if probes is not None and not 1 <= probes:
        raise ValueError(f"probes must be a positive integer or None, got {probes}")
    with preserved(model), suspend_trackers(), torch.no_grad():
        per = vmap(grad(one), in_dims=(None, 0, 0))(params, args, targets)
        _, hvp = vjp(grad(batch_loss), params)
        mean = {n: v.mean(0) for n, v in per.items()}
        if probes is None or probes >= batch:
            (hper,) = vmap(hvp)(per)
            hmean = {n: v.mean(0) for n, v in hper.items()}
        else:
            pick = torch.randperm(batch, generator=generator)[:probes].to(args[0].device)
            per = {n: v[pick] for n, v in per.items()}
            (hper,) = vmap(hvp)(per)
            (hmean,) = hvp(mean)
    q1 = sum(
        float((per[n].double() * hper[n].double()).sum(tuple(range(1, per[n].dim()))).mean())
        for n in params
    )
    qb = sum(float((mean[n].double() * hmean[n].double()).sum()) for n in params)
    tr_h_sigma = batch / (batch - 1) * (q1 - qb)
    g_h_g = (batch * qb - q1) / (batch - 1)
    used = batch if probes is None or probes >= batch else int(probes)
    return BNoise(ratio(tr_h_sigma, g_h_g), tr_h_sigma, g_h_g, batch, used)
