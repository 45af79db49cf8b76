r"""Measure the critical batch size, beside the noise scale that predicts it.

McCandlish et al. (2018) model training to a fixed loss at batch size :math:`B` as

.. math::

    S = S_\min\Big(1 + \frac{B_\text{crit}}{B}\Big), \qquad
    E = B S = E_\min\Big(1 + \frac{B}{B_\text{crit}}\Big), \qquad
    B_\text{crit} = E_\min / S_\min,

equivalently :math:`(S/S_\min - 1)(E/E_\min - 1) = 1`, and predict :math:`B_\text{crit}` by the
noise scale :math:`B_\text{simple}` (or :math:`B_\text{noise}`) measured near that loss.

* :func:`critical_batch_size` -- the **sweep**: train to ``target_loss`` at several batch sizes,
  each with the learning rate (of those given) that gets there in the fewest steps; fit the
  front; report :math:`B_\text{crit}` with a bootstrap interval, and the tracked
  :math:`B_\text{simple}` (optionally :math:`B_\text{noise}`) where each run crossed the target.
* :func:`critical_batch_size_branched` -- the **branched** measurement of Merrill et al. (2025):
  from checkpoints of one reference run, branch with a :math:`k`-times larger batch and a
  rescaled learning rate, and find the largest :math:`k` that still reaches the reference loss in
  about :math:`1/k` of the steps -- :math:`B_\text{crit}` followed through training.
* :func:`fit_front` -- the fit alone.

The fit. Dividing the relation by :math:`S E` gives :math:`S_\min/S + E_\min/E = 1`, linear in
the two unknowns; least squares on it minimises :math:`\sum_i \big((S_i - \hat S_i)/S_i\big)^2`
with :math:`\hat S_i = S_\min + E_\min/B_i`, the relative error of the steps (step counts have
roughly relative noise). If a coefficient comes out negative the constrained fit puts it at 0 and
:math:`B_\text{crit}` is then only bounded (the reason says which way).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from foresight._progress import progress as _progress
from foresight.results import SCHEMA, Record, Result

__all__ = [
    "BranchedCriticalBatchSize",
    "CriticalBatchSize",
    "critical_batch_size",
    "critical_batch_size_branched",
    "fit_front",
    "lr_scaled",
]

Sampler = Callable[[int, torch.Generator], tuple[Any, Any]]
OptimizerSpec = str | Callable[[Any, float], torch.optim.Optimizer]


# ------------------------------------------------------------------------------------------- fit


def fit_front(batch_sizes: Sequence[float], steps: Sequence[float]) -> dict[str, Any]:
    r"""Fit :math:`S = S_\min + E_\min / B` to measured steps (see the module documentation).

    Returns a dict with ``s_min``, ``e_min``, ``b_crit`` (``nan`` when a coefficient is 0, with
    ``reason``), ``fitted`` (:math:`\hat S_i`), ``residuals`` (:math:`\ln(S_i/\hat S_i)`) and
    ``reason``.

    Raises:
        ValueError: fewer than two points, a non-positive value, or all batch sizes equal.

    >>> fit = fit_front([16, 64, 256], [1000 * (1 + 100 / b) for b in (16, 64, 256)])
    >>> round(fit["b_crit"], 6), round(fit["s_min"], 6)
    (100.0, 1000.0)
    """
    b = [float(v) for v in batch_sizes]
    s = [float(v) for v in steps]
    if len(b) != len(s):
        raise ValueError(f"fit_front: {len(b)} batch sizes but {len(s)} step counts")
    if len(b) < 2:
        raise ValueError("fit_front needs at least two (batch size, steps) points")
    if any(not (v > 0 and math.isfinite(v)) for v in b + s):
        raise ValueError("fit_front: batch sizes and steps must be positive and finite")
    if len(set(b)) < 2:
        raise ValueError("fit_front needs at least two different batch sizes")
    x1 = [1.0 / v for v in s]  # 1/S
    x2 = [1.0 / (bi * si) for bi, si in zip(b, s)]  # 1/E
    a11 = sum(v * v for v in x1)
    a22 = sum(v * v for v in x2)
    a12 = sum(p * q for p, q in zip(x1, x2))
    r1, r2 = sum(x1), sum(x2)
    det = a11 * a22 - a12 * a12
    s_min = e_min = math.nan
    if det > 1e-300 * max(a11 * a22, 1e-300):
        s_min = (r1 * a22 - r2 * a12) / det
        e_min = (r2 * a11 - r1 * a12) / det
    reason = ""
    if not (s_min > 0 and e_min > 0):
        # constrained fit: one coefficient at 0, the other by least squares; keep the better one
        only_s = (r1 / a11, 0.0)
        only_e = (0.0, r2 / a22)

        def sse(c: tuple[float, float]) -> float:
            return sum((1 - c[0] * p - c[1] * q) ** 2 for p, q in zip(x1, x2))

        s_min, e_min = min((only_s, only_e), key=sse)
        if e_min == 0.0:
            reason = (
                "steps do not fall with the batch size over the range tried: B_crit is below the "
                f"smallest batch size ({min(b):g}) or the runs are too noisy to tell"
            )
        else:
            reason = (
                "steps fall in proportion to 1/B over the whole range tried (perfect scaling): "
                f"B_crit is above the largest batch size ({max(b):g})"
            )
    fitted = [s_min + e_min / bi for bi in b]
    residuals = [math.log(si / fi) if fi > 0 else math.nan for si, fi in zip(s, fitted)]
    b_crit = e_min / s_min if (s_min > 0 and e_min > 0) else math.nan
    return dict(
        s_min=s_min, e_min=e_min, b_crit=b_crit, fitted=fitted, residuals=residuals, reason=reason
    )


def _bootstrap(
    batch_sizes: Sequence[float],
    fit: dict[str, Any],
    steps: Sequence[float],
    *,
    n_boot: int,
    confidence: float,
    generator: torch.Generator,
) -> tuple[float, float]:
    """Residual bootstrap of ``b_crit``: relative residuals :math:`u_i = 1 - \\hat S_i / S_i`,
    inflated by :math:`\\sqrt{n/(n-2)}` for the two fitted parameters, are resampled with
    replacement onto the fitted steps (:math:`S^*_i = \\hat S_i / (1 - u^*_i)`) and the front
    refitted; the percentile interval of the refitted :math:`B_\\text{crit}` (a constrained refit
    counts as 0 or :math:`\\infty`)."""
    n = len(steps)
    if n < 3:
        return math.nan, math.nan
    infl = math.sqrt(n / (n - 2))
    u = [(1.0 - f / s) * infl for f, s in zip(fit["fitted"], steps)]
    draws = []
    idx = torch.randint(0, n, (n_boot, n), generator=generator).tolist()
    for row in idx:
        star = []
        for i, j in enumerate(row):
            denom = 1.0 - u[j]
            star.append(fit["fitted"][i] / denom if denom > 0.05 else fit["fitted"][i] * 20.0)
        try:
            f = fit_front(batch_sizes, star)
        except ValueError:
            continue
        if math.isfinite(f["b_crit"]):
            draws.append(f["b_crit"])
        else:
            draws.append(0.0 if f["e_min"] == 0.0 else math.inf)
    if not draws:
        return math.nan, math.nan
    draws.sort()
    lo_q = (1.0 - confidence) / 2.0
    return _quantile(draws, lo_q), _quantile(draws, 1.0 - lo_q)


def _quantile(sorted_values: list[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    i = int(math.floor(pos))
    j = min(i + 1, len(sorted_values) - 1)
    a, b = sorted_values[i], sorted_values[j]
    if math.isinf(a) or math.isinf(b):
        return b if pos - i > 0 else a
    return a + (b - a) * (pos - i)


# --------------------------------------------------------------------------------------- results


@dataclass
class CriticalBatchSize(Result):
    """The critical batch size measured by a sweep (:func:`critical_batch_size`).

    Attributes:
        b_crit: :math:`E_\\min / S_\\min` of the fitted front (``nan`` when it is only bounded or
            fewer than two batch sizes reached the target; ``reason`` says why).
        s_min: fitted minimum number of steps.
        e_min: fitted minimum number of examples.
        interval: bootstrap percentile interval of ``b_crit`` at ``confidence`` (``nan`` with
            fewer than three reached batch sizes).
        confidence: the interval's level.
        residuals: :math:`\\ln(S_i / \\hat S_i)` of each reached batch size (order of ``runs``).
        runs: one row per batch size (see :func:`critical_batch_size`).
        trials: one row per (batch size, learning rate) tried: ``batch_size``, ``lr``,
            ``status`` (``"reached"``, ``"diverged"``, ``"stopped"`` -- another learning rate got
            there first --, ``"max_steps"``), ``steps`` (the crossing step, or where it ended).
        b_simple: the tracked :math:`B_\\text{simple}` at the crossing, pooled over the reached
            batch sizes (``tracker_estimate``); ``nan`` when that is unresolved.
        b_simple_lower: its lower bound (useful when ``b_simple`` is unresolved).
        b_simple_batch: :math:`B_\\text{simple}` measured at each crossing by
            :func:`~foresight.gns.noise_scale` on a fresh batch of ``noise_batch_size`` examples,
            pooled (``batch_estimate``); ``nan`` when unresolved.
        b_noise: median of :math:`B_\\text{noise}` at the crossing (``nan`` unless asked for).
        tracker_estimate: the pooled tracker estimate (:class:`~foresight.gns.NoiseScale`):
            the mean of the runs' smoothed :math:`|G|^2` and :math:`\\mathrm{tr}(\\Sigma)` at
            their crossings, standard errors combined as for a mean of independent estimates.
        batch_estimate: the pooled one-shot estimate, likewise.
        target_loss: the target.
        history: the evaluation curve of each batch size's kept run: rows ``batch_size``,
            ``step``, ``examples``, ``loss``, ``b_simple``, ``b_simple_lower``.
        reason: why ``b_crit`` is ``nan`` (empty otherwise).
        notes: caveats found during the measurement (also issued as warnings).
    """

    b_crit: float
    s_min: float
    e_min: float
    interval: tuple[float, float]
    confidence: float
    residuals: list[float]
    runs: list[dict[str, Any]]
    trials: list[dict[str, Any]]
    b_simple: float
    b_simple_lower: float
    b_simple_batch: float
    b_noise: float
    target_loss: float
    tracker_estimate: Any = None
    batch_estimate: Any = None
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    metric = "critical"

    def to_dataframe(self):
        """The ``runs`` table as a ``pandas.DataFrame``."""
        from foresight._optional import require

        pd = require("pandas", "to_dataframe()")
        return pd.DataFrame(self.runs)

    def lr_for(self, batch_size: float) -> float:
        """The best learning rate found, interpolated log-log between the reached batch sizes
        (clamped at the ends): a learning-rate rule for :class:`~foresight.gns.BatchSizeWarmup`."""
        pts = sorted((r["batch_size"], r["lr"]) for r in self.runs if r["reached"])
        if not pts:
            raise ValueError("no batch size reached the target: no learning rate to interpolate")
        return _loglog(pts, float(batch_size))

    def __str__(self) -> str:
        head = (
            f"critical batch size at loss {self.target_loss:.4g}: "
            + (
                f"B_crit = {self.b_crit:.4g} ({self.confidence:.0%} interval "
                f"{self.interval[0]:.4g} .. {self.interval[1]:.4g}), "
                f"S_min = {self.s_min:.4g}, E_min = {self.e_min:.4g}"
                if math.isfinite(self.b_crit)
                else f"B_crit not determined ({self.reason})"
            )
        )
        pred = "predicted at the target: B_simple (tracker) = " + _pred(
            self.b_simple, self.b_simple_lower)
        if self.batch_estimate is not None:
            pred += ", B_simple (one batch per run) = " + _pred(
                self.b_simple_batch, getattr(self.batch_estimate, "b_simple_lower", math.nan))
        if math.isfinite(self.b_noise):
            pred += f", B_noise = {_fmt(self.b_noise)}"
        cols = ["batch_size", "lr", "steps", "examples", "status", "b_simple", "b_simple_batch",
                "b_noise"]
        cols = [c for c in cols if any(c in r for r in self.runs)]
        if not any(math.isfinite(r.get("b_noise", math.nan)) for r in self.runs):
            cols = [c for c in cols if c != "b_noise"]
        lines = [head, pred, _table(self.runs, cols)]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class BranchedCriticalBatchSize(Result):
    """:math:`B_\\text{crit}` through training by branching (:func:`critical_batch_size_branched`).

    Attributes:
        batch_size: the reference run's batch size :math:`B_0`.
        lr: the reference learning rate.
        window: reference steps after each checkpoint that set the reference loss.
        checkpoints: one row per checkpoint: ``step``, ``examples``, ``loss`` (at the
            checkpoint), ``reference_loss`` (the reference run's loss ``window`` steps later),
            ``b_crit`` (:math:`B_0` times the largest accepted :math:`k`, ``nan`` if even
            :math:`k = 1` failed), ``bound`` (``"lower"`` when the largest :math:`k` tried was
            accepted, so :math:`B_\\text{crit}` may be larger), ``b_simple``, ``b_simple_se``,
            ``b_simple_lower`` (the reference run's tracker at the checkpoint).
        branches: one row per (checkpoint, :math:`k`): ``step``, ``k``, ``batch_size``, ``lr``,
            ``steps`` (to the reference loss, or ``None``), ``allowed`` (the step budget
            :math:`\\lceil (1 + \\text{tolerance})\\,\\text{window}/k \\rceil`), ``accepted``,
            ``efficiency`` (:math:`(\\text{window}/k)/\\text{steps}`: 1 is perfect scaling).
        notes: caveats.
    """

    batch_size: int
    lr: float
    window: int
    checkpoints: list[dict[str, Any]]
    branches: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    metric = "critical_branched"

    def to_records(self) -> list[Record]:
        """One tidy record per value of each checkpoint (``step`` is the checkpoint's)."""
        fields = SCHEMA[self.metric].model
        return [
            Record(self.metric, None, f, float(row[f]), step=int(row["step"]))
            for row in self.checkpoints for f in fields
            if isinstance(row.get(f), (int, float)) and not isinstance(row.get(f), bool)
        ]

    def to_dataframe(self):
        """The ``checkpoints`` table as a ``pandas.DataFrame``."""
        from foresight._optional import require

        pd = require("pandas", "to_dataframe()")
        return pd.DataFrame(self.checkpoints)

    def schedule(self) -> list[tuple[float, float]]:
        """``(examples, b_crit)`` of the checkpoints with a measured ``b_crit`` -- the input of
        :meth:`foresight.gns.BatchSizeWarmup.from_measurements`."""
        return [
            (float(r["examples"]), float(r["b_crit"]))
            for r in self.checkpoints
            if math.isfinite(r["b_crit"])
        ]

    def __str__(self) -> str:
        head = (
            f"branched critical batch size (reference batch {self.batch_size}, lr {self.lr:g}, "
            f"window {self.window} steps)"
        )
        rows = [
            dict(r, b_crit=("≥ " if r["bound"] == "lower" else "") + _fmt(r["b_crit"]))
            for r in self.checkpoints
        ]
        cols = ["step", "examples", "loss", "reference_loss", "b_crit", "b_simple"]
        return "\n".join([head, _table(rows, cols)] + [f"note: {n}" for n in self.notes])


def _pred(value: float, lower: float) -> str:
    if math.isfinite(value):
        return f"{value:.4g}"
    if math.isfinite(lower):
        return f"unresolved (>= {lower:.4g})"
    return "unresolved"


def _pool(estimates: list[Any]) -> Any:
    """The mean of several estimates' parts (standard errors of a mean of independent ones)."""
    from foresight.gns.estimators import NoiseScale

    ok = [e for e in estimates if e is not None and math.isfinite(e.grad_sq_norm)
          and math.isfinite(e.grad_sq_norm_se) and math.isfinite(e.trace_sigma_se)]
    if not ok:
        return None
    n = len(ok)
    return NoiseScale.from_parts(
        sum(e.grad_sq_norm for e in ok) / n,
        sum(e.trace_sigma for e in ok) / n,
        round(sum(e.batch_size for e in ok) / n),
        grad_sq_norm_se=math.sqrt(sum(e.grad_sq_norm_se**2 for e in ok)) / n,
        trace_sigma_se=math.sqrt(sum(e.trace_sigma_se**2 for e in ok)) / n,
        require_se=True,
    )


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.4g}"
    return str(v)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    cells = [[c for c in cols]] + [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells)


def _loglog(points: list[tuple[float, float]], x: float) -> float:
    if x <= points[0][0]:
        return points[0][1]
    if x >= points[-1][0]:
        return points[-1][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            if x1 == x0:
                return y1
            t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))
    return points[-1][1]  # pragma: no cover


# ----------------------------------------------------------------------------------- validation


def _make_optimizer(spec: OptimizerSpec) -> Callable[[Any, float], torch.optim.Optimizer]:
    if callable(spec):
        return spec
    if spec == "sgd":
        return lambda params, lr: torch.optim.SGD(params, lr=lr)
    if spec == "adam":
        return lambda params, lr: torch.optim.Adam(params, lr=lr)
    raise ValueError(
        f"optimizer must be 'sgd', 'adam' or a callable (params, lr) -> Optimizer, got {spec!r}"
    )


def lr_scaled(rule: str | Callable[[float, float], float], k: float, lr: float) -> float:
    """The learning rate for a batch ``k`` times larger: ``"linear"`` (:math:`k\\,\\eta`),
    ``"sqrt"`` (:math:`\\sqrt{k}\\,\\eta`), ``"constant"`` or a callable ``(k, lr) -> lr``.

    >>> lr_scaled("sqrt", 4, 0.1)
    0.2
    """
    if callable(rule):
        out = float(rule(k, lr))
    elif rule == "linear":
        out = k * lr
    elif rule == "sqrt":
        out = math.sqrt(k) * lr
    elif rule == "constant":
        out = lr
    else:
        raise ValueError(
            f"lr_rule must be 'linear', 'sqrt', 'constant' or a callable (k, lr) -> lr, "
            f"got {rule!r}"
        )
    if not (out > 0 and math.isfinite(out)):
        raise ValueError(f"lr_rule gave learning rate {out!r} for k={k}, lr={lr}")
    return out


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _batch_len(batch: Any) -> int:
    inputs = batch[0]
    first = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
    return int(first.shape[0])


def _call_model(model: nn.Module, inputs: Any) -> Any:
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def _evaluator(eval_data: Any, loss_fn: Callable) -> Callable[[nn.Module], float]:
    if callable(eval_data):
        return lambda m: float(eval_data(m))
    if not (isinstance(eval_data, (tuple, list)) and len(eval_data) == 2):
        raise ValueError(
            "eval_data must be (inputs, targets) or a callable model -> loss, got "
            f"{type(eval_data).__name__}"
        )
    x, y = eval_data

    def evaluate(model: nn.Module) -> float:
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                return float(loss_fn(_call_model(model, x), y))
        finally:
            model.train(was)

    return evaluate


def _fork_rng():
    """Keep the caller's random state: the CPU generator and every initialised CUDA device's."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else [])


class _Fresh:
    """Calls ``model_fn`` under a fixed seed and checks that every model is the same fresh copy."""

    def __init__(self, model_fn: Callable[[], nn.Module], seed: int) -> None:
        self.model_fn = model_fn
        self.seed = seed
        self.reference: dict[str, Tensor] | None = None
        self.seen: list[nn.Module] = []

    def __call__(self) -> nn.Module:
        with _fork_rng():
            torch.manual_seed(self.seed)
            model = self.model_fn()
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"model_fn() must return a torch.nn.Module, got {type(model).__name__}"
            )
        if any(model is m for m in self.seen):
            raise ValueError("model_fn() returned the same model object twice: it must build a "
                             "fresh model on every call")
        self.seen = self.seen[-1:] + [model]
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if self.reference is None:
            self.reference = state
        elif state.keys() != self.reference.keys() or not all(
            torch.equal(state[k], self.reference[k]) for k in state
        ):
            raise ValueError(
                "model_fn() must return the same initialisation on every call; it is called "
                "under torch.manual_seed(seed), so seed any other generator it uses"
            )
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("model_fn() returned a model without trainable parameters")
        return model


# ------------------------------------------------------------------------------------ the sweep


class _Run:
    """One (batch size, learning rate, repeat) training run."""

    def __init__(self, model, opt, tracker, lr, repeat):
        self.model, self.opt, self.tracker, self.lr, self.repeat = model, opt, tracker, lr, repeat
        self.alive = True
        self.status = "running"
        self.crossed: int | None = None
        self.estimate = None
        self.loss = math.nan
        self.extra: dict[str, Any] = {}
        self.hist: list[dict[str, Any]] = []

    def close(self):
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None


def _train_step(run: _Run, loss_fn: Callable, batch: tuple[Any, Any]) -> None:
    x, y = batch
    loss = loss_fn(_call_model(run.model, x), y)
    if not torch.isfinite(loss.detach()).all():
        run.alive, run.status = False, "diverged"
        run.opt.zero_grad(set_to_none=True)
        return
    loss.backward()
    if run.tracker is not None:
        run.estimate = run.tracker.step()
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)


def critical_batch_size(
    model_fn: Callable[[], nn.Module],
    loss_fn: Callable[[Any, Any], Tensor],
    sample: Sampler,
    *,
    batch_sizes: Sequence[int],
    target_loss: float,
    eval_data: Any,
    lrs: Sequence[float],
    optimizer: OptimizerSpec = "sgd",
    max_steps: int = 10_000,
    seed: int = 0,
    progress: bool = True,
    repeats: int = 1,
    eval_every: int = 1,
    track_noise: bool = True,
    gns_beta: float = 0.95,
    b_noise: bool = False,
    noise_batch_size: int = 1024,
    measure_at_target: Callable[[nn.Module], Mapping[str, float]] | None = None,
    diverge_factor: float = 10.0,
    n_boot: int = 2000,
    confidence: float = 0.9,
) -> CriticalBatchSize:
    """Measure :math:`B_\\text{crit}` by training to ``target_loss`` at every batch size.

    For each batch size :math:`B`, one fresh model per learning rate (and repeat) is trained with
    batches ``sample(B, generator)`` -- all learning rates see the same batches -- until the loss
    on ``eval_data`` is at most ``target_loss``. The runs advance in lockstep, so the first
    learning rate to get there ends the others (``"stopped"``): no run trains longer than the
    winner. :math:`S` is the winner's crossing step (with ``repeats`` > 1: the median over
    repeats -- the upper median for an even number --, and a learning rate wins once more than
    half of its repeats got there) and :math:`E = BS`. The
    front is then fitted by :func:`fit_front` and bootstrapped.

    Alongside, a :class:`~foresight.gns.GradientNoiseScale` tracker (``beta=gns_beta``) on every
    run gives :math:`B_\\text{simple}` at the crossing -- the prediction beside the measurement;
    and :func:`~foresight.gns.noise_scale` measures it once more at the crossing on a fresh batch
    of ``noise_batch_size`` examples (the tracker's average lags behind a fast-falling
    :math:`|G|^2`; the fresh batch does not); with ``b_noise=True``,
    :func:`~foresight.gns.b_noise` is computed on the same batch (64 probes). Each is reported
    per batch size and pooled (means of the parts, see :class:`CriticalBatchSize`); an
    unresolved one is ``nan`` with its lower bound.

    Args:
        model_fn: ``model_fn()`` returns a fresh model. It is called under
            ``torch.manual_seed(seed)`` (the caller's random state is left alone), and every call
            must give the same initialisation (checked).
        loss_fn: ``loss_fn(model(inputs), targets)``, the batch **mean** loss.
        sample: ``sample(batch_size, generator) -> (inputs, targets)``: a fresh batch; draw all
            randomness from ``generator`` so that runs are reproducible.
        batch_sizes: at least two different batch sizes (five or more spread over a factor of
            100 or more fit well).
        target_loss: the loss on ``eval_data`` to reach; it must be below the initial loss.
        eval_data: ``(inputs, targets)`` evaluated with ``loss_fn`` in eval mode without
            gradients, or a callable ``model -> loss``.
        lrs: learning rates tried at every batch size. The largest should reach the stability
            edge (runs there diverge), or :math:`B_\\text{crit}` is underestimated; a note says
            when a batch size's best learning rate is the largest or smallest tried.
        optimizer: ``"sgd"``, ``"adam"`` or a callable ``(params, lr) -> Optimizer``.
        max_steps: steps after which a batch size counts as not reaching the target.
        seed: seed of the models and of the batches.
        progress: a progress bar on stderr.
        repeats: independent data streams per learning rate (the median crossing step counts).
        eval_every: evaluate every this many steps (the crossing step is then a multiple of it).
        track_noise: run the noise-scale tracker (about doubles the cost of a step).
        gns_beta: the tracker's EMA decay.
        b_noise: also measure :math:`B_\\text{noise}` at the crossing.
        noise_batch_size: the fresh batch measured at the crossing (0: none; then no
            ``b_simple_batch`` and no ``b_noise``).
        measure_at_target: ``f(model) -> {name: value}`` called on the kept run's model at the
            crossing; the values join that batch size's row.
        diverge_factor: a run whose evaluation loss exceeds this multiple of the initial loss
            (or is not finite) has diverged.
        n_boot: bootstrap resamples for the interval.
        confidence: the interval's level.

    Returns:
        :class:`CriticalBatchSize`. ``runs`` holds one row per batch size: ``batch_size``,
        ``lr``, ``steps``, ``examples``, ``reached``, ``status`` (``"reached"``,
        ``"not reached"``, ``"diverged"``), ``lr_edge`` (``"largest"``/``"smallest"`` when the
        best learning rate is at an end of ``lrs``), ``fitted_steps``, ``residual``,
        ``b_simple``, ``b_simple_se``, ``b_simple_lower``, ``b_simple_resolved`` (the tracker),
        ``b_simple_batch``, ``b_simple_batch_lower`` (the fresh batch) and ``b_noise`` at the
        crossing, and the values of ``measure_at_target``. Batch sizes that never reached
        the target are in the table (``reached`` false) and in ``notes``, not in the fit.

    Raises:
        ValueError: fewer than two batch sizes, no learning rates, a target the initial model
            already meets, a ``model_fn`` that does not give identical fresh models, a sampler
            that returns the wrong batch size, or another bad argument (the message says which).

    Example:
        >>> import torch
        >>> def model_fn():
        ...     return torch.nn.Linear(4, 1)
        >>> w = torch.tensor([[1.0, -2.0, 0.5, 0.0]])
        >>> def sample(n, g):
        ...     x = torch.randn(n, 4, generator=g)
        ...     return x, x @ w.T + 0.1 * torch.randn(n, 1, generator=g)
        >>> x_eval = torch.randn(512, 4, generator=torch.Generator().manual_seed(1))
        >>> res = critical_batch_size(model_fn, torch.nn.functional.mse_loss, sample,
        ...     batch_sizes=[2, 8, 32, 128], target_loss=0.05, eval_data=(x_eval, x_eval @ w.T),
        ...     lrs=[0.05, 0.1, 0.2, 0.4, 0.8], progress=False, track_noise=False)
        >>> [r["reached"] for r in res.runs], res.b_crit > 0
        ([True, True, True, True], True)
    """
    batch_sizes = _check_batch_sizes(batch_sizes)
    lrs = _check_lrs(lrs)
    make_opt = _make_optimizer(optimizer)
    _check_int("max_steps", max_steps, 1)
    _check_int("repeats", repeats, 1)
    _check_int("eval_every", eval_every, 1)
    _check_int("noise_batch_size", noise_batch_size, 0)
    if noise_batch_size == 1:
        raise ValueError("noise_batch_size must be 0 (none) or at least 2")
    if b_noise and noise_batch_size == 0:
        raise ValueError("b_noise=True needs a noise_batch_size of at least 2")
    _check_int("n_boot", n_boot, 0)
    if not math.isfinite(float(target_loss)):
        raise ValueError(f"target_loss must be a finite number, got {target_loss!r}")
    if not 0.0 <= gns_beta < 1.0:
        raise ValueError(f"gns_beta must be in [0, 1), got {gns_beta}")
    if not diverge_factor > 1.0:
        raise ValueError(f"diverge_factor must be > 1, got {diverge_factor}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    target = float(target_loss)
    evaluate = _evaluator(eval_data, loss_fn)
    fresh = _Fresh(model_fn, seed)

    with _fork_rng():
        torch.manual_seed(seed)
        first = fresh()
        initial = evaluate(first)
        del first
        if not math.isfinite(initial):
            raise ValueError(f"the initial model's loss on eval_data is {initial!r}")
        if initial <= target:
            raise ValueError(
                f"target already met at step 0: the initial loss on eval_data is {initial:.6g} "
                f"<= target_loss {target:.6g}; choose a lower target_loss"
            )
        rows, trials, history, notes = [], [], [], []
        bar = _progress(batch_sizes, total=len(batch_sizes), desc="batch sizes", enabled=progress)
        for b in bar:
            row, tr, hist = _sweep_one(
                b, fresh, loss_fn, sample, make_opt, evaluate, lrs,
                target=target, initial=initial, max_steps=max_steps, seed=seed,
                repeats=repeats, eval_every=eval_every, track_noise=track_noise,
                gns_beta=gns_beta, want_b_noise=b_noise, noise_batch_size=noise_batch_size,
                measure_at_target=measure_at_target, diverge_factor=diverge_factor, bar=bar,
            )
            rows.append(row)
            trials.extend(tr)
            history.extend(hist)

    reached = [r for r in rows if r["reached"]]
    missing = [r["batch_size"] for r in rows if not r["reached"]]
    if missing:
        notes.append(
            f"batch size(s) {missing} did not reach the target loss {target:g} within "
            f"{max_steps} steps at any learning rate (left out of the fit)"
        )
    for edge, word in (("largest", "upward"), ("smallest", "downward")):
        at = [r["batch_size"] for r in reached if r["lr_edge"] == edge]
        if at and len(lrs) > 1:
            notes.append(
                f"the best learning rate at batch size(s) {at} is the {edge} tried: extend lrs "
                f"{word}" + (" (B_crit is underestimated if larger batches could use larger "
                             "learning rates)" if edge == "largest" else "")
            )
    fit: dict[str, Any] = dict(s_min=math.nan, e_min=math.nan, b_crit=math.nan, reason="")
    interval = (math.nan, math.nan)
    if len({r["batch_size"] for r in reached}) >= 2:
        bs = [r["batch_size"] for r in reached]
        ss = [r["steps"] for r in reached]
        fit = fit_front(bs, ss)
        for r, f, res in zip(reached, fit["fitted"], fit["residuals"]):
            r["fitted_steps"], r["residual"] = f, res
        if len(reached) >= 3 and n_boot > 0:
            gen = torch.Generator().manual_seed(seed)
            interval = _bootstrap(bs, fit, ss, n_boot=n_boot, confidence=confidence,
                                  generator=gen)
        else:
            notes.append("fewer than three batch sizes reached the target: no interval")
        if math.isfinite(fit["b_crit"]) and not min(bs) <= fit["b_crit"] <= max(bs):
            notes.append(
                f"B_crit = {fit['b_crit']:.4g} lies outside the batch sizes that reached the "
                f"target ({min(bs)}..{max(bs)}): it is an extrapolation"
            )
    else:
        fit["reason"] = (
            f"only {len(reached)} batch size(s) reached the target: at least two are needed"
        )
    # the tracker's average reaches back about 1/(1 - beta) steps: in a shorter run it mixes in
    # the start of training, so only runs of at least 3/(1 - beta) steps are pooled
    window = 3.0 / (1.0 - gns_beta) if gns_beta > 0 else 0.0
    long_runs = [r for r in reached if r["steps"] >= window]
    short = [r["batch_size"] for r in reached if r["steps"] < window]
    if track_noise and short and reached:
        notes.append(
            f"the tracker's B_simple at the target leaves out batch size(s) {short}: their runs "
            f"are shorter than 3/(1 - gns_beta) = {window:.0f} steps, so its moving average "
            "still holds the start of training"
        )
    tracker_pool = _pool([r.get("_tracker") for r in long_runs])
    for msg in dict.fromkeys(r.pop("_note") for r in rows if "_note" in r):
        notes.append(msg)
    batch_pool = _pool([r.pop("_batch", None) for r in reached])
    for r in rows:
        r.pop("_tracker", None)
        r.pop("_batch", None)
    b_noises = [r["b_noise"] for r in reached if math.isfinite(r.get("b_noise", math.nan))]
    for n in notes:
        warnings.warn(f"critical_batch_size: {n}", stacklevel=2)
    return CriticalBatchSize(
        b_crit=fit["b_crit"],
        s_min=fit["s_min"],
        e_min=fit["e_min"],
        interval=interval,
        confidence=confidence,
        residuals=[r["residual"] for r in reached] if reached and "residual" in reached[0]
        else [],
        runs=rows,
        trials=trials,
        b_simple=tracker_pool.b_simple if tracker_pool is not None else math.nan,
        b_simple_lower=tracker_pool.b_simple_lower if tracker_pool is not None else math.nan,
        b_simple_batch=batch_pool.b_simple if batch_pool is not None else math.nan,
        tracker_estimate=tracker_pool,
        batch_estimate=batch_pool,
        b_noise=statistics.median(b_noises) if b_noises else math.nan,
        target_loss=target,
        history=history,
        reason=fit["reason"],
        notes=notes,
    )


def _check_batch_sizes(batch_sizes: Sequence[int]) -> list[int]:
    try:
        values = list(batch_sizes)
    except TypeError:
        raise ValueError(f"batch_sizes must be a list of integers, got {batch_sizes!r}") from None
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"batch_sizes must be positive integers, got {v!r}")
    distinct = sorted(set(values))
    if len(distinct) < 2:
        raise ValueError(
            f"critical_batch_size needs at least two different batch sizes (got {values}): "
            "B_crit is where steps stop falling as the batch grows, so several sizes spread "
            "over a factor of 100 or more are needed"
        )
    return distinct


def _check_lrs(lrs: Sequence[float]) -> list[float]:
    try:
        values = [float(v) for v in lrs]
    except TypeError:
        raise ValueError(f"lrs must be a list of learning rates, got {lrs!r}") from None
    if not values:
        raise ValueError(
            "lrs is empty: give the learning rates to try at every batch size, e.g. a geometric "
            "grid up to where training diverges"
        )
    if any(not (v > 0 and math.isfinite(v)) for v in values):
        raise ValueError(f"lrs must be positive finite numbers, got {list(lrs)}")
    return sorted(set(values))


def _sweep_one(
    b: int,
    fresh: _Fresh,
    loss_fn: Callable,
    sample: Sampler,
    make_opt: Callable,
    evaluate: Callable[[nn.Module], float],
    lrs: list[float],
    *,
    target: float,
    initial: float,
    max_steps: int,
    seed: int,
    repeats: int,
    eval_every: int,
    track_noise: bool,
    gns_beta: float,
    want_b_noise: bool,
    noise_batch_size: int,
    measure_at_target: Callable | None,
    diverge_factor: float,
    bar: Any,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    from foresight.gns.tracker import GradientNoiseScale

    runs: list[_Run] = []
    for lr in lrs:
        for rep in range(repeats):
            model = fresh()
            model.train()
            opt = make_opt(model.parameters(), lr)
            tracker = GradientNoiseScale(model, beta=gns_beta) if track_noise and b >= 2 else None
            runs.append(_Run(model, opt, tracker, lr, rep))
    gens = [torch.Generator().manual_seed(_mix(seed, b, rep)) for rep in range(repeats)]
    winner: float | None = None
    step = 0
    shown = -math.inf
    try:
        for step in range(1, max_steps + 1):
            batches = []
            for rep in range(repeats):
                batch = sample(b, gens[rep])
                n = _batch_len(batch)
                if n != b:
                    raise ValueError(
                        f"sample({b}, generator) returned a batch of {n} examples, not {b}"
                    )
                batches.append(batch)
            for run in runs:
                if run.alive and run.crossed is None:  # a run stops where it crossed
                    _train_step(run, loss_fn, batches[run.repeat])
            if step % eval_every and step != max_steps:
                continue
            for run in runs:
                if not run.alive or run.crossed is not None:
                    continue
                run.loss = evaluate(run.model)
                if not math.isfinite(run.loss) or run.loss > diverge_factor * initial:
                    run.alive, run.status = False, "diverged"
                elif run.loss <= target:
                    run.crossed = step
                    run.status = "reached"
                    _at_target(run, loss_fn, sample, b, seed, want_b_noise, noise_batch_size,
                               measure_at_target)
            winner = _winner(runs, lrs, repeats)
            if step <= 10 or step % max(1, step // 20) == 0:  # about 20 points per decade
                for run in runs:
                    if run.alive and run.crossed is None:
                        run.hist.append(_hist(b, step, run))
            now = time.monotonic()
            if now - shown > 0.5:  # the bar's postfix, twice a second
                shown = now
                bar.set_postfix(B=b, step=step, best=min(
                    (r.loss for r in runs if r.alive and math.isfinite(r.loss)),
                    default=math.nan))
            if winner is not None or not any(r.alive and r.crossed is None for r in runs):
                break
    finally:
        for run in runs:
            run.close()
    trials = []
    for lr in lrs:
        mine = [r for r in runs if r.lr == lr]
        crossed = [r.crossed for r in mine if r.crossed is not None]
        if lr == winner:
            status = "reached"
        elif all(r.status == "diverged" for r in mine):
            status = "diverged"
        elif winner is not None:
            status = "stopped"
        else:
            status = "max_steps" if any(r.status == "running" for r in mine) else "diverged"
        trials.append(dict(
            batch_size=b, lr=lr, status=status,
            steps=sorted(crossed)[repeats // 2] if lr == winner else step,
        ))
    row: dict[str, Any] = dict(
        batch_size=b, lr=math.nan, steps=None, examples=None, reached=False,
        status="not reached", lr_edge="", fitted_steps=math.nan, residual=math.nan,
        b_simple=math.nan, b_simple_se=math.nan, b_simple_lower=math.nan,
        b_simple_resolved=False,
    )
    if noise_batch_size:
        row.update(b_simple_batch=math.nan, b_simple_batch_lower=math.nan)
    if want_b_noise:
        row["b_noise"] = math.nan
    history: list[dict[str, Any]] = []
    if all(t["status"] == "diverged" for t in trials):
        row["status"] = "diverged"
    if winner is not None:
        mine = sorted((r for r in runs if r.lr == winner and r.crossed is not None),
                      key=lambda r: r.crossed)
        kept = mine[repeats // 2]  # the median run (the upper one for even repeats)
        steps = kept.crossed
        row.update(lr=winner, steps=steps, examples=steps * b, reached=True, status="reached")
        if len(lrs) > 1:
            row["lr_edge"] = ("largest" if winner == lrs[-1]
                              else "smallest" if winner == lrs[0] else "")
        est = kept.estimate
        row.update(
            b_simple=float(est.b_simple) if est is not None else math.nan,
            b_simple_se=float(est.b_simple_se) if est is not None else math.nan,
            b_simple_lower=float(est.b_simple_lower) if est is not None else math.nan,
            b_simple_resolved=bool(est.resolved) if est is not None else False,
            _tracker=est,
        )
        row.update(kept.extra)
        history = kept.hist + [_hist(b, kept.crossed, kept)]
    return row, trials, history


def _hist(b: int, step: int, run: _Run) -> dict[str, Any]:
    est = run.estimate
    return dict(
        batch_size=b, step=step, examples=step * b, loss=run.loss,
        b_simple=float(est.b_simple) if est is not None else math.nan,
        b_simple_lower=float(est.b_simple_lower) if est is not None else math.nan,
    )


def _winner(runs: list[_Run], lrs: list[float], repeats: int) -> float | None:
    """The learning rate with more than half of its repeats at the target (lowest median loss
    among ties), or ``None``."""
    best, best_loss = None, math.inf
    for lr in lrs:
        mine = [r for r in runs if r.lr == lr]
        done = [r for r in mine if r.crossed is not None]
        if 2 * len(done) > repeats:
            loss = statistics.median(r.loss for r in done)
            if loss < best_loss:
                best, best_loss = lr, loss
    return best


def _at_target(run: _Run, loss_fn, sample, b, seed, want_b_noise, noise_batch_size,
               measure_at_target) -> None:
    if noise_batch_size:
        from foresight.gns.estimators import noise_scale
        from foresight.gns.hessian import b_noise

        gen = torch.Generator().manual_seed(_mix(seed, b, 10_000 + run.repeat))
        x, y = sample(noise_batch_size, gen)
        est = noise_scale(run.model, loss_fn, x, y)
        run.extra.update(b_simple_batch=est.b_simple, b_simple_batch_lower=est.b_simple_lower,
                         _batch=est)
        if want_b_noise:
            probe_gen = torch.Generator().manual_seed(seed)
            try:
                value = b_noise(run.model, loss_fn, x, y, probes=min(64, noise_batch_size),
                                generator=probe_gen)
            except (RuntimeError, ValueError) as exc:  # e.g. an op without a double backward
                run.extra["_note"] = f"B_noise could not be measured: {_short(exc)}"
                value = math.nan
            run.extra["b_noise"] = float(value) if value > 0 else math.nan
    if measure_at_target is not None:
        values = measure_at_target(run.model)
        if not isinstance(values, Mapping):
            raise ValueError("measure_at_target(model) must return a mapping {name: value}")
        run.extra.update({str(k): v for k, v in values.items()})


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: " + (text if len(text) <= 160 else text[:157] + "...")


def _mix(*values: int) -> int:
    """A deterministic seed from several integers."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3 & 0xFFFFFFFFFFFFFFFF
    return h % (2**63 - 1)


# ---------------------------------------------------------------------------- the branched form


def critical_batch_size_branched(
    model_fn: Callable[[], nn.Module],
    loss_fn: Callable[[Any, Any], Tensor],
    sample: Sampler,
    *,
    batch_size: int,
    lr: float,
    eval_data: Any,
    checkpoints: Sequence[int],
    window: int,
    ks: Sequence[int] = (1, 2, 4, 8, 16),
    lr_rule: str | Callable[[float, float], float] | None = None,
    optimizer: OptimizerSpec = "sgd",
    tolerance: float = 0.25,
    seed: int = 0,
    progress: bool = True,
    gns_beta: float = 0.95,
) -> BranchedCriticalBatchSize:
    """:math:`B_\\text{crit}` through training, by branching from checkpoints (after Merrill,
    Arora, Groeneveld & Hajishirzi 2025).

    A reference run trains at ``batch_size`` :math:`B_0` with learning rate ``lr``, tracking
    :math:`B_\\text{simple}`. At each checkpoint step :math:`t` the model and optimizer state are
    copied; the reference loss is the reference run's evaluation loss at :math:`t + W`
    (:math:`W` = ``window``). For each :math:`k` in ``ks`` a branch restarts from the copy with
    batch :math:`kB_0` and learning rate ``lr_rule(k, lr)`` and trains until it reaches the
    reference loss, for at most :math:`\\lceil (1 + \\text{tolerance})\\,W/k \\rceil` steps:
    the same number of examples, give or take the tolerance. :math:`k` is *accepted* if it gets
    there; :math:`B_\\text{crit}(t) = k^* B_0` with :math:`k^*` the largest :math:`k` such that
    it and every smaller :math:`k` tried were accepted (``bound="lower"`` when that is the
    largest :math:`k` tried). :math:`k = 1` is the control: a branch with fresh batches of the
    reference size, which fails only if the tolerance is too small for the noise of the run.

    Args:
        model_fn, loss_fn, sample, eval_data, optimizer, seed, progress, gns_beta: as in
            :func:`critical_batch_size`.
        batch_size: the reference batch size :math:`B_0`.
        lr: the reference learning rate.
        checkpoints: steps of the reference run to branch from (``0`` is the initial model).
        window: :math:`W`, at least the largest :math:`k`.
        ks: batch multipliers to try (1 is added if missing).
        lr_rule: ``"linear"``, ``"sqrt"``, ``"constant"`` or ``(k, lr) -> lr``; default
            ``"linear"`` for SGD and ``"sqrt"`` for Adam (required for a custom optimizer).
        tolerance: the step budget's slack (see above).

    Returns:
        :class:`BranchedCriticalBatchSize`.

    Raises:
        ValueError: bad arguments (the message says which).
    """
    _check_int("batch_size", batch_size, 1)
    _check_int("window", window, 1)
    if not (float(lr) > 0 and math.isfinite(float(lr))):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    ks = sorted({int(k) for k in ks} | {1})
    if ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if window < ks[-1]:
        raise ValueError(
            f"window ({window} steps) must be at least the largest k ({ks[-1]}): a branch needs "
            "at least one step"
        )
    cps = sorted({int(c) for c in checkpoints})
    if not cps or cps[0] < 0:
        raise ValueError(f"checkpoints must be non-negative steps, got {list(checkpoints)}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if lr_rule is None:
        if optimizer == "sgd":
            lr_rule = "linear"
        elif optimizer == "adam":
            lr_rule = "sqrt"
        else:
            raise ValueError("lr_rule is required with a custom optimizer: how should the "
                             "learning rate grow with the batch?")
    lr_scaled(lr_rule, 2, float(lr))  # validates the rule
    make_opt = _make_optimizer(optimizer)
    evaluate = _evaluator(eval_data, loss_fn)
    fresh = _Fresh(model_fn, seed)
    from foresight.gns.tracker import GradientNoiseScale

    with _fork_rng():
        torch.manual_seed(seed)
        model = fresh()
        model.train()
        opt = make_opt(model.parameters(), float(lr))
        gen = torch.Generator().manual_seed(_mix(seed, batch_size))
        saved: dict[int, tuple[dict, dict, Any, float]] = {}
        ref_loss: dict[int, float] = {}
        last = cps[-1] + window
        want_loss = set(cps) | {c + window for c in cps}
        tracker = GradientNoiseScale(model, beta=gns_beta) if batch_size >= 2 else None
        est = None
        try:
            bar = _progress(range(last + 1), total=last + 1, desc="reference run",
                            enabled=progress)
            for step in bar:
                if step in want_loss:
                    ref_loss[step] = evaluate(model)
                if step in cps:
                    saved[step] = (copy.deepcopy(model.state_dict()),
                                   copy.deepcopy(opt.state_dict()), est, ref_loss[step])
                if step == last:
                    break
                batch = sample(batch_size, gen)
                if _batch_len(batch) != batch_size:
                    raise ValueError(f"sample({batch_size}, generator) returned a batch of "
                                     f"{_batch_len(batch)} examples")
                run = _Run(model, opt, tracker, float(lr), 0)
                _train_step(run, loss_fn, batch)
                est = run.estimate if tracker is not None else None
                if not run.alive:
                    raise ValueError(f"the reference run diverged at step {step + 1}: lower lr")
        finally:
            if tracker is not None:
                tracker.close()

        rows, branches, notes = [], [], []
        work = [(c, k) for c in cps for k in ks]
        bar = _progress(work, total=len(work), desc="branches", enabled=progress)
        results: dict[tuple[int, int], dict[str, Any]] = {}
        for c, k in bar:
            state, opt_state, _, _ = saved[c]
            results[(c, k)] = _branch(
                fresh, make_opt, loss_fn, sample, evaluate, state, opt_state,
                batch=k * batch_size, lr=lr_scaled(lr_rule, k, float(lr)),
                goal=ref_loss[c + window], budget=math.ceil((1 + tolerance) * window / k),
                seed=_mix(seed, c, k),
            )
            branches.append(dict(step=c, k=k, batch_size=k * batch_size,
                                 lr=lr_scaled(lr_rule, k, float(lr)), **results[(c, k)],
                                 efficiency=(window / k) / results[(c, k)]["steps"]
                                 if results[(c, k)]["steps"] else 0.0))
        for c in cps:
            k_star = None
            for k in ks:
                if results[(c, k)]["accepted"]:
                    k_star = k
                else:
                    break
            est = saved[c][2]
            rows.append(dict(
                step=c, examples=c * batch_size, loss=saved[c][3],
                reference_loss=ref_loss[c + window],
                b_crit=float(k_star * batch_size) if k_star is not None else math.nan,
                bound="lower" if k_star == ks[-1] else "",
                b_simple=float(est.b_simple) if est is not None else math.nan,
                b_simple_se=float(est.b_simple_se) if est is not None else math.nan,
                b_simple_lower=float(est.b_simple_lower) if est is not None else math.nan,
            ))
            if k_star is None:
                notes.append(
                    f"at step {c} even the control branch (k=1) missed the reference loss: "
                    "raise tolerance or window (the runs are noisier than the budget allows)"
                )
            elif k_star == ks[-1]:
                notes.append(f"at step {c} the largest k tried ({ks[-1]}) was accepted: "
                             "B_crit is at least that, try larger ks")
    for n in notes:
        warnings.warn(f"critical_batch_size_branched: {n}", stacklevel=2)
    return BranchedCriticalBatchSize(
        batch_size=batch_size, lr=float(lr), window=window, checkpoints=rows,
        branches=branches, notes=notes,
    )


def _branch(fresh, make_opt, loss_fn, sample, evaluate, state, opt_state, *, batch, lr, goal,
            budget, seed) -> dict[str, Any]:
    model = fresh()
    model.load_state_dict(state)
    model.train()
    opt = make_opt(model.parameters(), lr)
    opt.load_state_dict(copy.deepcopy(opt_state))
    for group in opt.param_groups:
        group["lr"] = lr
    gen = torch.Generator().manual_seed(seed)
    run = _Run(model, opt, None, lr, 0)
    for step in range(1, budget + 1):
        _train_step(run, loss_fn, sample(batch, gen))
        if not run.alive:
            return dict(steps=None, allowed=budget, accepted=False, loss=math.nan)
        loss = evaluate(model)
        if not math.isfinite(loss):
            return dict(steps=None, allowed=budget, accepted=False, loss=loss)
        if loss <= goal:
            return dict(steps=step, allowed=budget, accepted=True, loss=loss)
    return dict(steps=None, allowed=budget, accepted=False, loss=loss)
