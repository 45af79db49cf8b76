"""Causal measures of every weight layer of a network, one row per layer.

**Without** ``input`` the layers are found statically, among the model's modules in registration
order (the execution order of ``nn.Sequential`` and simple module trees): every module with an
affine map (:mod:`foresight.causal.affine`: ``nn.Linear`` -- parametrized and weight-normed ones
included, measured with their effective weight --, ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose*``,
the two projections of ``nn.MultiheadAttention``, registered types). The activation of a layer is
the first following leaf module that is an elementwise activation, looking past dropout, flatten
and identity modules only; anything else (a norm layer, pooling, the next weight layer) means "no
activation". A module with parameters that cannot be read statically (transformers' ``Conv1D``,
an embedding, a custom layer) is named in a warning.

**With** ``input`` (an example batch) the layers come from the layer core's plan of one forward
pass (:func:`foresight.layers.discover`), in forward order: the modules above, and every other
weight operation with an affine map -- ``F.linear`` with any weight (a Linear subclass with its own
forward, a weight computed inside ``forward``), ``addmm`` (GPT-2's ``Conv1D``), ``x @ W``,
convolutions. Activations applied functionally in ``forward`` (``torch.tanh(self.fc(x))``) are
seen too. Parameters used in ways that have no affine map (an embedding lookup, an ``einsum``)
are named in a warning.

``activations={layer_name: fn}`` overrides the detected activations. The input range of the first
layer is ``in_range``; every later layer is perturbed over the output range of the layer before it
(its bounded activation's range, e.g. ``(0, 1)`` after a sigmoid, or else the exact range of its
outputs). A convolution is perturbed on one receptive field, ``input_shape = (in_channels,
*kernel_size)``, unless ``input_shapes`` says otherwise.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from foresight._guard import preserved
from foresight._progress import bar as progress_bar
from foresight.causal.activations import (
    ACTIVATION_TYPES,
    TRANSPARENT_TYPES,
    Activation,
    activation_name,
)
from foresight.causal.affine import Affine, affine_parts, is_weight_layer
from foresight.causal.measures import (
    ATOL,
    MAX_SAMPLES,
    Range,
    _check_options,
    _field_value,
    _layer_causal,
    _options,
    _resolve_seed,
    _setup,
)
from foresight.distributed import full_weights, shared
from foresight.layers import kinds
from foresight.layers.modules import INPUT_SHAPE, lookup
from foresight.results import (
    CAUSAL_CONVERGED_KEYS,
    CAUSAL_RECORD_KEYS,
    Row,
    Rows,
    flatten,
)

__all__ = [
    "CausalRow", "CausalReport", "RECORD_KEYS", "CONVERGED_KEYS", "report", "weight_layers",
    "plan_layers",
]

#: Row attribute -> key prefix in flat records (``monitor.history``, ``CausalReport.record()``):
#: :data:`foresight.results.CAUSAL_RECORD_KEYS`, the one definition.
RECORD_KEYS = CAUSAL_RECORD_KEYS

#: Measure -> key prefix of its convergence flag in flat records (``bool`` values, so plots of
#: numeric columns pass over them): ``causal_ei_converged/<layer>``, ... Degeneracy has no flag
#: of its own: it is converged when EI_parts and sensitivity are.
#: :data:`foresight.results.CAUSAL_CONVERGED_KEYS`, the one definition.
CONVERGED_KEYS = CAUSAL_CONVERGED_KEYS


@dataclass
class CausalRow(Row):
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

    metric = "causal"

    def _value(self, field: str) -> Any:
        return _field_value(self, field)


@dataclass
class CausalReport(Rows):
    """One :class:`CausalRow` per weight layer, in order; ``seed`` reproduces the numbers.

    Rows are looked up by name and iterated like every result's (:mod:`foresight.results`):
    ``rep.row("0")``, ``rep["0"]``, ``for row in rep``; ``to_records()`` gives every layer's
    measures and convergence flags (the keys of :meth:`record`).
    """

    layers: list[CausalRow] = field(default_factory=list)
    seed: int = 0

    metric = "causal"

    def _fields(self) -> tuple[str, ...]:
        return ()  # every value is a layer's

    @property
    def converged(self) -> bool:
        """Whether every measure of every layer converged."""
        return all(r.converged for r in self.layers)

    def record(self) -> dict[str, float | bool]:
        """Flat ``{key/layer: bits}``, the keys :class:`foresight.monitor.CausalEI` records:
        ``causal_ei/<layer>``, ``ei_parts/<layer>``, ``sensitivity/<layer>``,
        ``causal_degeneracy/<layer>``, and the flags (``bool``) ``causal_ei_converged/<layer>``,
        ``ei_parts_converged/<layer>``, ``sensitivity_converged/<layer>``: the flattened
        :meth:`to_records`."""
        return flatten(self.to_records())


Layers = list[tuple[str, nn.Module, Activation]]


def _first_names(model: nn.Module) -> dict[str, nn.Module]:
    out: dict[str, nn.Module] = {}
    seen: set[int] = set()
    for n, m in model.named_modules(remove_duplicate=False):
        if id(m) not in seen:
            seen.add(id(m))
            out[n] = m
    return out


def _inside(name: str, outer: str) -> bool:
    return outer == "" or name == outer or name.startswith(outer + ".")


def _passed_over(module: nn.Module) -> bool:
    """Modules whose parameters are not a weight layer's (normalisations, activations)."""
    return kinds.is_norm(module) or kinds.is_activation(module) or kinds.is_pass_through(module)


def _expand(name: str, layer: nn.Module, act: Activation) -> Layers:
    """A layer, or its parts (the projections of an attention module; the activation follows
    the last)."""
    parts = affine_parts(layer)
    return [(name + suffix, part, act if i == len(parts) - 1 else None)
            for i, (suffix, part) in enumerate(parts)]


def _apply_overrides(found: Layers, activations: dict[str, Activation]) -> Layers:
    out = [(n, layer, activations.pop(n, act)) for n, layer, act in found]
    if activations:
        raise ValueError(f"activations names unknown weight layers {sorted(activations)}; "
                         f"weight layers: {[n for n, _, _ in out]}")
    return out


def _warn(skipped: list[str], hint: str) -> None:
    if skipped:
        warnings.warn("foresight.causal.report: skipped layers it cannot measure: "
                      + ", ".join(skipped) + hint, RuntimeWarning, stacklevel=4)


def weight_layers(
    model: nn.Module, activations: Mapping[str, Activation] | None = None
) -> Layers:
    """``(name, layer, activation)`` for every weight layer of ``model``, in order (static).

    Modules with parameters that cannot be measured statically are skipped with a warning.

    >>> net = nn.Sequential(nn.Linear(4, 3), nn.Dropout(), nn.Tanh(), nn.Linear(3, 2))
    >>> [(n, activation_name(a)) for n, _, a in weight_layers(net)]
    [('0', 'Tanh'), ('3', 'identity')]
    """
    items: list[tuple[str, nn.Module, bool]] = []
    chosen: list[str] = []
    skipped: list[str] = []
    for name, module in _first_names(model).items():
        if any(_inside(name, c) for c in chosen):
            continue  # a parametrization, an attention module's projection
        if is_weight_layer(module):
            chosen.append(name)
            items.append((name, module, True))
            continue
        if not any(True for _ in module.children()):
            items.append((name, module, False))
        if any(True for _ in module.parameters(recurse=False)) and not _passed_over(module):
            skipped.append(f"{name or '<model>'} ({type(module).__name__})")
    found: Layers = []
    for i, (name, module, is_layer) in enumerate(items):
        if not is_layer:
            continue
        act: Activation = None
        for _, follower, follower_is_layer in items[i + 1 :]:
            if follower_is_layer:
                break
            if isinstance(follower, TRANSPARENT_TYPES):
                continue
            if isinstance(follower, ACTIVATION_TYPES):
                act = follower
            break
        found += _expand(name, module, act)
    found = _apply_overrides(found, dict(activations or {}))
    _warn(skipped, "; pass input= (an example batch) to measure layers built from standard "
                   "operations (e.g. transformers' Conv1D)" if skipped else "")
    return found


def _activation_of(use: Any, modules: dict[str, nn.Module]) -> Activation:
    if use is None:
        return None
    if use.followed_by_module is not None and use.followed_by_module in modules:
        return modules[use.followed_by_module]
    if use.followed_by_call is not None:
        return kinds.activation_of_call(*use.followed_by_call)
    return None


def plan_layers(
    model: nn.Module,
    input: Any,
    activations: Mapping[str, Activation] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> Layers:
    """``(name, layer, activation)`` for every weight layer of ``model`` in the forward pass on
    ``input``, in forward order (see the module documentation). Layers that are not modules of
    their own are :class:`~foresight.causal.affine.Affine` maps (their ``layer_type`` names
    them). Parameters used without an affine map are named in a warning."""
    from foresight.layers.discover import discover
    from foresight.layers.registry import FALLBACK, RULES, Rule
    from foresight.layers.scan import scan

    shapes = dict(input_shapes or {})
    with preserved(model), torch.no_grad():
        model.eval()
        plan = discover(model, input)
        norm_like = scan(model, input).norm_like
    modules = _first_names(model)
    units: dict[str, Any] = {}
    uses_of: dict[str, set[int]] = {}
    for u in plan.units:
        uses_of.setdefault(u.module, set()).update(u.uses)
        if u.module in modules and is_weight_layer(modules[u.module]):
            units.setdefault(u.module, u)
    outer = [n for n in units if not any(c != n and _inside(n, c) for c in units)]
    inside = set().union(*(uses_of[n] for n in outer)) if outer else set()
    keyed: list[tuple[float, str, Any]] = []
    for n in outer:
        last = max(units[n].uses, key=lambda i: plan.uses[i].index, default=None)
        at = plan.uses[last].index if last is not None else float("inf")
        keyed.append((at, "module", (n, plan.uses[last] if last is not None else None)))
    rules = {type(r).__name__: r for r in RULES}
    skipped: dict[str, None] = {}
    seen: set[tuple] = set()
    for i, use in enumerate(plan.uses):
        if i in inside or (use.module in modules and _passed_over(modules[use.module])):
            continue
        rule = FALLBACK if use.kind == FALLBACK.name else rules.get(use.rule, FALLBACK)
        label = f"{use.module or '<model>'} ({use.module_type}"
        if rule.role == "weight" and use.operands:
            if type(rule).affine is Rule.affine:
                skipped[f"{label}, {use.op}: no affine map)"] = None
                continue
            w = next((o for o in use.operands if o.slot == "weight"), None)
            key = (use.rule, w.param) if w is not None and w.param is not None else (
                use.rule, use.module, use.index)
            if key not in seen:
                seen.add(key)
                keyed.append((use.index, "op", use))
        elif rule.role == "scale" and use.module not in norm_like:
            skipped[f"{label})"] = None
        elif rule.role == "fallback" and not kinds.is_attention(use.op):
            skipped[f"{label}, {use.op})"] = None
    keyed.sort(key=lambda item: item[0])
    ops = [item for _, kind, item in keyed if kind == "op"]
    values = _operands(model, input, ops)
    found: Layers = []
    taken: set[str] = set()
    for _, kind, item in keyed:
        if kind == "module":
            name, last = item
            found += _expand(name, modules[name], _activation_of(last, modules))
            taken.add(name)
            continue
        use = item
        name = use.module
        if name in taken:
            name = f"{use.module}:{use.op}"
            k = 2
            while name in taken:
                name, k = f"{use.module}:{use.op}#{k}", k + 1
        taken.add(name)
        rule = rules[use.rule]
        w, b, in_shape = rule.affine(use, values[use.index], shapes.get(name))
        found.append((name, Affine(w, b, in_shape, use.module_type or type(model).__name__),
                      _activation_of(use, modules)))
    found = _apply_overrides(found, dict(activations or {}))
    _warn(list(skipped), "")
    return found


def _operands(model: nn.Module, input: Any, uses: list) -> dict[int, dict[str, Any]]:
    params = dict(model.named_parameters(remove_duplicate=False))
    derived = [u for u in uses if any(o.param is None for o in u.operands)]
    values: dict[int, dict[str, Any]] = {}
    if derived:
        from foresight.layers.replay import operand_values

        with torch.no_grad(), preserved(model):
            model.eval()
            values = operand_values(model, input, derived)
    out = {}
    for u in uses:
        out[u.index] = {o.slot: (params[o.param].detach() if o.param is not None
                                 else values[u.index][o.slot]) for o in u.operands}
    return out


def _input_shape(layer: nn.Module, given: Sequence[int] | None) -> Sequence[int] | None:
    if given is not None:
        return given
    if isinstance(layer, Affine):
        return layer.input_shape
    default = lookup(INPUT_SHAPE, layer)
    return default(layer) if default is not None else None


def report(
    model: nn.Module,
    input: Any = None,
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
        model: the network. Left untouched.
        input: an example batch the model accepts (a tensor; a tuple of positional or a dict of
            keyword arguments): the layers are then found in the forward pass, in its order,
            with functional activations and layers that are not modules of their own (see the
            module documentation). Without it, a static walk of the modules (feedforward
            ``nn.Sequential`` and simple module trees).
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
        if input is None:
            layers = weight_layers(model, activations)
        else:
            layers = plan_layers(model, input, activations, shapes)
        if not layers:
            raise ValueError(
                f"{type(model).__name__} has no layer foresight.causal can measure (nn.Linear, "
                "convolutions, attention projections"
                + (", linear/addmm/matmul/conv operations)" if input is not None else
                   "; pass input= to find layers built from standard operations)")
            )
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
                kind = getattr(layer, "layer_type", type(layer).__name__)
                label = f"layer {name!r} ({kind} {setup.n_in}->{setup.n_out})"
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
        name=name, layer=getattr(layer, "layer_type", type(layer).__name__),
        activation=activation_name(act),
        n_in=int(n_in), n_out=int(n_out), ei=m.ei, ei_parts=m.ei_parts,
        sensitivity=m.sensitivity, degeneracy=m.degeneracy, samples_ei=m.samples_ei,
        samples_ei_parts=m.samples_ei_parts, samples_sensitivity=m.samples_sensitivity,
        bins=m.bins, in_range=m.in_range, out_range=m.out_range, converged=m.converged,
        method_ei_parts=m.method_ei_parts, method_sensitivity=m.method_sensitivity,
        limited_by=m.limited_by, unconverged=m.unconverged, bias_ei=m.bias_ei,
        bias_ei_parts=m.bias_ei_parts, bias_sensitivity=m.bias_sensitivity,
    )
