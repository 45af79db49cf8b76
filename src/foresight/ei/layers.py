r"""Which weight graphs EI counts, from the layer core.

Two sources, both described by the rules of :mod:`foresight.layers`:

* **modules** -- a module whose type has a module rule (:mod:`foresight.layers.modules`:
  ``nn.Linear``, ``nn.Conv*``, ``nn.ConvTranspose*``, average pools, ``nn.Embedding``,
  ``nn.MultiheadAttention`` and the types registered in ``foresight.ei.RULES`` /
  ``VALID_MODULES``) and that runs that type's ``forward``: its graph is the Jacobian of the whole
  module (a reflect-padded convolution included), with the shapes of its first call;
* **operations** -- every other use of a parameter that a rule with a weight graph handles
  (:mod:`foresight.layers.rules`): ``F.linear`` with any weight (a tied output layer, a Linear
  subclass with its own forward), ``addmm`` with an ``(in, out)`` weight (GPT-2's ``Conv1D``),
  ``x @ W``, convolutions, embedding lookups, average pooling; the weight is the tensor the call
  read (a parametrized or weight-normed weight: its effective value).

Everything else that reads a parameter is *passed over* (normalisations and their scales, biases,
activations with parameters, attention) and counted in ``EIReport.passed_over``, or *skipped*
(a parameter use no rule has a graph for, an elementwise scale outside a normalisation, a layer
the forward pass never calls): named once in ``EIReport.skipped`` and in one warning.

One cheap forward pass (:func:`foresight.layers.scan.scan`) finds the modules; only when some
parameter is read outside the modules with module rules or of passed-over kinds does EI ask for the
full plan (:func:`foresight.layers.discover`, three probe passes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from foresight.layers import kinds
from foresight.layers.discover import _leaves
from foresight.layers.graphs import Connectivity, NotMatrixFree, Tiled, compute_dtype, numel
from foresight.layers.modules import (
    DENSE,
    GRAPHS,
    POSITIONS,
    is_registered,
    lookup,
    standard_forward,
)
from foresight.layers.plan import Plan, Use

__all__ = ["EILayer", "Found", "find_layers", "module_layers", "LINEAR_POSITIONS"]

#: The ``linear_positions`` options.
LINEAR_POSITIONS = ("once", "each")

Shape = tuple[int, ...]


@dataclass
class EILayer:
    """One weight graph EI counts: a module's or an operation's."""

    name: str
    type: str
    graph: Connectivity | None  # None: dense only (``why`` says why)
    dense: Callable[[], Tensor] | None
    n_in: int
    n_out: int
    tensors: Callable[[], list[tuple[str, Tensor]]]  # the parameters it reads (for errors)
    device: torch.device
    why: str = "a custom norm needs the dense matrix"


@dataclass
class OpLayer:
    """An operation-level weight graph of a plan (kept by ``get_shapes`` for reuse)."""

    name: str
    type: str
    use: Use
    rule: Any
    operands: dict[str, tuple[str, Any]]  # slot -> ("param", name) or ("derived", id)


@dataclass
class Found:
    """What :func:`find_layers` found."""

    modules: dict[nn.Module, tuple[Shape, Shape]] = field(default_factory=dict)
    names: dict[nn.Module, str] = field(default_factory=dict)
    ops: list[OpLayer] = field(default_factory=list)
    order: list[tuple[str, Any]] = field(default_factory=list)  # ("module", m) / ("op", i)
    skipped: list[str] = field(default_factory=list)
    passed_over: dict[str, int] = field(default_factory=dict)
    plan: Plan | None = None
    example: Any = None  # the inputs, when op layers need their operands' values


# ------------------------------------------------------------------ making the layers


def _place(module: nn.Module, default_dtype, default_device):
    for p in module.parameters():
        if p.is_floating_point():
            return compute_dtype(p), p.device
    return default_dtype, default_device


def _tile(graph, positions: int):
    return Tiled(graph, positions) if positions != 1 else graph


def _tile_dense(make: Callable[[], Tensor], positions: int) -> Callable[[], Tensor]:
    if positions == 1:
        return make
    return lambda: torch.block_diag(*([make()] * positions))


def _sizes(shape: Shape) -> int:
    return numel(shape[1:]) if len(shape) > 1 else numel(shape)


def module_layers(
    module: nn.Module,
    name: str,
    in_shape: Shape,
    out_shape: Shape,
    each: bool,
    device: torch.device | None,
    default_dtype: torch.dtype,
    default_device: torch.device,
) -> list[EILayer]:
    """The weight graph(s) of a module with a module rule, with the shapes of its call."""
    dtype, dev = _place(module, default_dtype, default_device)
    dev = torch.device(device) if device is not None else dev
    graph_fn, dense_fn = lookup(GRAPHS, module), lookup(DENSE, module)
    pos_fn = lookup(POSITIONS, module)
    positions = int(pos_fn(module, in_shape)) if (each and pos_fn is not None) else 1
    def tensors() -> list[tuple[str, Tensor]]:
        return [(f"{name}.{n}" if name else n, p) for n, p in module.named_parameters()]

    type_name = type(module).__name__
    cache: dict[str, Any] = {}

    def dense_all():
        if "d" not in cache:
            if dense_fn is None:
                raise ValueError(f"layer {name!r} ({type_name}) has no dense builder")
            cache["d"] = dense_fn(module, in_shape, out_shape)
        return cache["d"]

    parts: list[tuple[str, Any, str | None, int, int]] = []
    if graph_fn is None:
        n_in, n_out = _sizes(in_shape), _sizes(out_shape)
        parts.append(("", None, "its type has only a dense builder", n_in, n_out))
    else:
        try:
            g = graph_fn(module, in_shape, out_shape, dev, dtype)
        except NotMatrixFree as exc:
            parts.append(("", None, f"it cannot be evaluated matrix-free ({exc})", exc.n_in,
                          exc.n_out))
        else:
            for suffix, graph in (g if isinstance(g, list) else [("", g)]):
                parts.append((suffix, graph, None, graph.n_in, graph.n_out))
    out = []
    for i, (suffix, graph, why, n_in, n_out) in enumerate(parts):
        def make(i=i) -> Tensor:
            d = dense_all()
            return d[i] if isinstance(d, (list, tuple)) else d

        out.append(EILayer(
            name + suffix, type_name, _tile(graph, positions) if graph is not None else None,
            _tile_dense(make, positions), n_in * positions, n_out * positions, tensors, dev,
            why or "a custom norm needs the dense matrix",
        ))
    return out


def op_layer(op: OpLayer, operands: dict[str, Tensor], each: bool, device,
             default_dtype, default_device) -> EILayer:
    """The weight graph of an operation (its operands: the tensors the call read)."""
    w = operands.get("weight")
    if w is not None:
        dtype, dev = compute_dtype(w), w.device
    else:
        dtype, dev = default_dtype, default_device
    dev = torch.device(device) if device is not None else dev
    graph = op.rule.ei_graph(op.use, operands, dev, dtype)
    positions = int(op.rule.ei_positions(op.use)) if each else 1
    def tensors() -> list[tuple[str, Tensor]]:
        return [(ref if kind == "param" else f"{op.name} ({slot})", operands[slot])
                for slot, (kind, ref) in op.operands.items() if slot in operands]

    return EILayer(
        op.name, op.type, _tile(graph, positions),
        _tile_dense(lambda: op.rule.ei_dense(op.use, operands), positions),
        graph.n_in * positions, graph.n_out * positions, tensors, dev,
    )


# ------------------------------------------------------------------ finding them


def _first_names(model: nn.Module) -> tuple[dict[str, nn.Module], dict[int, str]]:
    """``{name: module}`` (first name of each module) and ``{id(param): first name}``."""
    modules: dict[str, nn.Module] = {}
    seen: set[int] = set()
    for n, m in model.named_modules(remove_duplicate=False):
        if id(m) not in seen:
            seen.add(id(m))
            modules[n] = m
    params: dict[int, str] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        params.setdefault(id(p), n)
    return modules, params


def _label(name: str) -> str:
    return name or "(model)"


def _covered_calls(calls, allowed: set[str] | None = None) -> list:
    """The first calls of modules with a module rule and their type's forward, outermost only
    (``allowed``: restrict to these module names)."""
    names = {c.name for c in calls if c.standard and (allowed is None or c.name in allowed)}
    return [c for c in calls if c.name in names and not any(s in names for s in c.stack)]


def _unread(model: nn.Module, scanned) -> list[str]:
    """Layers the forward pass does not read: modules with a module rule that are not called,
    and modules owning parameters none of which is read (by identity: a tied parameter read
    through another module counts)."""
    read = scanned.read_params()
    read_ids: set[int] = set()
    for pname, p in model.named_parameters(remove_duplicate=False):
        if pname in read or scanned.inside_opaque(pname.rpartition(".")[0]):
            read_ids.add(id(p))
    called = {c.name for c in scanned.calls}
    out = []
    seen: set[int] = set()
    for name, module in model.named_modules(remove_duplicate=False):
        if id(module) in seen:
            continue
        seen.add(id(module))
        if isinstance(module, kinds.PASS_OVER_MODULES):
            continue
        own = [id(p) for p in module._parameters.values() if p is not None]
        if any(i in read_ids for i in own):
            continue
        if name not in called and (own or is_registered(module)):
            if not own and scanned.inside_opaque(name):
                continue  # e.g. a projection an attention module reads as a whole
            out.append(f"{_label(name)} ({type(module).__name__}, not called by the forward pass)")
        elif own:
            out.append(f"{_label(name)} ({type(module).__name__}, its parameters are not read "
                       "by the forward pass)")
    return out


def _in_module_order(model: nn.Module, entries: list[str]) -> list[str]:
    """``entries`` (``"name (Type...)"``) sorted by where their module is registered."""
    order = {}
    for i, (name, _) in enumerate(model.named_modules(remove_duplicate=False)):
        order.setdefault(_label(name), i)
    return sorted(entries, key=lambda e: order.get(e.split(" (", 1)[0].split(":", 1)[0],
                                                   len(order)))


def static_skipped(model: nn.Module) -> list[str]:
    """Without a forward pass: modules owning parameters that no module rule covers (neither
    their own type's nor an enclosing module's) and that are not of a passed-over kind."""
    modules, _ = _first_names(model)
    covered = [n for n, m in modules.items() if standard_forward(m)]
    out = []
    for name, module in modules.items():
        if is_registered(module) or isinstance(module, kinds.PASS_OVER_MODULES):
            continue
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        if any(c == "" or name.startswith(c + ".") for c in covered):
            continue
        out.append(f"{_label(name)} ({type(module).__name__})")
    return out


def _rule_named(use: Use):
    from foresight.layers.registry import FALLBACK, RULES, Rule

    if use.kind == FALLBACK.name:
        return FALLBACK, False
    for rule in RULES:
        if type(rule).__name__ == use.rule:
            return rule, type(rule).ei_graph is not Rule.ei_graph
    return FALLBACK, False


def _op_key(use: Use, plan: Plan) -> tuple:
    w = next((o for o in use.operands if o.slot == "weight"), None)
    if w is None:
        return (use.rule, use.module, use.op, use.in_shape, use.out_shape)
    if w.param is not None:
        return (use.rule, w.param)
    d = plan.derived[w.derived]
    return (use.rule, use.module, d.sources, d.shape)


def _graph_key(module: nn.Module) -> tuple | None:
    """Modules of one registered type reading the same parameters have the same graph (T5's
    encoder and decoder embeddings share one table): counted once, like a module called twice."""
    params = tuple(id(p) for p in module.parameters())
    return (type(module), params) if params else None


def _add_module(found: Found, call, seen: set) -> None:
    key = _graph_key(call.module)
    if key is not None and key in seen:
        return
    seen.add(key)
    found.modules[call.module] = (call.in_shape, call.out_shape)
    found.names[call.module] = call.name
    found.order.append(("module", call.module))


def find_layers(model: nn.Module, input: Any, *, plan: bool = False) -> Found:
    """The weight graphs of ``model`` on ``input`` (call inside
    :func:`~foresight._guard.preserved`, in eval mode, without gradients). ``plan=True`` asks
    for the full plan even where the scan suffices (to check that both agree)."""
    from foresight.layers.scan import scan

    scanned = scan(model, input)
    found = Found(passed_over=dict(scanned.counts), skipped=_unread(model, scanned))
    covered = _covered_calls(scanned.calls)
    names = {c.name for c in covered}
    passover = {c.name for c in scanned.calls if isinstance(c.module, kinds.PASS_OVER_MODULES)}
    fast = not plan and (
        all(c.on_batch is True for c in covered)
        and all(any(n in names or n in passover for n in r.stack) for r in scanned.reads)
        and all(any(n in names for n in stack) for _, stack in scanned.free)
    )
    if fast:
        seen: set = set()
        for c in covered:
            _add_module(found, c, seen)
        return found
    _from_plan(model, input, scanned, found)
    return found


def _from_plan(model: nn.Module, input: Any, scanned, found: Found) -> None:
    from foresight.layers.discover import discover

    plan = discover(model, input)
    found.plan = plan
    modules, _ = _first_names(model)
    on_batch = {c.name for c in scanned.calls if c.on_batch is True}
    covered = _covered_calls(scanned.calls, {u.module for u in plan.units} & on_batch)
    names = {c.name for c in covered}
    by_name: dict[str, set[int]] = {}
    for u in plan.units:
        by_name.setdefault(u.module, set()).update(u.uses)
    inside: set[int] = set().union(*(by_name.get(n, set()) for n in names)) if names else set()
    # registered modules whose input does not depend on the model's input (a lookup of constant
    # ids broadcast over the batch, as BERT's token types by default) add a constant: a bias
    constant = {c.name for c in scanned.calls if c.standard and c.on_batch is False}
    for u in plan.units:
        if u.module in constant:
            for i in u.uses:
                if i not in inside:
                    inside.add(i)
                    found.passed_over["bias"] = found.passed_over.get("bias", 0) + 1
    keyed: list[tuple[float, str, Any]] = []
    for c in covered:
        uses = by_name.get(c.name, set())
        at = max((plan.uses[i].index for i in uses), default=math.inf)
        keyed.append((at, "module", c))
    seen_ops: set[tuple] = set()
    skipped: dict[str, None] = {}
    extra = found.passed_over
    for i, use in enumerate(plan.uses):
        if i in inside:
            continue
        module = modules.get(use.module)
        if module is not None and isinstance(module, kinds.PASS_OVER_MODULES):
            continue  # counted by the scan (normalisation modules, activations with parameters)
        rule, has_graph = _rule_named(use)
        label = f"{_label(use.module)} ({use.module_type or type(model).__name__}"
        if rule.role == "weight":
            if not has_graph:
                skipped[f"{label}, {use.op}: its rule has no weight graph)"] = None
                continue
            key = _op_key(use, plan)
            if key in seen_ops:
                continue
            seen_ops.add(key)
            refs = {o.slot: (("param", o.param) if o.param is not None else ("derived", o.derived))
                    for o in use.operands}
            op = OpLayer(use.module, use.module_type, use, rule, refs)
            keyed.append((use.index, "op", op))
        elif rule.role == "norm":
            extra["norm"] = extra.get("norm", 0) + 1
        elif rule.role == "scale":
            if use.module in scanned.norm_like:
                extra["scale"] = extra.get("scale", 0) + 1
            else:
                skipped[f"{label})"] = None
        elif rule.role == "bias":
            extra["bias"] = extra.get("bias", 0) + 1
        elif not kinds.is_attention(use.op):  # attention ops are counted by the scan
            skipped[f"{label}, {use.op})"] = None
    keyed.sort(key=lambda item: item[0])
    taken: set[str] = set()
    seen: set = set()
    for _, kind, item in keyed:
        if kind == "module":
            _add_module(found, item, seen)
            taken.add(item.name)
            continue
        name = item.name
        if name in taken:
            name = f"{item.name}:{item.use.op}"
            k = 2
            while name in taken:
                name, k = f"{item.name}:{item.use.op}#{k}", k + 1
        item.name = name
        taken.add(name)
        found.order.append(("op", len(found.ops)))
        found.ops.append(item)
    found.skipped += [s for s in skipped if s not in found.skipped]
    found.skipped = _in_module_order(model, found.skipped)
    if any(kind == "derived" for op in found.ops for kind, _ in op.operands.values()):
        # keep only the examples the replay runs (the discovery's first probe examples)
        from foresight.layers.discover import PROBE_BATCH, _index_batch, batch_inputs

        batch = batch_inputs(input)
        dev = next((t.device for t in _leaves(input) if isinstance(t, Tensor)), None)
        idx = torch.arange(min(batch, PROBE_BATCH), device=dev)
        found.example = _index_batch(input, idx, batch)


def op_operands(model: nn.Module, found: Found) -> list[dict[str, Tensor]]:
    """The tensors each op layer of ``found`` reads (parameters; derived values by replay)."""
    _, pnames = _first_names(model)
    params = {n: p for n, p in model.named_parameters(remove_duplicate=False)}
    values: dict[int, dict[str, Tensor]] = {}
    derived = [op.use for op in found.ops
               if any(kind == "derived" for kind, _ in op.operands.values())]
    if derived:
        from foresight.layers.replay import operand_values

        values = operand_values(model, found.example, derived)
    out = []
    for op in found.ops:
        got: dict[str, Tensor] = {}
        for slot, (kind, ref) in op.operands.items():
            got[slot] = params[ref].detach() if kind == "param" else values[op.use.index][slot]
        out.append(got)
    return out
