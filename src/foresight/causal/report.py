"""Causal measures of every weight layer of a feedforward network, one row per layer.

Weight layers (``nn.Linear``, ``nn.Conv1d/2d/3d`` and registered types) are found among the
model's leaf modules in registration order (the execution order of ``nn.Sequential`` and simple
module trees). The activation of a layer is the first following leaf module that is an elementwise
activation (:data:`~foresight.causal.activations.ACTIVATION_TYPES`), looking past dropout, flatten
and identity modules only; anything else (a norm layer, pooling, the next weight layer) means "no
activation". Activations applied functionally in ``forward`` cannot be seen: pass them in
``activations={layer_name: fn}``.

The input range of the first layer is ``in_range``; every later layer is perturbed over the output
range of the layer before it (its bounded activation's range, e.g. ``(0, 1)`` after a sigmoid, or
else the exact range of its outputs). A convolution is perturbed on one receptive field,
``input_shape = (in_channels, *kernel_size)``, unless ``input_shapes`` says otherwise.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from foresight._guard import preserved
from foresight._progress import bar as progress_bar
from foresight._result import Result
from foresight.causal.activations import (
    ACTIVATION_TYPES,
    TRANSPARENT_TYPES,
    Activation,
    activation_name,
)
from foresight.causal.affine import is_weight_layer
from foresight.causal.measures import (
    ATOL,
    MAX_SAMPLES,
    Range,
    _check_options,
    _layer_causal,
    _options,
    _resolve_seed,
    _setup,
)
from foresight.distributed import full_weights, shared

__all__ = ["CausalRow", "CausalReport", "RECORD_KEYS", "CONVERGED_KEYS", "report", "weight_layers"]

#: Row attribute -> key prefix in flat records (``monitor.history``, ``CausalReport.record()``).
RECORD_KEYS = {
    "ei": "causal_ei",
    "ei_parts": "ei_parts",
    "sensitivity": "sensitivity",
    "degeneracy": "causal_degeneracy",
}

#: Measure -> key prefix of its convergence flag in flat records (``bool`` values, so plots of
#: numeric columns pass over them): ``causal_ei_converged/<layer>``, ... Degeneracy has no flag
#: of its own: it is converged when EI_parts and sensitivity are.
CONVERGED_KEYS = {
    "ei": "causal_ei_converged",
    "ei_parts": "ei_parts_converged",
    "sensitivity": "sensitivity_converged",
}

_NORM_TYPES: tuple[type, ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
)


@dataclass
class CausalRow(Result):
    """The causal measures of one layer (bits).

    ``samples_*`` are ``None`` for exact values (``method_*`` says which); ``converged`` is
    true when every measure is; ``unconverged`` names the ones that are not and ``limited_by``
    is then ``"samples"``; ``bias_*`` are the estimated plug-in biases of sampled values.
    """

    name: str
    layer: str
    activation: str
    n_in: int
    n_out: int
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
    method_ei_parts: str = "sampled"
    method_sensitivity: str = "sampled"
    limited_by: str | None = None
    unconverged: tuple[str, ...] = field(default_factory=tuple)
    bias_ei: float = 0.0
    bias_ei_parts: float = 0.0
    bias_sensitivity: float = 0.0


@dataclass
class CausalReport(Result):
    """One :class:`CausalRow` per weight layer, in order; ``seed`` reproduces the numbers."""

    layers: list[CausalRow] = field(default_factory=list)
    seed: int = 0

    @property
    def converged(self) -> bool:
        """Whether every measure of every layer converged."""
        return all(r.converged for r in self.layers)

    def record(self) -> dict[str, float | bool]:
        """Flat ``{key/layer: bits}``, the keys :class:`foresight.monitor.CausalEI` records:
        ``causal_ei/<layer>``, ``ei_parts/<layer>``, ``sensitivity/<layer>``,
        ``causal_degeneracy/<layer>``, and the flags (``bool``) ``causal_ei_converged/<layer>``,
        ``ei_parts_converged/<layer>``, ``sensitivity_converged/<layer>``."""
        out: dict[str, float | bool] = {}
        for r in self.layers:
            for attr, key in RECORD_KEYS.items():
                out[f"{key}/{r.name}"] = float(getattr(r, attr))
            for measure, key in CONVERGED_KEYS.items():
                out[f"{key}/{r.name}"] = measure not in r.unconverged
        return out

    def row(self, name: str) -> CausalRow:
        """The row of the layer called ``name``."""
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(f"no layer {name!r}; layers: {[r.name for r in self.layers]}")


def weight_layers(
    model: nn.Module, activations: Mapping[str, Activation] | None = None
) -> list[tuple[str, nn.Module, Activation]]:
    """``(name, layer, activation)`` for every weight layer of ``model``, in order.

    Leaf modules with parameters that cannot be measured are skipped with a warning.

    >>> net = nn.Sequential(nn.Linear(4, 3), nn.Dropout(), nn.Tanh(), nn.Linear(3, 2))
    >>> [(n, activation_name(a)) for n, _, a in weight_layers(net)]
    [('0', 'Tanh'), ('3', 'identity')]
    """
    activations = dict(activations or {})
    leaves = [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]
    if not leaves:
        leaves = [("", model)]
    found: list[tuple[str, nn.Module, Activation]] = []
    skipped: list[str] = []
    for i, (name, module) in enumerate(leaves):
        if not is_weight_layer(module):
            has_params = any(True for _ in module.parameters(recurse=False))
            if has_params and not isinstance(module, (*_NORM_TYPES, *ACTIVATION_TYPES)):
                skipped.append(f"{name or '<model>'} ({type(module).__name__})")
            continue
        act: Activation = None
        for _, follower in leaves[i + 1 :]:
            if isinstance(follower, TRANSPARENT_TYPES):
                continue
            if isinstance(follower, ACTIVATION_TYPES):
                act = follower
            break
        found.append((name, module, activations.pop(name, act)))
    if activations:
        raise ValueError(f"activations names unknown weight layers {sorted(activations)}; "
                         f"weight layers: {[n for n, _, _ in found]}")
    if skipped:
        warnings.warn("foresight.causal.report: skipped layers it cannot measure: "
                      + ", ".join(skipped), RuntimeWarning, stacklevel=3)
    return found


def _input_shape(layer: nn.Module, given: Sequence[int] | None) -> Sequence[int] | None:
    if given is not None:
        return given
    if isinstance(layer, nn.modules.conv._ConvNd):
        return (layer.in_channels, *layer.kernel_size)
    return None


def report(
    model: nn.Module,
    *,
    in_range: Range = (0.0, 1.0),
    bins: int = 64,
    samples: int | None = None,
    seed: int | None = None,
    tolerance: float = 0.05,
    max_samples: int = MAX_SAMPLES,
    activations: Mapping[str, Activation] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    atol: float = ATOL,
    method: str = "auto",
    progress: bool | None = None,
) -> CausalReport:
    """EI, EI_parts, sensitivity and degeneracy of every weight layer of ``model``.

    Args:
        model: a feedforward network (``nn.Sequential`` or a simple module tree). Left untouched.
        in_range: the input range of the first weight layer.
        bins, samples, seed, tolerance, max_samples, atol, method: as in
            :func:`~foresight.causal.ei_parts` (every layer uses the same ``seed``; ``None``
            draws one, reported in ``seed``).
        activations: ``{layer name: activation}`` overriding the detected ones.
        input_shapes: ``{layer name: input shape}`` for convolutions (default: one receptive
            field).
        progress: a bar over the layers on stderr: ``None`` (default) only once the work has
            taken a few seconds, ``True`` always, ``False`` never.

    Returns:
        A :class:`CausalReport` (``to_dict()``, ``to_dataframe()``). A layer whose sampled EI
        (or sampled pairwise measure) is limited by the sample count gets ``converged=False``
        and one ``RuntimeWarning`` naming it.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Sigmoid())
        >>> r = report(net, bins=8, samples=20000, seed=1)
        >>> r.layers[0].out_range, r.layers[0].samples_ei, r.layers[0].method_ei_parts
        ((0.0, 1.0), 20000, 'exact')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_options(bins, samples, tolerance, max_samples, atol, method)
    seed = shared(model, _resolve_seed(seed))  # rank 0's seed on every rank of a sharded model
    options = _options(samples, seed, tolerance, atol, max_samples, method, False)
    shapes = dict(input_shapes or {})
    rows: list[CausalRow] = []
    with full_weights(model), preserved(model):
        layers = weight_layers(model, activations)
        if not layers:
            raise ValueError(f"{type(model).__name__} has no layer foresight.causal can measure "
                             "(nn.Linear, nn.Conv1d/2d/3d)")
        unknown = set(shapes) - {n for n, _, _ in layers}
        if unknown:
            raise ValueError(f"input_shapes names unknown weight layers {sorted(unknown)}")
        current: Range = in_range
        bar = progress_bar(len(layers), desc="causal report", enabled=progress, unit="layer")
        try:
            for name, layer, act in layers:
                shape = _input_shape(layer, shapes.get(name))
                bar.set_postfix({"layer": name or "<model>"}, refresh=False)
                setup = _setup(layer, shape, current, None, bins, act)
                label = (f"layer {name!r} ({type(layer).__name__} "
                         f"{setup.n_in}->{setup.n_out})")
                m = _layer_causal(setup, options, label, 3)
                rows.append(_row(name, layer, act, setup.n_in, setup.n_out, m))
                current = m.out_range
                bar.update(1)
        finally:
            bar.close()
    return CausalReport(layers=rows, seed=options.seed)


def _row(name: str, layer: nn.Module, act: Activation, n_in: int, n_out: int, m: Any
         ) -> CausalRow:
    return CausalRow(
        name=name, layer=type(layer).__name__, activation=activation_name(act),
        n_in=int(n_in), n_out=int(n_out), ei=m.ei, ei_parts=m.ei_parts,
        sensitivity=m.sensitivity, degeneracy=m.degeneracy, samples_ei=m.samples_ei,
        samples_ei_parts=m.samples_ei_parts, samples_sensitivity=m.samples_sensitivity,
        bins=m.bins, in_range=m.in_range, out_range=m.out_range, converged=m.converged,
        method_ei_parts=m.method_ei_parts, method_sensitivity=m.method_sensitivity,
        limited_by=m.limited_by, unconverged=m.unconverged, bias_ei=m.bias_ei,
        bias_ei_parts=m.bias_ei_parts, bias_sensitivity=m.bias_sensitivity,
    )
