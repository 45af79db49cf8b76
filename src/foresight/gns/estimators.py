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

**Resolution.** An unbiased estimate of a small :math:`|G|^2` is negative about half of the time,
and then :math:`\\mathrm{tr}(\\Sigma)/|G|^2` is not a batch size at all. Every
:class:`NoiseScale` therefore carries standard errors, and :math:`B_\\text{simple}` is reported
only when :math:`\\widehat{|G|^2}` is resolved from zero, :math:`\\widehat{|G|^2} > z\\,
\\mathrm{se}(\\widehat{|G|^2})` with :math:`z = 2` (:data:`RESOLVE_Z`), and
:math:`\\widehat{\\mathrm{tr}\\Sigma} > 0`. Otherwise ``b_simple`` is ``nan``, ``resolved`` is
``False``, ``reason`` says why, and ``b_simple_lower`` holds the lower bound
:math:`(\\widehat{\\mathrm{tr}\\Sigma} - z\\,\\mathrm{se}) / (\\widehat{|G|^2} + z\\,\\mathrm{se})`
(the numerator at its lower and the denominator at its upper :math:`z`-s.e. limit; about 95 %
one-sided coverage under normal errors) when both limits are positive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from foresight.gns.per_example import per_parameter_sq_norms
from foresight.results import DictAccess, Row, Rows

__all__ = [
    "NoiseScale", "LayerNoiseScale", "RESOLVE_Z", "two_batch", "noise_scale", "ratio", "resolve",
]

RESOLVE_Z = 2.0
"""How many standard errors :math:`\\widehat{|G|^2}` must lie above zero to be *resolved*."""


def ratio(num: float, den: float) -> float:
    """``num / den`` with IEEE semantics for a zero denominator (``inf``/``nan``, no error)."""
    if den == 0:
        return math.nan if num == 0 else math.copysign(math.inf, num)
    return num / den


@dataclass
class LayerNoiseScale(DictAccess, Row):
    """One row of :attr:`NoiseScale.layers`: the estimate of one layer (or parameter group).

    The attributes are those of :class:`NoiseScale` (without ``batch_size``), for ``name``'s
    parameters alone. Up to 0.2 the rows were ``dict`` objects: ``row["b_simple"]``,
    ``row.get(...)``, ``row.keys()`` and ``dict(row)`` still work, with a
    :class:`DeprecationWarning`; use the attributes (``row.b_simple``).

    >>> row = layer_entry("fc1", grad_sq_norm=2.0, trace_sigma=50.0)
    >>> row.name, row.b_simple, row.resolved
    ('fc1', 25.0, True)
    """

    name: str
    b_simple: float
    trace_sigma: float
    grad_sq_norm: float
    grad_sq_norm_se: float = math.nan
    trace_sigma_se: float = math.nan
    b_simple_se: float = math.nan
    b_simple_lower: float = math.nan
    resolved: bool = True
    reason: str = ""

    metric = "gns"


@dataclass
class NoiseScale(Rows):
    """A gradient-noise-scale estimate.

    Per-layer rows are looked up by name and iterated like every result's
    (:mod:`foresight.results`): ``est.row("fc1")``, ``est["fc1"]``, ``for row in est``.

    Attributes:
        b_simple: :math:`\\mathrm{tr}(\\Sigma) / |G|^2` when :math:`|G|^2` is resolved (see the
            module documentation), else ``nan`` (``reason`` says why).
        trace_sigma: unbiased estimate of :math:`\\mathrm{tr}(\\Sigma)`, the per-example gradient
            variance summed over parameters.
        grad_sq_norm: unbiased estimate of :math:`|G|^2`, the squared norm of the true gradient
            (may be negative: it is unbiased, not clipped).
        batch_size: the (big) batch size the estimate was made from.
        layers: per-layer (or per-parameter-group) estimates, :class:`LayerNoiseScale` rows
            (``name``, ``b_simple``, ``trace_sigma``, ``grad_sq_norm``, their standard errors,
            ``b_simple_lower``, ``resolved``, ``reason``; ``dict`` objects up to 0.2).
        grad_sq_norm_se: standard error of ``grad_sq_norm`` (``nan`` when unknown; how it is
            obtained is documented by the function that made the estimate).
        trace_sigma_se: standard error of ``trace_sigma``.
        b_simple_se: standard error of ``b_simple`` by the delta method,
            :math:`\\mathrm{se}(b)^2 = b^2\\big(\\mathrm{se}_\\Sigma^2/\\mathrm{tr}^2 +
            \\mathrm{se}_G^2/|G|^4 - 2\\,\\mathrm{cov}/(\\mathrm{tr}\\,|G|^2)\\big)`.
        b_simple_lower: the lower bound of the module documentation (``nan`` when it does not
            exist); useful when ``b_simple`` is unresolved.
        resolved: whether ``b_simple`` is a batch size one can use.
        reason: why it is not (empty when resolved).
    """

    b_simple: float
    trace_sigma: float
    grad_sq_norm: float
    batch_size: int
    layers: list[LayerNoiseScale] = field(default_factory=list)
    grad_sq_norm_se: float = math.nan
    trace_sigma_se: float = math.nan
    b_simple_se: float = math.nan
    b_simple_lower: float = math.nan
    resolved: bool = True
    reason: str = ""

    metric = "gns"

    def __post_init__(self) -> None:
        # rows given as 0.2 dicts (NoiseScale(..., layers=[{"name": ...}])) become rows
        self.layers = [LayerNoiseScale(**r) if isinstance(r, Mapping) else r
                       for r in self.layers]

    @classmethod
    def from_parts(
        cls,
        grad_sq_norm: float,
        trace_sigma: float,
        batch_size: int,
        layers=None,
        *,
        grad_sq_norm_se: float = math.nan,
        trace_sigma_se: float = math.nan,
        covariance: float = math.nan,
        require_se: bool = False,
    ) -> NoiseScale:
        """Build an estimate from its parts; ``b_simple`` and the resolution follow from
        :func:`resolve` (``covariance`` is that of the two estimates, ``require_se`` makes a
        missing standard error count as unresolved).

        >>> NoiseScale.from_parts(2.0, 50.0, 32).b_simple
        25.0
        >>> est = NoiseScale.from_parts(-0.1, 50.0, 32, grad_sq_norm_se=0.2)
        >>> est.resolved, est.b_simple, round(est.b_simple_lower, 1)
        (False, nan, 166.7)
        """
        r = resolve(
            grad_sq_norm, trace_sigma, grad_sq_norm_se, trace_sigma_se, covariance,
            require_se=require_se,
        )
        return cls(
            b_simple=r["b_simple"],
            trace_sigma=float(trace_sigma),
            grad_sq_norm=float(grad_sq_norm),
            batch_size=int(batch_size),
            layers=list(layers or []),  # dicts (0.2) become rows in __post_init__
            grad_sq_norm_se=float(grad_sq_norm_se),
            trace_sigma_se=float(trace_sigma_se),
            b_simple_se=r["b_simple_se"],
            b_simple_lower=r["b_simple_lower"],
            resolved=r["resolved"],
            reason=r["reason"],
        )


def resolve(
    grad_sq_norm: float,
    trace_sigma: float,
    grad_sq_norm_se: float = math.nan,
    trace_sigma_se: float = math.nan,
    covariance: float = math.nan,
    *,
    require_se: bool = False,
    z: float = RESOLVE_Z,
) -> dict[str, Any]:
    """Decide whether :math:`B_\\text{simple}` is resolved; return ``b_simple``, ``b_simple_se``,
    ``b_simple_lower``, ``resolved`` and ``reason``.

    Resolved means: both parts finite, :math:`\\widehat{|G|^2} > z\\,\\mathrm{se}` (or, when no
    standard error is known and ``require_se`` is false, :math:`\\widehat{|G|^2} > 0`) and
    :math:`\\widehat{\\mathrm{tr}\\Sigma} > 0`. ``covariance`` (``nan``: taken as 0) enters the
    delta-method standard error of the ratio.

    >>> r = resolve(1e-6, 3.0, grad_sq_norm_se=2e-6)
    >>> r["resolved"], r["reason"][:22]
    (False, '|G|^2 = 1e-06 +- 2e-06')
    """
    g2, tr = float(grad_sq_norm), float(trace_sigma)
    g_se, t_se = float(grad_sq_norm_se), float(trace_sigma_se)
    cov = float(covariance) if math.isfinite(float(covariance)) else 0.0
    out: dict[str, Any] = dict(
        b_simple=math.nan, b_simple_se=math.nan, b_simple_lower=math.nan, resolved=False, reason=""
    )
    if not (math.isfinite(g2) and math.isfinite(tr)):
        out["reason"] = "no estimate yet (non-finite |G|^2 or tr(Sigma))"
        return out
    have_se = math.isfinite(g_se)
    if have_se:
        t_lo = tr - z * t_se if math.isfinite(t_se) else tr
        g_hi = g2 + z * g_se
        if t_lo > 0 and g_hi > 0:
            out["b_simple_lower"] = t_lo / g_hi
    if tr <= 0:
        out["reason"] = f"tr(Sigma) estimate {tr:.3g} is not positive: B_simple is not resolved"
    elif have_se and not g2 > z * g_se:
        out["reason"] = (
            f"|G|^2 = {g2:.3g} +- {g_se:.3g} (1 s.e.) is not resolved from 0 (needs more than "
            f"{z:g} s.e.): B_simple is unresolved"
            + (
                f", at least {out['b_simple_lower']:.4g}"
                if math.isfinite(out["b_simple_lower"])
                else ""
            )
        )
    elif not have_se and require_se:
        out["reason"] = "no standard error yet (fewer than 2 steps smoothed, or beta=0)"
    elif not have_se and g2 <= 0:
        out["reason"] = f"|G|^2 estimate {g2:.3g} is not positive: B_simple is unresolved"
    else:
        b = tr / g2
        out["b_simple"], out["resolved"] = b, True
        if have_se:
            rel = (t_se / tr) ** 2 if math.isfinite(t_se) else 0.0
            rel += (g_se / g2) ** 2 - 2.0 * cov / (tr * g2)
            out["b_simple_se"] = abs(b) * math.sqrt(max(rel, 0.0))
    return out


def layer_entry(
    name: str,
    grad_sq_norm: float,
    trace_sigma: float,
    grad_sq_norm_se: float = math.nan,
    trace_sigma_se: float = math.nan,
    covariance: float = math.nan,
    *,
    require_se: bool = False,
) -> LayerNoiseScale:
    """One row of :attr:`NoiseScale.layers`: ``b_simple`` and the resolution by
    :func:`resolve`."""
    r = resolve(
        grad_sq_norm, trace_sigma, grad_sq_norm_se, trace_sigma_se, covariance,
        require_se=require_se,
    )
    return LayerNoiseScale(
        name=name,
        b_simple=r["b_simple"],
        trace_sigma=float(trace_sigma),
        grad_sq_norm=float(grad_sq_norm),
        grad_sq_norm_se=float(grad_sq_norm_se),
        trace_sigma_se=float(trace_sigma_se),
        b_simple_se=r["b_simple_se"],
        b_simple_lower=r["b_simple_lower"],
        resolved=r["resolved"],
        reason=r["reason"],
    )


# ---------------------------------------------------------------- smoothing with standard errors


def ema_weight_sq(beta: float, n: int) -> float:
    """:math:`\\sum_i w_i^2` of the bias-corrected EMA weights after ``n`` updates,
    :math:`w_i = (1-\\beta)\\beta^{n-i}/(1-\\beta^n)`:
    :math:`\\frac{(1-\\beta)(1+\\beta^n)}{(1+\\beta)(1-\\beta^n)}` (1 for ``beta = 0``).

    If the raw estimates are independent with variance :math:`s^2`, the smoothed one has
    variance :math:`s^2 \\sum_i w_i^2`.

    >>> ema_weight_sq(0.5, 1), round(ema_weight_sq(0.9, 10**6), 6)
    (1.0, 0.052632)
    """
    if n <= 0:
        return math.nan
    if beta == 0.0:
        return 1.0
    bn = beta**n
    return (1.0 - beta) * (1.0 + bn) / ((1.0 + beta) * (1.0 - bn))


def moments_new() -> list[float]:
    """Accumulator for :func:`moments_update`: ``[W, W2, mean_G, mean_S, S_GG, S_SS, S_GS]``."""
    return [0.0] * 7


def moments_update(acc: list[float], grad_sq_norm: float, trace_sigma: float, beta: float) -> None:
    """Fold one raw estimate pair into ``acc`` (in place): an exponentially weighted mean,
    variance and covariance with weights :math:`\\beta^{n-i}` (weighted Welford updates, stable
    when the mean is much larger than the spread)."""
    w, w2, mg, ms, sgg, sss, sgs = acc
    w = beta * w + 1.0
    w2 = beta * beta * w2 + 1.0
    dg, ds = grad_sq_norm - mg, trace_sigma - ms
    mg += dg / w
    ms += ds / w
    sgg = beta * sgg + dg * (grad_sq_norm - mg)
    sss = beta * sss + ds * (trace_sigma - ms)
    sgs = beta * sgs + dg * (trace_sigma - ms)
    acc[:] = [w, w2, mg, ms, sgg, sss, sgs]


def moments_se(acc: list[float], beta: float, n: int) -> tuple[float, float, float]:
    """Standard errors of the smoothed :math:`|G|^2` and :math:`\\mathrm{tr}(\\Sigma)` after ``n``
    EMA updates, and their covariance.

    The per-step variance :math:`s^2` of the raw estimates is the exponentially weighted sample
    variance with the reliability-weights correction,
    :math:`\\hat s^2 = \\frac{\\sum_i w_i (x_i - \\bar x)^2}{1 - \\sum_i w_i^2}`
    (normalised weights), and the smoothed estimate's variance is :math:`\\hat s^2 \\sum_i w_i^2`
    (:func:`ema_weight_sq`). This treats the raw estimates in the EMA window as independent
    draws around one mean: a trend of the true value inside the window adds to :math:`\\hat s^2`,
    so the standard error errs on the large side while the noise scale drifts. ``nan`` with
    fewer than two updates or ``beta = 0`` (one raw estimate says nothing about its spread).
    """
    w, w2, _, _, sgg, sss, sgs = acc
    if beta == 0.0 or w <= 0.0:
        return math.nan, math.nan, math.nan
    sum_w2 = w2 / (w * w)
    denom = 1.0 - sum_w2
    if denom <= 1e-12:
        return math.nan, math.nan, math.nan
    var_g = max(sgg / w, 0.0) / denom
    var_s = max(sss / w, 0.0) / denom
    cov = (sgs / w) / denom
    k = ema_weight_sq(beta, n)
    return math.sqrt(var_g * k), math.sqrt(var_s * k), cov * k


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
    se_chunks: int = 8,
) -> NoiseScale:
    """Unbiased :math:`|G|^2`, :math:`\\mathrm{tr}(\\Sigma)`, :math:`B_\\text{simple}` from a batch,
    with standard errors.

    With :math:`n_b = |\\nabla \\ell_b|^2` (:func:`~foresight.gns.per_example_sq_norms`) and
    :math:`G_B` the batch-mean gradient,

    .. math::

        \\widehat{\\mathrm{tr}\\Sigma} = \\frac{B}{B-1}\\Big(\\frac1B\\sum_b n_b - |G_B|^2\\Big),
        \\qquad
        \\widehat{|G|^2} = \\frac{B |G_B|^2 - \\frac1B\\sum_b n_b}{B-1},

    i.e. :func:`two_batch` with :math:`b = 1`. Per-layer values are in ``layers``.

    **Standard errors** (delete-a-group jackknife). The batch is cut into :math:`k` =
    ``se_chunks`` contiguous chunks of (nearly) equal size, each passed forward and backward on
    its own (the per-example norms do not change; :math:`G_B` is the size-weighted mean of the
    chunk gradients, so the estimate is the one-pass estimate). The two estimates
    :math:`\\hat\\theta_{(j)}` recomputed without chunk :math:`j` give
    :math:`\\mathrm{se}^2 = \\frac{k-1}{k}\\sum_j (\\hat\\theta_{(j)} - \\bar\\theta)^2` and the
    covariance likewise; :math:`B_\\text{simple}` is ``nan`` unless :math:`|G|^2` is resolved
    (:func:`resolve`). Cost: the same examples in :math:`k` passes instead of one, and
    :math:`k` copies of the gradient in memory; ``se_chunks=1`` makes one pass without standard
    errors. Batches of fewer than 4 examples get no standard errors.

    Raises:
        ValueError: for a batch of one example (the variance is not identifiable), or
            ``se_chunks < 1``.

    >>> import torch
    >>> torch.manual_seed(0) is not None
    True
    >>> model = torch.nn.Linear(4, 1)
    >>> x, y = torch.randn(64, 4), torch.randn(64, 1)
    >>> est = noise_scale(model, torch.nn.functional.mse_loss, x, y)
    >>> est.batch_size, est.trace_sigma > 0, est.trace_sigma_se > 0
    (64, True, True)
    """
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    batch = int(args[0].shape[0])
    if batch < 2:
        raise ValueError(
            f"noise_scale needs a batch of at least 2 examples (got {batch}): the gradient "
            "variance cannot be estimated from one example"
        )
    if not isinstance(se_chunks, int) or se_chunks < 1:
        raise ValueError(f"se_chunks must be a positive integer, got {se_chunks!r}")
    k = min(se_chunks, batch) if batch >= 4 else 1
    if k > 1 and _slice_targets(targets, slice(0, 1)) is None:
        k = 1  # targets we cannot cut into chunks: one pass, no standard errors
    edges = [round(i * batch / k) for i in range(k + 1)]
    sizes = [edges[i + 1] - edges[i] for i in range(k)]
    # per layer: per-chunk sums of per-example squared norms, per-chunk summed gradients
    q: dict[str, list[float]] = {}
    chunk_grads: dict[str, list[Tensor]] = {}
    for j in range(k):
        sl = slice(edges[j], edges[j + 1])
        c_in = tuple(a[sl] for a in args) if k > 1 else args
        c_tg = _slice_targets(targets, sl) if k > 1 else targets
        norms, grads = per_parameter_sq_norms(
            model, loss_fn, c_in if isinstance(inputs, tuple) else c_in[0], c_tg,
            loss_reduction=loss_reduction, batch_gradient=True,
        )
        assert grads is not None
        parts: dict[str, list[Tensor]] = {}
        for name in norms:
            lname = layer_name(name)
            q.setdefault(lname, [0.0] * k)[j] += float(norms[name].double().sum())
            parts.setdefault(lname, []).append(grads[name].detach().double().flatten() * sizes[j])
        for lname, vecs in parts.items():
            chunk_grads.setdefault(lname, []).append(torch.cat(vecs))
    total = float(batch)
    layers, g_total, tr_total = [], 0.0, 0.0
    jack_g = [0.0] * k  # leave-one-chunk-out totals
    jack_t = [0.0] * k
    per_layer_jack: dict[str, tuple[list[float], list[float]]] = {}
    for lname, qs in q.items():
        stack = torch.stack(chunk_grads[lname])  # [k, P_layer]
        gram = (stack @ stack.T).tolist()
        sum_q = sum(qs)
        sq_all = sum(map(sum, gram))
        g2, tr = _unbiased(sum_q / total, sq_all / total**2, 1.0, total)
        g_total += g2
        tr_total += tr
        jg, jt = [], []
        if k > 1:
            for j in range(k):
                n_j = total - sizes[j]
                sq_j = sq_all - 2.0 * sum(gram[j]) + gram[j][j]
                a, b = _unbiased((sum_q - qs[j]) / n_j, sq_j / n_j**2, 1.0, n_j)
                jg.append(a)
                jt.append(b)
                jack_g[j] += a
                jack_t[j] += b
        per_layer_jack[lname] = (jg, jt)
        se = _jackknife(jg, jt)
        layers.append(layer_entry(lname, g2, tr, *se))
    se = _jackknife(jack_g, jack_t) if k > 1 else (math.nan, math.nan, math.nan)
    return NoiseScale.from_parts(
        g_total, tr_total, batch, layers,
        grad_sq_norm_se=se[0], trace_sigma_se=se[1], covariance=se[2],
    )


def _slice_targets(targets: Any, sl: slice) -> Any:
    """``targets[sl]`` for a tensor or a tuple/list of tensors; ``None`` if that is not possible."""
    if isinstance(targets, Tensor) and targets.dim() > 0:
        return targets[sl]
    if isinstance(targets, (tuple, list)) and targets and all(
        isinstance(t, Tensor) and t.dim() > 0 for t in targets
    ):
        return type(targets)(t[sl] for t in targets)
    return None


def _jackknife(jg: list[float], jt: list[float]) -> tuple[float, float, float]:
    """Delete-a-group jackknife standard errors of two estimates and their covariance."""
    k = len(jg)
    if k < 2:
        return math.nan, math.nan, math.nan
    mg, mt = sum(jg) / k, sum(jt) / k
    f = (k - 1) / k
    var_g = f * sum((a - mg) ** 2 for a in jg)
    var_t = f * sum((b - mt) ** 2 for b in jt)
    cov = f * sum((a - mg) * (b - mt) for a, b in zip(jg, jt))
    return math.sqrt(var_g), math.sqrt(var_t), cov


def _sq(t: Tensor) -> float:
    return float(torch.as_tensor(t).double().square().sum())
