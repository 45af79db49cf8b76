r"""One discovery pass: every use of every parameter, at the level of torch operations.

Why operations, not modules. Models researchers train are built from modules foresight has never
seen: GPT-2's ``Conv1D`` is an ``addmm`` with an ``(in, out)`` weight, Llama's and T5's RMSNorms are
``weight * normalised x``, position embeddings index a table with a batch of one and broadcast,
parametrizations and weight norm compute the weight inside ``forward``. All of them are made of a
small number of torch functions. A :class:`torch.overrides.TorchFunctionMode` sees every call of a
torch function with its actual arguments, so one interception point covers modules by any name; the
registry of rules (:mod:`foresight.layers.registry`) is keyed by function. Module forward hooks only
tell us *where* (which module) a call runs, which names the result. Intercepting at the dispatcher
(``TorchDispatchMode``) would see even more, but below autograd, where gradient hooks cannot be
registered, and after weights were transposed and views taken; the function level is the highest
level that still sees every parameter as it is used.

What the pass does (inside :func:`foresight._guard.preserved`, with the random state restored, so
the model and its training are untouched):

1. it slices the batch to 3 examples (repeating examples when the batch is smaller) and runs the
   forward pass with the interception on, recording every call: the function, which arguments are
   parameters, the shapes, the module it ran in;
2. it runs the same forward pass on 2 examples: the dimensions that change size carry the batch;
3. it runs the 3 examples again with example 0 perturbed: the entries that change belong to
   example 0,    which tells how a merged dimension (``B*T`` or ``T*B``) is ordered, and where
   examples stop being independent (BatchNorm in training mode, which couples the batch).

A tensor without a batch dimension that requires a gradient is a parameter or is *derived* from
parameters (:class:`~foresight.layers.plan.Derived`). A call that combines a batched tensor with a
parameter or derived tensor is a *use* (:class:`~foresight.layers.plan.Use`); the first rule whose
pattern matches it handles it, and a generic exact fallback takes any call no rule matches.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
>>> plan = discover(net, torch.randn(8, 4))
>>> [(u.kind, u.module, u.params, u.followed_by) for u in plan.uses]
[('linear', '0', ('0.weight', '0.bias'), 'Tanh'), ('linear', '2', ('2.weight', '2.bias'), None)]
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from foresight._guard import preserved
from foresight.layers import kinds
from foresight.layers.calls import flatten, func_name, is_inplace, outputs, structure
from foresight.layers.layout import Layout, detect
from foresight.layers.plan import Derived, Operand, Plan, Step, Use

__all__ = ["discover", "DiscoveryError", "PROBE_BATCH", "call_model", "batch_inputs"]

#: Examples in the main probe batch (the second probe uses one fewer).
PROBE_BATCH = 3

# Functions that are never uses nor derive anything (metadata queries); not recorded.
_IGNORED_NAMES = {"__get__", "size", "dim", "numel", "stride", "is_contiguous", "data_ptr",
                  "element_size", "__len__", "__format__", "__repr__", "__bool__", "item",
                  "tolist", "__hash__", "__eq__"}

# Shape/identity functions looked through when finding the activation that follows a use.
_SHAPE_FUNCS = {"view", "reshape", "flatten", "contiguous", "dropout", "clone", "squeeze",
                "unsqueeze", "permute", "transpose", "to", "float", "type_as", "alpha_dropout",
                "feature_alpha_dropout", "dropout1d", "dropout2d", "dropout3d", "_unsafe_view"}


class DiscoveryError(ValueError):
    """The forward pass cannot be analysed (it differs between batches, or raised)."""


# ------------------------------------------------------------------ calling the model


def call_model(model: nn.Module, inputs: Any, kwargs: dict[str, Any] | None = None) -> Any:
    """``model(*inputs, **kwargs)``: a tuple/list is unpacked, a dict passed as keywords."""
    kwargs = dict(kwargs or {})
    if isinstance(inputs, dict):
        return model(**inputs, **kwargs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs, **kwargs)
    return model(inputs, **kwargs)


def batch_inputs(inputs: Any, kwargs: dict[str, Any] | None = None) -> int:
    """The batch size: the leading size of the first tensor argument."""
    for t in _leaves((inputs, kwargs or {})):
        if isinstance(t, Tensor) and t.dim() > 0:
            return int(t.shape[0])
    raise DiscoveryError(
        "the model inputs contain no tensor with a batch dimension (dim 0); pass the example batch "
        "the model is trained on"
    )


def _leaves(obj: Any):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _leaves(v)
    else:
        yield obj


def _plain(obj: Any) -> Any:
    """Model outputs as nested containers (a ``ModelOutput`` or dataclass becomes a dict)."""
    if isinstance(obj, (Tensor, list, tuple, dict)):
        return obj
    if hasattr(obj, "to_tuple"):
        return obj.to_tuple()
    if hasattr(obj, "__dataclass_fields__"):
        return {k: getattr(obj, k) for k in obj.__dataclass_fields__}
    return obj


def _index_batch(obj: Any, idx: Tensor, batch: int) -> Any:
    """``obj`` with every tensor whose leading size is ``batch`` indexed by ``idx`` along dim 0."""
    if isinstance(obj, Tensor):
        if obj.dim() > 0 and obj.shape[0] == batch:
            return obj.index_select(0, idx.to(obj.device))
        return obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_index_batch(o, idx, batch) for o in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_index_batch(o, idx, batch) for o in obj)
    if isinstance(obj, dict):
        return type(obj)((k, _index_batch(v, idx, batch)) for k, v in obj.items())
    return obj


def _perturb_first(obj: Any, batch: int, gen: torch.Generator) -> Any:
    """``obj`` with example 0 of every batched tensor changed (floats: +noise; integers: shifted
    within the values seen, so that indices stay valid; booleans: flipped)."""
    if isinstance(obj, Tensor):
        if obj.dim() == 0 or obj.shape[0] != batch:
            return obj
        out = obj.clone()
        if obj.is_floating_point() or obj.is_complex():
            scale = float(obj.detach().abs().max()) if obj.numel() else 1.0
            scale = scale if math.isfinite(scale) and scale > 0 else 1.0
            noise = torch.randn(obj[0].shape, generator=gen, dtype=torch.float64)
            out[0] = obj[0] + (0.5 * scale * noise).to(obj.dtype).to(obj.device)
        elif obj.dtype == torch.bool:
            out[0] = ~obj[0]
        else:
            top = int(obj.max()) if obj.numel() else 0
            low = int(obj.min()) if obj.numel() else 0
            if top > low:
                out[0] = (obj[0] - low + 1) % (top - low + 1) + low
        return out
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_perturb_first(o, batch, gen) for o in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_perturb_first(o, batch, gen) for o in obj)
    if isinstance(obj, dict):
        return type(obj)((k, _perturb_first(v, batch, gen)) for k, v in obj.items())
    return obj


# ------------------------------------------------------------------ recording


@dataclass
class _Seen:
    """A tensor argument or output of a recorded call."""

    shape: tuple[int, ...]
    requires_grad: bool
    param: str | None
    tid: int  # id() during the run (the tensors are kept alive until the run is analysed)
    floating: bool
    value: Tensor | None = None  # run A: a copy, for the comparison with run B
    changed: Tensor | None = None  # run B: entries that differ from run A


@dataclass
class _Call:
    func: Callable[..., Any]
    name: str
    args: dict[int, _Seen]  # flat position -> tensor argument
    outs: list[_Seen]
    stack: tuple[int, ...]  # module ids, outermost first
    grad: bool
    struct: tuple[Any, dict] = ((), {})  # (args, kwargs), tensors as their flat positions
    flat_len: int = 0


class _Recorder(TorchFunctionMode):
    """Records every torch-function call that returns a tensor."""

    def __init__(self, params: dict[int, str], keep: str, reference: list[_Call] | None,
                 smaller: list[_Call] | None = None) -> None:
        super().__init__()
        self.params = params
        self.keep = keep  # "values" (run A), "shapes" (run C), "diff" (run B)
        self.reference = reference
        self.smaller = smaller  # run C: which dimension of each tensor carries the batch
        self._compared: dict[int, Tensor | None] = {}  # tensor id -> its change vector
        self.calls: list[_Call] = []
        self.alive: list[Tensor] = []
        self.stack: list[int] = []
        self.modcalls: list[list[Any]] = []  # [module id, first call, end call, in, out shapes]
        self._open: list[list[Any]] = []

    def _seen(self, t: Tensor, value: Tensor | None) -> _Seen:
        return _Seen(
            shape=tuple(t.shape),
            requires_grad=bool(t.requires_grad),
            param=self.params.get(id(t)),
            tid=id(t),
            floating=t.is_floating_point(),
            value=value,
        )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func_name(func)
        if name in _IGNORED_NAMES:
            return func(*args, **kwargs)
        flat = flatten(args, kwargs)
        before: dict[int, Tensor | None] = {}
        for i, a in enumerate(flat):
            if isinstance(a, Tensor):
                before[i] = self._copy(a) if self.keep in ("values", "diff") else None
        result = func(*args, **kwargs)
        outs = outputs(result)
        if not outs:
            return result
        call = _Call(
            func=func,
            name=name,
            args={i: self._seen(flat[i], before[i]) for i in before},
            outs=[self._seen(t, self._copy(t) if self.keep != "shapes" else None) for t in outs],
            stack=tuple(self.stack),
            grad=torch.is_grad_enabled(),
            struct=structure(args, kwargs) if self.keep == "values" else ((), {}),
            flat_len=len(flat),
        )
        if self.keep == "diff":
            self._diff(call)
        self.calls.append(call)
        self.alive.extend(outs)
        self.alive.extend(flat[i] for i in before)
        return result

    def _copy(self, t: Tensor) -> Tensor | None:
        if id(t) in self.params or t.is_sparse or t.layout != torch.strided:
            return None
        return t.detach().clone()

    def _diff(self, call: _Call) -> None:
        """Compare with the same call of the reference run: for each batched tensor (its batch
        dimension read off the smaller run), which entries along that dimension changed."""
        index = len(self.calls)
        if self.reference is None or index >= len(self.reference):
            return
        ref = self.reference[index]
        small = self.smaller[index] if self.smaller is not None and index < len(self.smaller) \
            else None
        pairs = [(call.args.get(i), ref.args.get(i), small.args.get(i) if small else None)
                 for i in call.args]
        pairs += [(o, r, small.outs[j] if small and j < len(small.outs) else None)
                  for j, (o, r) in enumerate(zip(call.outs, ref.outs))]
        for mine, theirs, smaller in pairs:
            if mine is None or theirs is None or theirs.value is None:
                continue
            if mine.tid in self._compared and mine.value is not None:  # seen earlier, unchanged
                mine.value = None
                mine.changed = self._compared[mine.tid]
                continue
            if mine.value is None:
                continue
            value, mine.value = mine.value, None
            if value.shape != theirs.value.shape or smaller is None:
                continue
            dims = [d for d, (x, y) in enumerate(zip(value.shape, smaller.shape)) if x != y]
            if len(dims) != 1 or value.dim() != len(smaller.shape):
                continue  # no batch dimension (or one detect() will refuse anyway)
            d = dims[0]
            mine.changed = _changed(value, theirs.value).movedim(d, 0).reshape(
                value.shape[d], -1).any(1)
            if not is_inplace(call.func):  # an in-place call's output is its (new) first input
                self._compared[mine.tid] = mine.changed


def _changed(a: Tensor, b: Tensor) -> Tensor:
    """Entries that differ beyond float noise (relative 1e-6; NaN equals NaN), in the tensors'
    own precision."""
    a, b = a.detach(), b.detach()
    if not (a.is_floating_point() or a.is_complex()):
        return a != b
    # not exact: kernels may round another example's entries differently (T5's attention does)
    return ~torch.isclose(a, b, rtol=1e-6, atol=0.0, equal_nan=True)


@contextlib.contextmanager
def _module_stack(recorder: _Recorder) -> Iterator[None]:
    """Global module hooks keeping ``recorder.stack`` equal to the modules currently running."""
    from torch.nn.modules.module import (
        register_module_forward_hook,
        register_module_forward_pre_hook,
    )

    def pre(module: nn.Module, args: Any) -> None:
        recorder.stack.append(id(module))
        first = next((a for a in _leaves(args) if isinstance(a, Tensor)), None)
        entry = [id(module), len(recorder.calls), None,
                 tuple(first.shape) if first is not None else None, None]
        recorder._open.append(entry)

    def post(module: nn.Module, args: Any, output: Any) -> None:
        if recorder.stack and recorder.stack[-1] == id(module):
            recorder.stack.pop()
        if recorder._open and recorder._open[-1][0] == id(module):
            entry = recorder._open.pop()
            entry[2] = len(recorder.calls)
            out = next((a for a in _leaves(_plain(output)) if isinstance(a, Tensor)), None)
            entry[4] = tuple(out.shape) if out is not None else None
            recorder.modcalls.append(entry)

    h1 = register_module_forward_pre_hook(pre)
    h2 = register_module_forward_hook(post, always_call=True)
    try:
        yield
    finally:
        h1.remove()
        h2.remove()


def _run(
    model: nn.Module,
    inputs: Any,
    kwargs: dict[str, Any],
    params: dict[int, str],
    keep: str,
    reference: list[_Call] | None,
    seed: int,
    grad: bool,
    smaller: list[_Call] | None = None,
) -> tuple[_Recorder, Any]:
    recorder = _Recorder(params, keep, reference, smaller)
    devices = sorted(
        {p.device.index for p in model.parameters() if p.device.type == "cuda"} - {None}
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with _module_stack(recorder), torch.set_grad_enabled(grad), recorder:
            try:
                out = call_model(model, inputs, kwargs)
            except Exception as exc:
                raise DiscoveryError(
                    f"the forward pass raised on a probe batch: {type(exc).__name__}: {exc}"
                ) from exc
    return recorder, out


# ------------------------------------------------------------------ analysis


def _reachable_params(roots: list[Tensor], by_id: dict[int, str]) -> set[str]:
    """Parameters with a gradient path from ``roots`` (walks the autograd graph)."""
    found: set[str] = set()
    stack = [r.grad_fn for r in roots if r.grad_fn is not None]
    seen: set[int] = set()
    for r in roots:
        if r.grad_fn is None and id(r) in by_id:
            found.add(by_id[id(r)])
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        for nxt, _ in fn.next_functions:
            if nxt is None:
                continue
            var = getattr(nxt, "variable", None)
            if var is not None:
                if id(var) in by_id:
                    found.add(by_id[id(var)])
            else:
                stack.append(nxt)
    return found


def _derived_sources(t: Tensor, by_id: dict[int, str]) -> tuple[str, ...]:
    return tuple(sorted(_reachable_params([t], by_id)))


def _sig_of_inputs(inputs: Any, kwargs: dict[str, Any]) -> tuple[Any, ...]:
    flat = list(_leaves((inputs, kwargs)))
    return tuple(
        (tuple(t.shape[1:]), str(t.dtype), t.device.type) if isinstance(t, Tensor)
        else (t if isinstance(t, (bool, int, float, str, type(None))) else type(t))
        for t in flat
    )


def signature(model: nn.Module, inputs: Any, kwargs: dict[str, Any] | None = None) -> tuple:
    """What a plan depends on: trainable parameters, modes, input dtypes and per-example shapes.

    Two calls with equal signatures run the same operations on the same parameters (unless the
    forward pass branches on the data, which the run-time check catches)."""
    params = tuple(
        (n, id(p), tuple(p.shape), p.requires_grad) for n, p in model.named_parameters()
    )
    modes = tuple(m.training for m in model.modules())
    return (params, modes, _sig_of_inputs(inputs, kwargs or {}))


def discover(
    model: nn.Module,
    inputs: Any,
    kwargs: dict[str, Any] | None = None,
    *,
    seed: int = 0,
) -> Plan:
    """The :class:`~foresight.layers.plan.Plan` of ``model`` on the batch ``inputs``.

    Args:
        model: any module; left exactly as it was (mode, hooks, buffers, ``.grad``, random state).
        inputs: what the model is called with: a tensor, a tuple (positional arguments) or a dict
            (keyword arguments). The batch is dim 0 of every tensor whose leading size equals the
            leading size of the first tensor.
        kwargs: further keyword arguments of the call.
        seed: the random seed of the probe passes (dropout masks).

    Raises:
        DiscoveryError: the forward pass raised, or ran different operations for different batches.
    """
    from foresight.layers.registry import match

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    kwargs = dict(kwargs or {})
    batch = batch_inputs(inputs, kwargs)
    by_id = {id(p): n for n, p in model.named_parameters()}
    trainable = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    names = {}
    for n, m in model.named_modules(remove_duplicate=False):
        names.setdefault(id(m), (n, type(m).__name__, m))
    b_a, b_c = PROBE_BATCH, PROBE_BATCH - 1
    with preserved(model):
        dev = next((t.device for t in _leaves((inputs, kwargs)) if isinstance(t, Tensor)), None)
        idx_a = torch.arange(b_a, device=dev) % batch
        idx_c = torch.arange(b_c, device=dev) % batch
        in_a = _index_batch(inputs, idx_a, batch)
        kw_a = _index_batch(kwargs, idx_a, batch)
        in_c = _index_batch(inputs, idx_c, batch)
        kw_c = _index_batch(kwargs, idx_c, batch)
        gen = torch.Generator().manual_seed(1234)
        in_b = _perturb_first(in_a, b_a, gen)
        kw_b = _perturb_first(kw_a, b_a, gen)
        run_a, out_a = _run(model, in_a, kw_a, by_id, "values", None, seed, True)
        roots = [t for t in _leaves(_plain(out_a)) if isinstance(t, Tensor) and t.requires_grad]
        reachable = _reachable_params(roots, by_id)
        run_c, _ = _run(model, in_c, kw_c, by_id, "shapes", None, seed, False)
        run_b, _ = _run(model, in_b, kw_b, by_id, "diff", run_a.calls, seed, False,
                        smaller=run_c.calls)
        plan = _analyse(run_a.calls, run_b.calls, run_c.calls, b_a, b_c, names, trainable,
                        reachable, by_id, run_a.alive, match)
        plan.units = _units(run_a.modcalls, run_c.modcalls, plan, names, b_a, b_c)
        del run_a, run_b, run_c, out_a, roots
    plan.signature = signature(model, inputs, kwargs)
    return plan


def _layout_of(seen_a: _Seen, seen_b: _Seen | None, seen_c: _Seen | None, b_a: int, b_c: int):
    if seen_c is None:
        return "it is not seen with the smaller probe batch"
    changed = seen_b.changed if seen_b is not None else None
    return detect(seen_a.shape, seen_c.shape, b_a, b_c, changed)


def _per_example(shape: tuple[int, ...], layout: Layout, batch: int) -> tuple[int, ...]:
    s = list(shape)
    k = s[layout.dim] // batch
    if k == 1:
        del s[layout.dim]
    else:
        s[layout.dim] = k
    return tuple(s)


def _coupling(seen_b: _Seen | None, layout: Layout, b_a: int) -> bool:
    """Whether entries of examples other than example 0 changed (the examples are coupled)."""
    if seen_b is None or seen_b.changed is None:
        return False
    along = seen_b.changed  # changed entries along the batch dimension
    n = along.shape[0]
    k = n // b_a
    owner = torch.arange(n) // k if layout.order == "major" else torch.arange(n) % b_a
    return bool(along[owner.to(along.device) != 0].any())


def _analyse(calls_a, calls_b, calls_c, b_a, b_c, names, trainable, reachable, by_id, alive,
             match) -> Plan:  # noqa: C901
    from foresight.layers.registry import match_free

    if len(calls_a) != len(calls_c) or len(calls_a) != len(calls_b) or any(
        x.func is not y.func or x.func is not z.func for x, y, z in zip(calls_a, calls_b, calls_c)
    ):
        raise DiscoveryError(
            "the forward pass runs different operations for different batches (data-dependent "
            "control flow); foresight cannot plan it"
        )
    plan = Plan(params=dict(trainable))
    derived_of_tid: dict[int, int] = {}  # run-A tensor id -> Derived id
    produced_by: dict[int, tuple[int, int]] = {}  # run-A tensor id -> (call index, out index)
    use_of_call: dict[int, int] = {}
    consumers: dict[int, list[int]] = {}  # tensor id -> call indices reading it
    seen_params: set[str] = set()
    for ci, (ca, cb, cc) in enumerate(zip(calls_a, calls_b, calls_c)):
        layouts: dict[Any, Any] = {}
        for pos, sa in ca.args.items():
            consumers.setdefault(sa.tid, []).append(ci)
            if sa.param is not None:
                layouts[pos] = None
                continue
            layouts[pos] = _layout_of(sa, cb.args.get(pos), cc.args.get(pos), b_a, b_c)
        out_layouts = [
            _layout_of(sa, cb.outs[j] if j < len(cb.outs) else None,
                       cc.outs[j] if j < len(cc.outs) else None, b_a, b_c)
            for j, sa in enumerate(ca.outs)
        ]
        tracked = {
            pos: sa for pos, sa in ca.args.items()
            if sa.param is not None or sa.tid in derived_of_tid
        }
        batched = {pos: lay for pos, lay in layouts.items() if isinstance(lay, Layout)}
        for j, (sa, lay) in enumerate(zip(ca.outs, out_layouts)):
            produced_by.setdefault(sa.tid, (ci, j))
            if isinstance(lay, Layout) and not plan.coupled and _coupling(
                cb.outs[j] if j < len(cb.outs) else None, lay, b_a
            ):
                plan.coupled.append(_where(ca, names))
        if not tracked:
            out_batched = [j for j, lay in enumerate(out_layouts) if isinstance(lay, Layout)]
            if batched and out_batched:
                free = match_free(ca.func, ca, batched, out_layouts[out_batched[0]])
                if free is not None:
                    use = _make_use(ci, ca, {}, batched, out_batched[0], out_layouts,
                                    derived_of_tid, names, _constant(free), b_a)
                    use_of_call[ci] = len(plan.uses)
                    plan.uses.append(use)
            continue
        keys = tuple(
            sa.param if sa.param is not None else f"#{derived_of_tid[sa.tid]}"
            for _, sa in sorted(tracked.items())
        )
        sources: set[str] = set()
        for sa in tracked.values():
            if sa.param is not None:
                sources.add(sa.param)
            else:
                sources.update(plan.derived[derived_of_tid[sa.tid]].sources)
        if ca.grad:
            seen_params.update(sources)
        out_batched = [j for j, lay in enumerate(out_layouts) if isinstance(lay, Layout)]
        if batched and out_batched:
            use = _make_use(ci, ca, tracked, batched, out_batched[0], out_layouts,
                            derived_of_tid, names, match, b_a)
            use_of_call[ci] = len(plan.uses)
            plan.steps.append(Step(ca.func, keys, len(plan.uses), None))
            plan.uses.append(use)
            continue
        # parameters (and constants) only: the floating outputs without a batch are derived
        made = None
        for j, sa in enumerate(ca.outs):
            if out_layouts[j] is None and sa.floating:
                made = (len(plan.derived), j)
                plan.derived[made[0]] = Derived(made[0], tuple(sorted(sources)), sa.shape, ca.name)
                derived_of_tid[sa.tid] = made[0]
                break
        plan.steps.append(
            Step(ca.func, keys, None, made[0] if made else None, made[1] if made else 0)
        )
    _follow(plan, calls_a, use_of_call, consumers, names)
    plan.unused = tuple(n for n in trainable if n not in reachable)
    for n in trainable:
        if n in reachable and n not in seen_params:
            plan.unseen[n] = (
                "its gradient comes from an operation foresight cannot see (a custom "
                "autograd.Function, a compiled region or a C++ extension)"
            )
    plan.modules = {
        names[mid][0]: names[mid][1] for c in calls_a for mid in c.stack if mid in names
    }
    return plan


def _units(mods_a, mods_c, plan: Plan, names: dict, b_a: int, b_c: int) -> list:
    """Every module call, with per-example input/output shapes and the uses inside it."""
    from foresight.layers.plan import Unit

    out = []
    use_at = {u.index: i for i, u in enumerate(plan.uses)}
    for entry_a, entry_c in zip(mods_a, mods_c):
        mid, start, end, in_a, out_a = entry_a
        if mid not in names or in_a is None or out_a is None:
            continue
        in_c, out_c = entry_c[3], entry_c[4]
        name, typ, _ = names[mid]
        lay_in = detect(in_a, in_c, b_a, b_c, None) if in_c is not None else None
        lay_out = detect(out_a, out_c, b_a, b_c, None) if out_c is not None else None
        if not isinstance(lay_in, Layout) or not isinstance(lay_out, Layout):
            continue
        inside = tuple(use_at[i] for i in range(start, end) if i in use_at)
        out.append(Unit(name, typ, _per_example(in_a, lay_in, b_a),
                        _per_example(out_a, lay_out, b_a), lay_in, lay_out, inside))
    return out


def _constant(value: Any) -> Callable[..., Any]:
    def same(*args: Any) -> Any:
        return value

    return same


def _where(call: _Call, names: dict) -> str:
    if call.stack and call.stack[-1] in names:
        name, typ, _ = names[call.stack[-1]]
        return f"{call.name} in {name or '(model)'} ({typ})"
    return call.name


def _make_use(ci, ca, tracked, batched, out_j, out_layouts, derived_of_tid, names, match, b_a):
    module_name, module_type = "", ""
    if ca.stack and ca.stack[-1] in names:
        module_name, module_type, _ = names[ca.stack[-1]]
    found = match(ca.func, ca, tracked, batched, out_layouts[out_j])
    operands = []
    if found is not None:
        rule, act_pos, slots, options = found
        for slot, pos in slots.items():
            sa = ca.args[pos]
            operands.append(Operand(slot, pos, sa.param, derived_of_tid.get(sa.tid), sa.shape))
        reason = None
    else:
        from foresight.layers.registry import FALLBACK

        rule, options = FALLBACK, {}
        act_pos = min(batched)
        for pos, sa in sorted(tracked.items()):
            operands.append(
                Operand(f"arg{pos}", pos, sa.param, derived_of_tid.get(sa.tid), sa.shape)
            )
        reason = f"no rule for {ca.name} with these arguments"
    in_layout = batched[act_pos]
    out_layout = out_layouts[out_j]
    use_grad = ca.grad and ca.outs[out_j].requires_grad
    return Use(
        index=ci,
        kind=rule.name,
        rule=type(rule).__name__,
        op=ca.name,
        module=module_name,
        module_type=module_type,
        operands=tuple(operands),
        activation=act_pos,
        in_layout=in_layout,
        out_index=out_j,
        out_layout=out_layout,
        in_shape=_per_example(ca.args[act_pos].shape, in_layout, b_a),
        out_shape=_per_example(ca.outs[out_j].shape, out_layout, b_a),
        options=options,
        reason=reason,
        grad=use_grad,
    )


def _follow(plan: Plan, calls: list[_Call], use_of_call: dict[int, int],
            consumers: dict[int, list[int]], names: dict) -> None:
    """Set ``followed_by``: the elementwise activation applied to each use's output, looking past
    shape changes, dropout and pass-through modules."""
    for ci, ui in use_of_call.items():
        use = plan.uses[ui]
        tid = calls[ci].outs[use.out_index].tid
        for _ in range(8):
            nxt = [c for c in consumers.get(tid, []) if c > ci and not (
                calls[c].name in _SHAPE_FUNCS and calls[c].outs and calls[c].outs[0].tid == tid
            )]  # (a dropout with p=0 returns its input: look past it)
            if len(nxt) != 1:
                break
            call = calls[nxt[0]]
            module = names.get(call.stack[-1], (None, None, None))[2] if call.stack else None
            if module is not None and kinds.is_activation(module):
                use.followed_by = type(module).__name__
                use.followed_by_module = names[call.stack[-1]][0]
                break
            if kinds.is_activation(call.func):
                use.followed_by = kinds.ACTIVATION_FUNCTIONS[call.func]
                use.followed_by_call = (call.func, call.struct)
                break
            if call.name not in _SHAPE_FUNCS or not call.outs:
                break
            ci, tid = nxt[0], call.outs[0].tid


def use_shapes(plan: Plan) -> dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]]:
    """``{module name: [(in_shape, out_shape), ...]}`` of every use (per example)."""
    out: dict[str, list] = {}
    for u in plan.uses:
        out.setdefault(u.module, []).append((u.in_shape, u.out_shape))
    return out


def _unused() -> None:  # pragma: no cover - keep imports used for type checkers
    _ = (weakref, Sequence, is_inplace)
