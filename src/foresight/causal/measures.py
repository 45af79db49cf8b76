r"""Perturbational (causal) information measures of one weight layer.

Mattsson (Marrow), Michaud & Hoel (2020) measure what a layer :math:`L_1 \to L_2` does by
*intervening* on its inputs: every input neuron is set independently and uniformly at random over
its range :math:`[\ell, u]` (the maximum-entropy intervention :math:`do(L_1 = H^{\max})`), and the
outputs :math:`t_B = f\bigl(\sum_A W_{AB}\, t_A + b_B\bigr)` (after the activation :math:`f`) are
observed. With inputs and outputs each binned into :math:`b` equal bins (inputs over
``in_range``, outputs over ``out_range``; values outside a range clipped into its edge bins):

.. math::
    \text{EI}(L_1 \to L_2) &= I(\mathbf{t}_{L_1}; \mathbf{t}_{L_2})
        \ \big|\ do(L_1 = H^{\max}) \\
    \text{EI}_{\text{parts}} &= \sum_{A \in L_1} \sum_{B \in L_2} I(t_A; t_B)
        \ \big|\ do(L_1 = H^{\max}) \\
    \text{sensitivity} &= \sum_{A \in L_1} \sum_{B \in L_2} I(t_A; t_B)
        \ \big|\ do(A = H^{\max},\ L_1 \setminus A = 0) \\
    \text{degeneracy} &= \text{sensitivity} - \text{EI}_{\text{parts}}

All in bits, of the *binned* variables: the value is the mutual information of the exact
(infinite-sample) cell probabilities, which the estimators below approach.

**Methods.** ``method="auto"`` (the default) computes EI_parts and sensitivity *exactly*, without
samples, when the activation is monotone (sigmoid, tanh, ReLU, identity, ... -- the list and the
method are in :mod:`foresight.causal.exact`), and samples them otherwise; ``"exact"`` insists (a
``ValueError`` where it cannot), ``"sampled"`` always samples. EI of the joint states has no
sample-free form and is always sampled. Every result says which method gave it.

**Sampled estimator** (exactly): ``N`` input vectors are drawn; each is binned neuron by neuron,
and the joint input state is the tuple of the bins (likewise for the outputs). ``EI`` is the
plug-in mutual information between the joint input states and the joint output states (the
tuples are numbered exactly, with no table of all states:
:func:`~foresight.causal.histogram.pack_rows`); ``EI_parts`` and sensitivity sum the plug-in
mutual information of the :math:`b \times b` histograms of every (input, output) pair. For
sensitivity each input neuron ``A`` gets its own ``N`` samples while every other input is held at 0
(also when 0 lies outside ``in_range``, as in the paper), so its outputs are
:math:`f(W_{AB}\, t_A + b_B)`: a layer's bias is kept throughout.

**Sample-limited estimates.** A plug-in estimate from ``N`` samples cannot exceed
:math:`\log_2 N`, and when :math:`b^{n_{in}} \gg N` nearly every sampled joint input state is new:
the plug-in ``EI`` then measures the sampler, not the layer (it grows like :math:`\log_2 N`). Each
sampled result carries an estimated plug-in ``bias`` (bits):

* pairwise measures: the first-order (Miller--Madow) term
  :math:`\sum_{AB} |K_{xy} - K_x - K_y + 1| / (2N\ln 2)` over the pair histograms
  (:math:`K`: occupied cells, rows, columns; about :math:`(b-1)^2/(2N\ln 2)` per pair of
  independent-looking neurons);
* EI: that term for the joint states plus :math:`(N_1/N)\, \hat H(Y)`, where :math:`N_1` samples
  fell into joint input states seen only once (their conditional entropy is estimated as 0,
  whatever it is: at most :math:`\hat H(Y)` is missed).

An estimate is **limited by the samples** (``limited_by="samples"``, ``converged=False``, a
``RuntimeWarning`` naming the layer and what to do) when its bias exceeds the tolerance, or when
a value that a plug-in estimate caps at :math:`\log_2 N` (EI; each pair of a pairwise measure)
lies within 1 bit of :math:`\log_2 N`. The tolerance of a value :math:`v` is
:math:`\max(\text{ABSOLUTE\_FLOOR}, \min(\text{tolerance}\cdot|v|, \text{atol}))`: relative
*and* absolute (default 5 % and :data:`ATOL` = 0.5 bits).

**Sample count.** A fixed ``samples`` with a ``seed`` is reproducible bit for bit; its result is
``converged`` when it is not sample-limited. With ``samples=None`` (the paper's procedure) the
estimate is made with :data:`START_SAMPLES`, then the sample count is doubled (the new samples are
added to the old) until the estimate changes by at most the tolerance and is not sample-limited,
or ``max_samples`` is reached, or more samples up to ``max_samples`` cannot help (the input state
space :math:`b^{n_{in}}` is larger than ``max_samples``, or the bias, which halves per doubling,
would still exceed the tolerance there): then ``converged`` is ``False`` and a warning is issued.

**Default output range**: the activation's range when it is bounded (sigmoid :math:`(0, 1)`,
tanh :math:`(-1, 1)`, ...); otherwise the exact range of the outputs over both interventions,
found from the pre-activation bounds (interval arithmetic on the affine map) and the activation
evaluated on a fine grid between them. An output range of zero width (constant outputs) is widened
to one unit around the constant.

>>> import torch
>>> layer = torch.nn.Linear(2, 2, bias=False)
>>> with torch.no_grad():
...     _ = layer.weight.copy_(torch.eye(2))
>>> r = ei_parts(layer, bins=8, out_range=(0, 1))
>>> r.value, r.method, r.samples  # identity: 2 pairs x log2(8) bits, no sampling
(6.0, 'exact', None)
>>> s = ei_parts(layer, bins=8, out_range=(0, 1), samples=20000, seed=0, method="sampled")
>>> round(s.value, 1), s.samples, s.converged
(6.0, 20000, True)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from foresight._progress import bar as progress_bar
from foresight.causal import exact
from foresight.causal import histogram as hist
from foresight.causal.activations import (
    Activation,
    activation_name,
    apply,
    apply_,
    check_activation,
    known_range,
)
from foresight.causal.affine import affine_map
from foresight.results import CAUSAL_CONVERGED_KEYS, CAUSAL_RECORD_KEYS, Result

__all__ = [
    "CausalValue",
    "LayerCausal",
    "layer_ei",
    "ei_parts",
    "sensitivity",
    "degeneracy",
    "layer_measures",
    "START_SAMPLES",
    "MAX_SAMPLES",
    "ABSOLUTE_FLOOR",
    "ATOL",
    "METHODS",
]

#: First sample count of the adaptive procedure (the paper's).
START_SAMPLES = 10_000
#: Default cap of the adaptive procedure: 10^4 doubled 7 times.
MAX_SAMPLES = 1_280_000
#: Two estimates closer than this (bits) count as settled whatever the tolerances say.
ABSOLUTE_FLOOR = 0.01
#: Default absolute tolerance (bits) of a sampled estimate: its change per doubling and its
#: estimated bias must stay below it (and below ``tolerance`` times the value).
ATOL = 0.5
#: Samples are drawn ``torch.rand`` block by block, this many rows at a time.
DRAW_BLOCK = 1 << 16
#: Largest number of (input, output, bin, bin) histogram cells a pairwise measure may allocate.
MAX_PAIR_CELLS = 1 << 26
#: The ``method`` values.
METHODS = ("auto", "exact", "sampled")

Range = tuple[float, float]

_MEASURE_OF = {key: measure for measure, key in CAUSAL_RECORD_KEYS.items()}
_FLAGGED = {key: measure for measure, key in CAUSAL_CONVERGED_KEYS.items()}


def _field_value(row: Any, field: str) -> Any:
    """A causal record field of a row (:class:`LayerCausal`, ``CausalRow``): a measure under its
    record key (``causal_ei`` is ``row.ei``), or a convergence flag."""
    if field in _MEASURE_OF:
        return getattr(row, _MEASURE_OF[field])
    if field in _FLAGGED:
        return _FLAGGED[field] not in row.unconverged
    return getattr(row, field)


@dataclass
class CausalValue(Result):
    """One measure of one layer (bits), with the estimator settings that produced it.

    ``float(value)`` gives the number. ``samples`` is ``None`` for an exact value.
    ``limited_by`` is ``"samples"`` when the sample count limits the estimate (then
    ``converged`` is ``False``; ``note`` says why), ``bias`` the estimated plug-in bias (bits,
    0 for exact values).
    """

    measure: str
    value: float
    samples: int | None
    bins: int
    in_range: Range
    out_range: Range
    converged: bool
    method: str = "sampled"
    limited_by: str | None = None
    bias: float = 0.0
    note: str | None = None

    metric = "causal"

    def __float__(self) -> float:
        return float(self.value)

    def _fields(self) -> tuple[str, ...]:
        # the measure under its record key, and its convergence flag if it has one
        key = CAUSAL_RECORD_KEYS.get(self.measure, self.measure)
        flag = CAUSAL_CONVERGED_KEYS.get(self.measure)
        return (key,) if flag is None else (key, flag)

    def _value(self, field: str) -> Any:
        return self.converged if field in _FLAGGED else self.value


@dataclass
class LayerCausal(Result):
    """All four measures of one layer (bits) and how each was obtained.

    ``samples_*`` are ``None`` for exact values; ``converged`` is true when every measure is;
    ``unconverged`` names the ones that are not, ``limited_by`` is ``"samples"`` if any is
    sample-limited; ``bias_*`` are the estimated plug-in biases (0 for exact values).
    """

    ei: float
    ei_parts: float
    sensitivity: float
    degeneracy: float
    samples_ei: int | None
    samples_ei_parts: int | None
    samples_sensitivity: int | None
    bins: int
    in_range: Range
    out_range: Range
    converged: bool
    method_ei_parts: str = "sampled"
    method_sensitivity: str = "sampled"
    limited_by: str | None = None
    unconverged: tuple[str, ...] = field(default_factory=tuple)
    bias_ei: float = 0.0
    bias_ei_parts: float = 0.0
    bias_sensitivity: float = 0.0

    metric = "causal"

    def _value(self, field: str) -> Any:
        return _field_value(self, field)


# ------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class _Setup:
    w: Tensor  # [n_in, n_out]
    b: Tensor  # [n_out]
    activation: Activation
    in_range: Range
    out_range: Range
    bins: int

    @property
    def n_in(self) -> int:
        return self.w.shape[0]

    @property
    def n_out(self) -> int:
        return self.w.shape[1]

    def outputs(self, x: Tensor) -> Tensor:
        """Outputs under the full intervention, ``[S, n_out]``."""
        return apply(self.activation, torch.addmm(self.b, x, self.w))

    def in_bins(self, x: Tensor) -> Tensor:
        return hist.bin_indices(x, *self.in_range, self.bins)

    def out_bins(self, y: Tensor) -> Tensor:
        # a finite sum proves every entry finite: one reduction instead of a mask
        if not math.isfinite(float(y.sum())) and not bool(torch.isfinite(y).all()):
            raise ValueError("the layer gives non-finite outputs under the perturbation")
        return hist.bin_indices(y, *self.out_range, self.bins, inplace=True)


@dataclass(frozen=True)
class _Options:
    samples: int | None
    seed: int
    tolerance: float
    atol: float
    max_samples: int
    method: str
    progress: bool | None

    def allowed(self, value: float) -> float:
        """The error a value of this size may carry (bits)."""
        return max(ABSOLUTE_FLOOR, min(self.tolerance * abs(value), self.atol))


def _check_range(name: str, value: Any) -> Range:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high) of numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise ValueError(f"{name} must satisfy low < high (finite), got {value!r}")
    return (lo, hi)


def _check_options(bins: Any, samples: Any, tolerance: Any, max_samples: Any,
                   atol: Any = ATOL, method: Any = "auto") -> None:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    if samples is not None and (
        isinstance(samples, bool) or not isinstance(samples, int) or samples < 1
    ):
        raise ValueError(f"samples must be None (adaptive) or a positive integer, got {samples!r}")
    if not (isinstance(tolerance, (int, float)) and tolerance > 0):
        raise ValueError(f"tolerance must be a positive number, got {tolerance!r}")
    if isinstance(atol, bool) or not (isinstance(atol, (int, float)) and atol > 0):
        raise ValueError(f"atol must be a positive number of bits, got {atol!r}")
    if not isinstance(max_samples, int) or max_samples < START_SAMPLES:
        raise ValueError(f"max_samples must be an integer >= {START_SAMPLES}, got {max_samples!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _default_out_range(w: Tensor, b: Tensor, activation: Activation, in_range: Range) -> Range:
    bounded = known_range(activation)
    if bounded is not None:
        return bounded
    lo, hi = in_range
    w64, b64 = w.double(), b.double()
    at_lo, at_hi = w64 * lo, w64 * hi
    small, large = torch.minimum(at_lo, at_hi), torch.maximum(at_lo, at_hi)
    # full intervention (box image) and single-input interventions (others at 0)
    pre_lo = torch.minimum(b64 + small.sum(0), b64 + small.min(0).values)
    pre_hi = torch.maximum(b64 + large.sum(0), b64 + large.max(0).values)
    lo_all, hi_all = float(pre_lo.min()), float(pre_hi.max())
    grid = torch.linspace(lo_all, hi_all, 4097, dtype=w.dtype, device=w.device)
    values = apply(activation, grid).double()
    if not bool(torch.isfinite(values).all()):
        raise ValueError("the activation gives non-finite outputs on this layer's range; "
                         "pass out_range=(low, high)")
    out_lo, out_hi = float(values.min()), float(values.max())
    if out_hi - out_lo <= 1e-12 * max(1.0, abs(out_lo)):
        return (out_lo - 0.5, out_lo + 0.5)
    return (out_lo, out_hi)


def _setup(
    layer: nn.Module,
    input_shape: Sequence[int] | None,
    in_range: Any,
    out_range: Any,
    bins: int,
    activation: Activation,
) -> _Setup:
    if not isinstance(layer, nn.Module):
        raise TypeError(f"layer must be an nn.Module, got {type(layer).__name__}")
    check_activation(activation)
    rng_in = _check_range("in_range", in_range)
    w, b, _ = affine_map(layer, input_shape)
    if not w.is_floating_point():
        raise TypeError(f"{type(layer).__name__} has non-floating weights ({w.dtype})")
    rng_out = (
        _default_out_range(w, b, activation, rng_in)
        if out_range is None
        else _check_range("out_range", out_range)
    )
    return _Setup(w, b, activation, rng_in, rng_out, bins)


# ------------------------------------------------------------------------------ estimators
class _Block:
    """One block of noise with its binned inputs and (full-intervention) outputs, made once and
    shared by every measure that needs them."""

    def __init__(self, setup: _Setup, x: Tensor) -> None:
        self.setup, self.x = setup, x
        self._xi: Tensor | None = None
        self._yi: Tensor | None = None

    @property
    def xi(self) -> Tensor:
        if self._xi is None:
            self._xi = self.setup.in_bins(self.x)
        return self._xi

    @property
    def yi(self) -> Tensor:
        if self._yi is None:
            self._yi = self.setup.out_bins(self.setup.outputs(self.x))
        return self._yi


@dataclass(frozen=True)
class _Estimate:
    value: float
    bias: float
    why: str | None  # a reason the estimate is sample-limited whatever its bias, or None
    detail: str = ""  # where the bias comes from (said when it exceeds the tolerance)


class _Estimator:
    """Accumulates samples for one measure; ``estimate()`` uses all so far."""

    def __init__(self, setup: _Setup) -> None:
        self.setup = setup

    def add(self, block: _Block) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def estimate(self) -> _Estimate:  # pragma: no cover - interface
        raise NotImplementedError

    def hopeless(self, est: _Estimate, total: int, options: _Options) -> bool:
        """Whether more samples, up to ``max_samples``, cannot make this estimate acceptable."""
        return est.bias * total / options.max_samples > options.allowed(est.value)


class _JointEI(_Estimator):
    def __init__(self, setup: _Setup) -> None:
        super().__init__(setup)
        self.x_words: list[Tensor] = []
        self.y_words: list[Tensor] = []

    def add(self, block: _Block) -> None:
        self.x_words.append(hist.pack_rows(block.xi, self.setup.bins))
        self.y_words.append(hist.pack_rows(block.yi, self.setup.bins))

    def estimate(self) -> _Estimate:
        x = hist.joint_labels(torch.cat(self.x_words))
        y = hist.joint_labels(torch.cat(self.y_words))
        st = hist.joint_mi(x, y)
        n = st.samples
        bias = (st.singletons_x / n) * st.entropy_y + abs(st.miller_madow)
        why = None
        if st.mi > 0 and st.mi > math.log2(n) - 1.0:
            why = (f"its value is within 1 bit of log2(N) = {math.log2(n):.2f}, the most a "
                   "plug-in estimate from N samples can give")
        detail = ""
        if 2 * st.singletons_x > n:
            detail = (f": most samples fell into joint input states seen only once (of "
                      f"{self.setup.bins}^{self.setup.n_in} possible)")
        return _Estimate(st.mi, bias, why, detail)

    def hopeless(self, est: _Estimate, total: int, options: _Options) -> bool:
        # most input states are new while the state space is larger than the sample cap
        states = self.setup.n_in * math.log2(self.setup.bins)
        return states >= math.log2(options.max_samples)


class _Pairwise(_Estimator):
    def __init__(self, setup: _Setup) -> None:
        super().__init__(setup)
        _check_pair_cells(setup)
        self.counts = hist.PairCounts(setup.n_in, setup.n_out, setup.bins, setup.w.device)
        self.samples = 0

    def estimate(self) -> _Estimate:
        pairs = self.counts.mi()
        value = float(pairs.sum())
        bias = float(self.counts.miller_madow().abs().sum()) if value > 0 else 0.0
        n = self.samples
        top = float(pairs.max()) if pairs.numel() else 0.0
        why = None
        if top > 0 and top > math.log2(n) - 1.0:
            why = (f"a pair's value is within 1 bit of log2(N) = {math.log2(n):.2f}, the most "
                   "a plug-in estimate from N samples can give")
        return _Estimate(value, bias, why)


class _Parts(_Pairwise):
    def add(self, block: _Block) -> None:
        self.counts.add(block.xi, block.yi)
        self.samples += block.x.shape[0]


class _Sensitivity(_Pairwise):
    def add(self, block: _Block) -> None:
        s = self.setup
        x_t = block.x.t()  # [n_in, S]
        xi_t = block.xi.t().contiguous()
        step = max(1, hist.PairCounts.KEY_ELEMENTS // s.n_out)
        b = s.b.view(-1, 1)
        for a in range(s.n_in):
            w_a = s.w[a].view(-1, 1)
            for i in range(0, x_t.shape[1], step):
                # outputs with only input a set: f(b + w_a x_a), [n_out, S]
                pre = torch.addcmul(b, w_a, x_t[a, i : i + step].view(1, -1))
                y_idx = s.out_bins(apply_(s.activation, pre))
                self.counts.add_column(a, xi_t[a, i : i + step], y_idx)
        self.samples += block.x.shape[0]


def _check_pair_cells(setup: _Setup) -> None:
    cells = setup.n_in * setup.n_out * setup.bins**2
    if cells > MAX_PAIR_CELLS:
        raise ValueError(
            f"{setup.n_in} inputs x {setup.n_out} outputs x {setup.bins}^2 bins = {cells} "
            f"histogram cells (limit {MAX_PAIR_CELLS}): use fewer bins or a smaller "
            "input_shape (e.g. one receptive field of a convolution)"
        )


_ESTIMATORS: dict[str, type[_Estimator]] = {
    "ei": _JointEI,
    "ei_parts": _Parts,
    "sensitivity": _Sensitivity,
}


def _resolve_seed(seed: int | None) -> int:
    if seed is None:  # from torch's global generator, so torch.manual_seed governs it
        return int(torch.randint(0, 2**62, (1,)).item())
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be None or an integer, got {seed!r}")
    return seed


def _feed(estimators: list[_Estimator], setup: _Setup, gen: torch.Generator, n: int,
          bar: Any) -> None:
    lo, hi = setup.in_range
    while n > 0:
        m = min(n, DRAW_BLOCK)
        u = torch.rand((m, setup.n_in), generator=gen, dtype=setup.w.dtype)
        x = u if (lo, hi) == (0.0, 1.0) else lo + (hi - lo) * u  # 0 + 1 * u is u, bit for bit
        block = _Block(setup, x.to(setup.w.device))
        for est in estimators:
            est.add(block)
        n -= m
        bar.update(m * len(estimators))


def _value(name: str, setup: _Setup, est: _Estimate, total: int, converged: bool,
           note: str | None) -> CausalValue:
    return CausalValue(name, est.value, total, setup.bins, setup.in_range, setup.out_range,
                       converged, "sampled", None if converged else "samples", est.bias, note)


def _why(est: _Estimate, options: _Options) -> str | None:
    """Why ``est`` is sample-limited, or ``None`` if it is not."""
    if est.why is not None:
        return est.why
    if est.bias > options.allowed(est.value):  # no numbers: one warning text per cause
        return f"its estimated plug-in bias (see bias) exceeds the tolerance{est.detail}"
    return None


def _sampled(names: Sequence[str], setup: _Setup, options: _Options, bar: Any
             ) -> dict[str, CausalValue]:
    """Sample several measures from one stream of noise (the same numbers as one at a time)."""
    ests = {name: _ESTIMATORS[name](setup) for name in names}
    if not ests:
        return {}
    gen = torch.Generator().manual_seed(options.seed)
    if options.samples is not None:
        _feed(list(ests.values()), setup, gen, options.samples, bar)
        out = {}
        for name, e in ests.items():
            est = e.estimate()
            why = _why(est, options)
            out[name] = _value(name, setup, est, options.samples, why is None, why)
        return out
    _feed(list(ests.values()), setup, gen, START_SAMPLES, bar)
    total = START_SAMPLES
    last = {name: e.estimate() for name, e in ests.items()}
    done: dict[str, CausalValue] = {}
    for name, e in ests.items():
        why = _why(last[name], options)
        if why is not None and e.hopeless(last[name], total, options):
            done[name] = _value(name, setup, last[name], total, False,
                                why + _cannot_help(name, setup, options))
    while len(done) < len(ests) and 2 * total <= options.max_samples:
        active = [name for name in ests if name not in done]
        _feed([ests[name] for name in active], setup, gen, total, bar)
        total *= 2
        for name in active:
            new = ests[name].estimate()
            change = abs(new.value - last[name].value)
            last[name] = new
            why = _why(new, options)
            if why is None and change <= options.allowed(new.value):
                done[name] = _value(name, setup, new, total, True, None)
            elif why is not None and ests[name].hopeless(new, total, options):
                done[name] = _value(name, setup, new, total, False,
                                    why + _cannot_help(name, setup, options))
    for name in ests:
        if name not in done:
            why = _why(last[name], options) or (
                f"it still changed by more than the tolerance when max_samples="
                f"{options.max_samples} was reached")
            done[name] = _value(name, setup, last[name], total, False, why)
    return {name: done[name] for name in ests}


def _cannot_help(name: str, setup: _Setup, options: _Options) -> str:
    if name == "ei":
        return (f"; {setup.bins}^{setup.n_in} input states cannot be covered by "
                f"max_samples={options.max_samples}")
    return f"; doubling up to max_samples={options.max_samples} would not bring it below"


def _exact_or_none(name: str, setup: _Setup, method: str) -> CausalValue | None:
    if method == "sampled":
        return None
    if exact.monotone(setup.activation) is None:
        if method == "exact":
            raise ValueError(
                f"method='exact': {name} has no sample-free form for the activation "
                f"{activation_name(setup.activation)} (not monotone; see "
                "foresight.causal.exact); use method='auto' or 'sampled'")
        return None
    _check_pair_cells(setup)
    pairs = exact.pairwise_exact(name, setup.w, setup.b, setup.activation, setup.in_range,
                                 setup.out_range, setup.bins)
    if pairs is None:
        if method == "exact":
            raise ValueError(
                f"method='exact': this layer's {name} has no exact form here (a few weights "
                "far larger than the rest need too many terms); use method='auto' or 'sampled'")
        return None
    return CausalValue(name, float(pairs.sum()), None, setup.bins, setup.in_range,
                       setup.out_range, True, "exact", None, 0.0, None)


def _estimate(names: Sequence[str], setup: _Setup, options: _Options, label: str,
              stacklevel: int) -> dict[str, CausalValue]:
    """Every measure in ``names``: exact where ``options.method`` allows, else sampled; warns
    once, naming ``label``, for the sample-limited ones."""
    values: dict[str, CausalValue] = {}
    sampled = []
    for name in names:
        value = _exact_or_none(name, setup, options.method) if name != "ei" else None
        if value is None:
            sampled.append(name)
        else:
            values[name] = value
    per_round = max(1, len(sampled))
    total = (options.samples or START_SAMPLES) * per_round
    bar = progress_bar(total if options.samples else None, desc=f"causal {label}",
                       enabled=options.progress if sampled else False, unit="sample")
    try:
        values.update(_sampled(sampled, setup, options, bar))
    finally:
        bar.close()
    _warn(label, [values[n] for n in names], setup, stacklevel + 1)
    return {name: values[name] for name in names}


_ADVICE = {
    "ei": ("EI of the joint states needs many samples per joint input state (bins**n_in of "
           "them): read EI_parts and sensitivity instead (exact for monotone activations), or "
           "use fewer bins or a smaller input_shape"),
    "ei_parts": "use fewer bins, more samples (max_samples=), or a monotone activation (exact)",
    "sensitivity": "use fewer bins, more samples (max_samples=), or a monotone activation (exact)",
}


def _warn(label: str, values: list[CausalValue], setup: _Setup, stacklevel: int) -> None:
    """One warning per layer; its text carries no estimate, so that measuring the same layer
    again (a Monitor, every epoch) repeats the same text, which Python shows once."""
    bad = [v for v in values if not v.converged]
    if not bad:
        return
    parts = [f"{v.measure} ({v.samples} samples: {v.note})" for v in bad]
    advice = "; ".join(dict.fromkeys(_ADVICE[v.measure] for v in bad))
    warnings.warn(
        f"foresight.causal: {label}, {setup.bins} bins: limited by the sample count, reported "
        f"with converged=False: {'; '.join(parts)}. {advice[0].upper() + advice[1:]}.",
        RuntimeWarning,
        stacklevel=stacklevel,
    )


def _label(layer: nn.Module, setup: _Setup) -> str:
    return f"{type(layer).__name__} {setup.n_in}->{setup.n_out}"


# ------------------------------------------------------------------------------ public API
def _options(samples: Any, seed: Any, tolerance: Any, atol: Any, max_samples: Any, method: Any,
             progress: bool | None) -> _Options:
    return _Options(samples, _resolve_seed(seed), float(tolerance), float(atol), max_samples,
                    method, progress)


def _measure(measure: str, layer: nn.Module, **kw: Any) -> CausalValue:
    _check_options(kw["bins"], kw["samples"], kw["tolerance"], kw["max_samples"], kw["atol"],
                   kw["method"])
    setup = _setup(layer, kw["input_shape"], kw["in_range"], kw["out_range"], kw["bins"],
                   kw["activation"])
    options = _options(kw["samples"], kw["seed"], kw["tolerance"], kw["atol"],
                       kw["max_samples"], kw["method"], kw["progress"])
    label = _label(layer, setup)
    if measure != "degeneracy":
        return _estimate([measure], setup, options, label, 4)[measure]
    both = _estimate(["sensitivity", "ei_parts"], setup, options, label, 4)
    sens, parts = both["sensitivity"], both["ei_parts"]
    counts = [s for s in (sens.samples, parts.samples) if s is not None]
    method = sens.method if sens.method == parts.method else "mixed"
    converged = sens.converged and parts.converged
    return CausalValue("degeneracy", sens.value - parts.value, max(counts) if counts else None,
                       setup.bins, setup.in_range, setup.out_range, converged, method,
                       None if converged else "samples", sens.bias + parts.bias,
                       "; ".join(v.note for v in (sens, parts) if v.note) or None)


_ARGS = """
    Args:
        layer: an ``nn.Linear`` or ``nn.Conv1d/2d/3d`` (see :mod:`foresight.causal.affine`).
        input_shape: shape of one input (no batch dimension); required for convolutions (e.g. one
            receptive field ``(C_in, kh, kw)``), optional for ``Linear``.
        in_range: ``(low, high)``: every input neuron is drawn uniformly from it; also the range
            the inputs are binned over.
        out_range: the range the outputs are binned over (default: see the module docs).
        bins: number of equal bins for each neuron (inputs and outputs).
        samples: number of input vectors (``None``: adaptive, see the module docs).
        activation: elementwise function applied after the layer (module, callable or ``None``).
        seed: seed of the noise (``None``: drawn from torch's global generator).
        tolerance: relative tolerance of a sampled estimate (change per doubling, bias).
        max_samples: cap of the adaptive procedure.
        atol: absolute tolerance (bits) of a sampled estimate.
        progress: a progress bar on stderr: ``None`` only for work longer than a few seconds,
            ``True`` always, ``False`` never."""


def layer_ei(
    layer: nn.Module,
    *,
    input_shape: Sequence[int] | None = None,
    in_range: Range = (0.0, 1.0),
    out_range: Range | None = None,
    bins: int = 64,
    samples: int | None = None,
    activation: Activation = None,
    seed: int | None = None,
    tolerance: float = 0.05,
    max_samples: int = MAX_SAMPLES,
    atol: float = ATOL,
    progress: bool | None = None,
) -> CausalValue:
    r"""EI of a layer: :math:`I(\mathbf{t}_{L_1}; \mathbf{t}_{L_2})` of the joint binned states.

    Always sampled (see the module docs for when the estimate is sample-limited).
    {args}

    Returns:
        A :class:`CausalValue` (``float(result)`` gives the bits).

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.eye(2))
        >>> round(float(layer_ei(layer, bins=4, out_range=(0, 1), samples=20000, seed=0)), 2)
        4.0
    """
    return _measure("ei", layer, input_shape=input_shape, in_range=in_range, out_range=out_range,
                    bins=bins, samples=samples, activation=activation, seed=seed,
                    tolerance=tolerance, max_samples=max_samples, atol=atol, method="sampled",
                    progress=progress)


_METHOD = """
        method: ``"auto"`` (exact for monotone activations, else sampled), ``"exact"`` (a
            ``ValueError`` where it does not apply) or ``"sampled"``."""


def ei_parts(
    layer: nn.Module,
    *,
    input_shape: Sequence[int] | None = None,
    in_range: Range = (0.0, 1.0),
    out_range: Range | None = None,
    bins: int = 64,
    samples: int | None = None,
    activation: Activation = None,
    seed: int | None = None,
    tolerance: float = 0.05,
    max_samples: int = MAX_SAMPLES,
    atol: float = ATOL,
    method: str = "auto",
    progress: bool | None = None,
) -> CausalValue:
    r""":math:`\sum_{A,B} I(t_A; t_B)` with all inputs perturbed.
    {args}{method}

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(3, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.zero_()
        >>> float(ei_parts(layer, samples=1000, seed=0, method="sampled"))  # constant output
        0.0
        >>> r = ei_parts(torch.nn.Linear(3, 2), activation=torch.nn.Sigmoid())
        >>> r.method, r.samples, r.converged
        ('exact', None, True)
    """
    return _measure("ei_parts", layer, input_shape=input_shape, in_range=in_range,
                    out_range=out_range, bins=bins, samples=samples, activation=activation,
                    seed=seed, tolerance=tolerance, max_samples=max_samples, atol=atol,
                    method=method, progress=progress)


def sensitivity(
    layer: nn.Module,
    *,
    input_shape: Sequence[int] | None = None,
    in_range: Range = (0.0, 1.0),
    out_range: Range | None = None,
    bins: int = 64,
    samples: int | None = None,
    activation: Activation = None,
    seed: int | None = None,
    tolerance: float = 0.05,
    max_samples: int = MAX_SAMPLES,
    atol: float = ATOL,
    method: str = "auto",
    progress: bool | None = None,
) -> CausalValue:
    r""":math:`\sum_{A,B} I(t_A; t_B)`, one input perturbed at a time (others at 0).

    ``samples`` (sampled method) is per input neuron.
    {args}{method}

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 3, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.fill_(1.0)
        >>> float(sensitivity(layer, bins=4, out_range=(0, 1)))  # 6 pairs, each a copy
        12.0
    """
    return _measure("sensitivity", layer, input_shape=input_shape, in_range=in_range,
                    out_range=out_range, bins=bins, samples=samples, activation=activation,
                    seed=seed, tolerance=tolerance, max_samples=max_samples, atol=atol,
                    method=method, progress=progress)


def degeneracy(
    layer: nn.Module,
    *,
    input_shape: Sequence[int] | None = None,
    in_range: Range = (0.0, 1.0),
    out_range: Range | None = None,
    bins: int = 64,
    samples: int | None = None,
    activation: Activation = None,
    seed: int | None = None,
    tolerance: float = 0.05,
    max_samples: int = MAX_SAMPLES,
    atol: float = ATOL,
    method: str = "auto",
    progress: bool | None = None,
) -> CausalValue:
    r"""Sensitivity :math:`-` EI_parts (each as by its own function, same ``seed``).

    ``samples`` of the result is the larger of the two counts (``None`` if both are exact);
    ``converged`` is true if both converged; ``method`` is ``"mixed"`` if they differ.
    {args}{method}

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.eye(2))
        >>> float(degeneracy(layer, bins=4, out_range=(0, 1)))
        0.0
    """
    return _measure("degeneracy", layer, input_shape=input_shape, in_range=in_range,
                    out_range=out_range, bins=bins, samples=samples, activation=activation,
                    seed=seed, tolerance=tolerance, max_samples=max_samples, atol=atol,
                    method=method, progress=progress)


def _layer_causal(setup: _Setup, options: _Options, label: str, stacklevel: int) -> LayerCausal:
    values = _estimate(["ei", "ei_parts", "sensitivity"], setup, options, label, stacklevel + 1)
    ei, parts, sens = values["ei"], values["ei_parts"], values["sensitivity"]
    unconverged = tuple(v.measure for v in (ei, parts, sens) if not v.converged)
    return LayerCausal(
        ei=ei.value,
        ei_parts=parts.value,
        sensitivity=sens.value,
        degeneracy=sens.value - parts.value,
        samples_ei=ei.samples,
        samples_ei_parts=parts.samples,
        samples_sensitivity=sens.samples,
        bins=setup.bins,
        in_range=setup.in_range,
        out_range=setup.out_range,
        converged=not unconverged,
        method_ei_parts=parts.method,
        method_sensitivity=sens.method,
        limited_by="samples" if unconverged else None,
        unconverged=unconverged,
        bias_ei=ei.bias,
        bias_ei_parts=parts.bias,
        bias_sensitivity=sens.bias,
    )


def layer_measures(
    layer: nn.Module,
    *,
    input_shape: Sequence[int] | None = None,
    in_range: Range = (0.0, 1.0),
    out_range: Range | None = None,
    bins: int = 64,
    samples: int | None = None,
    activation: Activation = None,
    seed: int | None = None,
    tolerance: float = 0.05,
    max_samples: int = MAX_SAMPLES,
    atol: float = ATOL,
    method: str = "auto",
    progress: bool | None = None,
) -> LayerCausal:
    """EI, EI_parts, sensitivity and degeneracy of one layer; arguments as :func:`ei_parts`.

    Each measure gets the same ``seed`` (so ``layer_measures(...).ei == float(layer_ei(...))``
    for equal arguments); one warning names every sample-limited measure.

    Example:
        >>> import torch
        >>> r = layer_measures(torch.nn.Linear(3, 2), activation=torch.nn.Sigmoid(),
        ...                    bins=8, samples=4000, seed=0)
        >>> r.out_range, r.samples_ei, r.method_sensitivity, r.samples_sensitivity
        ((0.0, 1.0), 4000, 'exact', None)
    """
    _check_options(bins, samples, tolerance, max_samples, atol, method)
    setup = _setup(layer, input_shape, in_range, out_range, bins, activation)
    options = _options(samples, seed, tolerance, atol, max_samples, method, progress)
    return _layer_causal(setup, options, _label(layer, setup), 3)


for _fn in (layer_ei, ei_parts, sensitivity, degeneracy):
    if _fn.__doc__:
        _fn.__doc__ = _fn.__doc__.replace("{args}", _ARGS).replace("{method}", _METHOD)
del _fn
