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

All in bits. **Estimator** (exactly): ``N`` input vectors are drawn; each is binned neuron by
neuron, and the joint input state is the tuple of the bins (likewise for the outputs). ``EI`` is
the plug-in mutual information between the joint input states and the joint output states (the
tuples are numbered exactly, with no table of all states:
:func:`~foresight.causal.histogram.pack_rows`);
``EI_parts`` and sensitivity sum the plug-in mutual information of the :math:`b \times b`
histograms of every (input, output) pair. For sensitivity each input neuron ``A`` gets its own
``N`` samples while every other input is held at 0 (also when 0 lies outside ``in_range``, as in the
paper), so its outputs are :math:`f(W_{AB}\, t_A + b_B)`: a layer's bias is kept throughout.

Reading the numbers: when :math:`b^{n_{in}} \gg N` nearly every sampled joint input state is
unique, and the plug-in ``EI`` becomes the plug-in entropy of the binned outputs (it grows with
``N`` until :math:`N \gg b^{n_{in}}`); the pairwise measures are biased upward by about
:math:`(b-1)^2 / (2 N \ln 2)` bits for each *dependent-looking* pair (exactly 0 for a constant
output). Report ``bins`` and ``samples`` with every number.

**Sample count.** A fixed ``samples`` with a ``seed`` is reproducible bit for bit. With
``samples=None`` (the paper's procedure) the estimate is made with :data:`START_SAMPLES`, then the
sample count is doubled (the new samples are added to the old) until the estimate changes by less
than ``tolerance`` (relative; or by less than :data:`ABSOLUTE_FLOOR` bits), or ``max_samples`` is
reached (then ``converged`` is ``False`` and a warning is issued).

**Default output range**: the activation's range when it is bounded (sigmoid :math:`(0, 1)`,
tanh :math:`(-1, 1)`, ...); otherwise the exact range of the outputs over both interventions,
found from the pre-activation bounds (interval arithmetic on the affine map) and the activation
evaluated on a fine grid between them. An output range of zero width (constant outputs) is widened
to one unit around the constant.

>>> import torch
>>> layer = torch.nn.Linear(2, 2, bias=False)
>>> with torch.no_grad():
...     _ = layer.weight.copy_(torch.eye(2))
>>> r = ei_parts(layer, bins=8, out_range=(0, 1), samples=20000, seed=0)
>>> round(r.value, 1), r.samples  # identity: 2 pairs x log2(8) bits
(6.0, 20000)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from foresight._result import Result
from foresight.causal import histogram as hist
from foresight.causal.activations import (
    Activation,
    apply,
    apply_,
    check_activation,
    known_range,
)
from foresight.causal.affine import affine_map

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
]

#: First sample count of the adaptive procedure (the paper's).
START_SAMPLES = 10_000
#: Default cap of the adaptive procedure: 10^4 doubled 7 times.
MAX_SAMPLES = 1_280_000
#: Two estimates closer than this (bits) count as converged whatever their relative change.
ABSOLUTE_FLOOR = 0.01
#: Samples are drawn ``torch.rand`` block by block, this many rows at a time.
DRAW_BLOCK = 1 << 16
#: Largest number of (input, output, bin, bin) histogram cells a pairwise measure may allocate.
MAX_PAIR_CELLS = 1 << 26

Range = tuple[float, float]


@dataclass
class CausalValue(Result):
    """One measure of one layer (bits), with the estimator settings that produced it.

    ``float(value)`` gives the number.
    """

    measure: str
    value: float
    samples: int
    bins: int
    in_range: Range
    out_range: Range
    converged: bool

    def __float__(self) -> float:
        return float(self.value)


@dataclass
class LayerCausal(Result):
    """All four measures of one layer (bits) and the samples each used."""

    ei: float
    ei_parts: float
    sensitivity: float
    degeneracy: float
    samples_ei: int
    samples_ei_parts: int
    samples_sensitivity: int
    bins: int
    in_range: Range
    out_range: Range
    converged: bool


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


def _check_range(name: str, value: Any) -> Range:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high) of numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise ValueError(f"{name} must satisfy low < high (finite), got {value!r}")
    return (lo, hi)


def _check_options(bins: Any, samples: Any, tolerance: float, max_samples: int) -> None:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    if samples is not None and (
        isinstance(samples, bool) or not isinstance(samples, int) or samples < 1
    ):
        raise ValueError(f"samples must be None (adaptive) or a positive integer, got {samples!r}")
    if not (isinstance(tolerance, (int, float)) and tolerance > 0):
        raise ValueError(f"tolerance must be a positive number, got {tolerance!r}")
    if not isinstance(max_samples, int) or max_samples < START_SAMPLES:
        raise ValueError(f"max_samples must be an integer >= {START_SAMPLES}, got {max_samples!r}")


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
            y = self.setup.outputs(self.x)
            if not bool(torch.isfinite(y).all()):
                raise ValueError("the layer gives non-finite outputs under the perturbation")
            self._yi = hist.bin_indices(y, *self.setup.out_range, self.setup.bins, inplace=True)
        return self._yi


class _Estimator:
    """Accumulates samples for one measure; ``value()`` is the estimate from all so far."""

    def __init__(self, setup: _Setup) -> None:
        self.setup = setup

    def add(self, block: _Block) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def value(self) -> float:  # pragma: no cover - interface
        raise NotImplementedError


class _JointEI(_Estimator):
    def __init__(self, setup: _Setup) -> None:
        super().__init__(setup)
        self.x_words: list[Tensor] = []
        self.y_words: list[Tensor] = []

    def add(self, block: _Block) -> None:
        self.x_words.append(hist.pack_rows(block.xi, self.setup.bins))
        self.y_words.append(hist.pack_rows(block.yi, self.setup.bins))

    def value(self) -> float:
        x = hist.joint_labels(torch.cat(self.x_words))
        y = hist.joint_labels(torch.cat(self.y_words))
        return hist.plugin_mi(x, y, dense=True)


class _Pairwise(_Estimator):
    def __init__(self, setup: _Setup) -> None:
        super().__init__(setup)
        cells = setup.n_in * setup.n_out * setup.bins**2
        if cells > MAX_PAIR_CELLS:
            raise ValueError(
                f"{setup.n_in} inputs x {setup.n_out} outputs x {setup.bins}^2 bins = {cells} "
                f"histogram cells (limit {MAX_PAIR_CELLS}): use fewer bins or a smaller "
                "input_shape (e.g. one receptive field of a convolution)"
            )
        self.counts = hist.PairCounts(setup.n_in, setup.n_out, setup.bins, setup.w.device)

    def value(self) -> float:
        return float(self.counts.mi().sum())


class _Parts(_Pairwise):
    def add(self, block: _Block) -> None:
        self.counts.add(block.xi, block.yi)


class _Sensitivity(_Pairwise):
    def __init__(self, setup: _Setup) -> None:
        super().__init__(setup)
        step = self.counts.chunk()
        self._pre = torch.empty((step, setup.n_in, setup.n_out), dtype=setup.w.dtype,
                                device=setup.w.device)

    def add(self, block: _Block) -> None:
        s = self.setup
        step = self.counts.chunk()
        for i in range(0, block.x.shape[0], step):
            xs = block.x[i : i + step]
            pre = torch.addcmul(s.b, xs.unsqueeze(2), s.w, out=self._pre[: xs.shape[0]])
            y = apply_(s.activation, pre)  # outputs with only input A set, [S, n_in, n_out]
            y_idx = hist.bin_indices(y, *s.out_range, s.bins, inplace=True)
            self.counts.add(block.xi[i : i + step], y_idx)


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


def _feed(estimators: list[_Estimator], setup: _Setup, gen: torch.Generator, n: int) -> None:
    lo, hi = setup.in_range
    while n > 0:
        m = min(n, DRAW_BLOCK)
        u = torch.rand((m, setup.n_in), generator=gen, dtype=setup.w.dtype)
        block = _Block(setup, (lo + (hi - lo) * u).to(setup.w.device))
        for est in estimators:
            est.add(block)
        n -= m


def _estimate(
    measures: Sequence[str], setup: _Setup, samples: int | None, seed: int, tolerance: float,
    max_samples: int,
) -> dict[str, CausalValue]:
    """Estimate several measures from one stream of noise (the same numbers as one at a time)."""
    ests = {name: _ESTIMATORS[name](setup) for name in measures}
    gen = torch.Generator().manual_seed(seed)

    def result(name: str, value: float, total: int, converged: bool) -> CausalValue:
        return CausalValue(name, value, total, setup.bins, setup.in_range, setup.out_range,
                           converged)

    if samples is not None:
        _feed(list(ests.values()), setup, gen, samples)
        return {name: result(name, e.value(), samples, True) for name, e in ests.items()}
    _feed(list(ests.values()), setup, gen, START_SAMPLES)
    total = START_SAMPLES
    last = {name: e.value() for name, e in ests.items()}
    done: dict[str, CausalValue] = {}
    while len(done) < len(ests) and 2 * total <= max_samples:
        active = [name for name in ests if name not in done]
        _feed([ests[name] for name in active], setup, gen, total)
        total *= 2
        for name in active:
            new = ests[name].value()
            change = abs(new - last[name])
            last[name] = new
            if change <= tolerance * abs(new) or change <= ABSOLUTE_FLOOR:
                done[name] = result(name, new, total, True)
    for name in ests:
        if name not in done:
            warnings.warn(
                f"foresight.causal: {name} did not settle within {tolerance:.0%} by "
                f"max_samples={max_samples} (last value {last[name]:.3f} bits); the number is "
                "reported with converged=False",
                RuntimeWarning,
                stacklevel=4,
            )
            done[name] = result(name, last[name], total, False)
    return {name: done[name] for name in ests}


# ------------------------------------------------------------------------------ public API
def _measure(measure: str, layer: nn.Module, **options: Any) -> CausalValue:
    samples, seed = options.pop("samples"), options.pop("seed")
    tolerance, max_samples = options.pop("tolerance"), options.pop("max_samples")
    _check_options(options["bins"], samples, tolerance, max_samples)
    setup = _setup(layer, **options)
    seed = _resolve_seed(seed)
    if measure != "degeneracy":
        return _estimate([measure], setup, samples, seed, tolerance, max_samples)[measure]
    both = _estimate(["sensitivity", "ei_parts"], setup, samples, seed, tolerance, max_samples)
    sens, parts = both["sensitivity"], both["ei_parts"]
    return CausalValue("degeneracy", sens.value - parts.value, max(sens.samples, parts.samples),
                       setup.bins, setup.in_range, setup.out_range,
                       sens.converged and parts.converged)


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
) -> CausalValue:
    r"""EI of a layer: :math:`I(\mathbf{t}_{L_1}; \mathbf{t}_{L_2})` of the joint binned states.

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
        tolerance: relative change at which the adaptive procedure stops.
        max_samples: cap of the adaptive procedure.

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
                    tolerance=tolerance, max_samples=max_samples)


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
) -> CausalValue:
    r""":math:`\sum_{A,B} I(t_A; t_B)` with all inputs perturbed. Arguments as :func:`layer_ei`.

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(3, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.zero_()
        >>> float(ei_parts(layer, samples=1000, seed=0))  # a constant output carries nothing
        0.0
    """
    return _measure("ei_parts", layer, input_shape=input_shape, in_range=in_range,
                    out_range=out_range, bins=bins, samples=samples, activation=activation,
                    seed=seed, tolerance=tolerance, max_samples=max_samples)


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
) -> CausalValue:
    r""":math:`\sum_{A,B} I(t_A; t_B)`, one input perturbed at a time (others at 0).

    Arguments as :func:`layer_ei`; ``samples`` is per input neuron.

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 3, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.fill_(1.0)
        >>> round(float(sensitivity(layer, bins=4, out_range=(0, 1), samples=20000, seed=0)), 1)
        12.0
    """
    return _measure("sensitivity", layer, input_shape=input_shape, in_range=in_range,
                    out_range=out_range, bins=bins, samples=samples, activation=activation,
                    seed=seed, tolerance=tolerance, max_samples=max_samples)


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
) -> CausalValue:
    r"""Sensitivity :math:`-` EI_parts (each estimated as by its own function, same ``seed``).

    Arguments as :func:`layer_ei`. ``samples`` of the result is the larger of the two counts
    (they differ only in the adaptive mode); ``converged`` is true if both converged.

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.eye(2))
        >>> abs(float(degeneracy(layer, bins=4, out_range=(0, 1), samples=20000, seed=0))) < 0.01
        True
    """
    return _measure("degeneracy", layer, input_shape=input_shape, in_range=in_range,
                    out_range=out_range, bins=bins, samples=samples, activation=activation,
                    seed=seed, tolerance=tolerance, max_samples=max_samples)


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
) -> LayerCausal:
    """EI, EI_parts, sensitivity and degeneracy of one layer; arguments as :func:`layer_ei`.

    Each measure gets the same ``seed`` (so ``layer_measures(...).ei == float(layer_ei(...))``
    for equal arguments).

    Example:
        >>> import torch
        >>> r = layer_measures(torch.nn.Linear(3, 2), activation=torch.nn.Sigmoid(),
        ...                    samples=2000, seed=0)
        >>> r.out_range, r.samples_sensitivity
        ((0.0, 1.0), 2000)
    """
    _check_options(bins, samples, tolerance, max_samples)
    setup = _setup(layer, input_shape, in_range, out_range, bins, activation)
    seed = _resolve_seed(seed)
    values = _estimate(["ei", "ei_parts", "sensitivity"], setup, samples, seed, tolerance,
                       max_samples)
    ei, parts, sens = values["ei"], values["ei_parts"], values["sensitivity"]
    return LayerCausal(
        ei=ei.value,
        ei_parts=parts.value,
        sensitivity=sens.value,
        degeneracy=sens.value - parts.value,
        samples_ei=ei.samples,
        samples_ei_parts=parts.samples,
        samples_sensitivity=sens.samples,
        bins=bins,
        in_range=setup.in_range,
        out_range=setup.out_range,
        converged=ei.converged and parts.converged and sens.converged,
    )
