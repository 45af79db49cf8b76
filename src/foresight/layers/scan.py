r"""A cheap look at one forward pass: which modules run, with which shapes, and where each
parameter is read.

:func:`foresight.layers.discover` makes the full plan from three probe passes that copy every
tensor they see (to find the batch dimension and how merged dimensions are ordered); on a
ResNet-50 at 224x224 that is a few seconds. A metric that describes most layers as whole modules
(:mod:`foresight.ei`) first asks :func:`scan`, one forward pass that copies nothing: every module
call (its first tensor argument and output), every operation that reads a parameter (or a tensor
computed from parameters only) and the modules it ran in, and a count of the parameter-free
operations a metric passes over. When every parameter is read inside a module with a module rule
(:mod:`foresight.layers.modules`) or of a passed-over kind (:mod:`foresight.layers.kinds`), the
scan says all there is; otherwise the metric asks for the plan.

Inside such a module (one that runs its registered type's ``forward``, or a normalisation,
activation, pooling or pass-through module) the interception is switched off: its rule describes
what it does, so its parameters are counted as read (``Scan.opaque``) and its output as
descending from the inputs when its input does. Only the operations between such modules pay for
the interception.

A tensor *descends from the inputs* when it is an input or was computed from one; parameters and
tensors computed from parameters alone (parametrizations, ``weight * gain``) do not. The scan
tracks tensors by identity while they are alive (weak references: nothing is kept).

>>> import torch
>>> from torch import nn
>>> s = scan(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), torch.randn(2, 4))
>>> [(c.name, c.type, c.in_shape, c.out_shape) for c in s.calls]
[('0', 'Linear', (2, 4), (2, 3)), ('1', 'ReLU', (2, 3), (2, 3)), ('', 'Sequential', (2, 4), (2, 3))]
>>> sorted(s.opaque), s.counts   # Linear and ReLU run unintercepted: their rules say it all
(['0', '1'], {'activation': 1})
>>> s = scan(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), torch.randn(2, 4), opaque=False)
>>> [(r.op, r.stack[-1], r.params, r.on_batch) for r in s.reads]
[('linear', '0', ('0.weight', '0.bias'), True)]
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from foresight.layers import kinds
from foresight.layers.calls import func_name, outputs
from foresight.layers.discover import _IGNORED_NAMES, _leaves, _plain, call_model

__all__ = ["scan", "Scan", "ModuleCall", "Read"]


@dataclass(frozen=True)
class ModuleCall:
    """The first call of one module."""

    name: str
    type: str
    module: nn.Module
    stack: tuple[str, ...]  # names of the modules running around it, outermost first
    in_shape: tuple[int, ...] | None  # first tensor argument (batch included)
    out_shape: tuple[int, ...] | None  # first tensor of the output
    on_batch: bool | None  # whether its first tensor argument descends from the inputs (None:
    # it was called with keyword arguments only)
    standard: bool = False  # it has a module rule and runs its registered type's forward


@dataclass(frozen=True)
class Read:
    """One operation that reads parameters (directly or through tensors computed from them)."""

    op: str
    stack: tuple[str, ...]  # modules running, outermost first ("" is the model)
    params: tuple[str, ...]  # the parameters it reads directly
    on_batch: bool  # whether it also reads a tensor that descends from the inputs
    norm_scale: bool  # a product with an activation normalised earlier in the same module


@dataclass
class Scan:
    """What :func:`scan` saw (see the module documentation)."""

    calls: list[ModuleCall] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    free: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # (op, stack)
    counts: dict[str, int] = field(default_factory=dict)  # passed-over operations by kind
    norm_like: set[str] = field(default_factory=set)  # modules that scale a normalised input
    opaque: set[str] = field(default_factory=set)  # modules run unintercepted (outermost)

    def inside_opaque(self, name: str) -> bool:
        """Whether module ``name`` ran inside a module run unintercepted (its parameters count
        as read)."""
        if "" in self.opaque:
            return True
        while name:
            if name in self.opaque:
                return True
            name = name.rpartition(".")[0]
        return False

    def read_params(self) -> set[str]:
        """The parameters read by intercepted operations (see also :meth:`inside_opaque`)."""
        return {p for r in self.reads for p in r.params}


class _Ids:
    """Identity set of live tensors (weak: an id is reused only after its tensor died)."""

    __slots__ = ("_refs",)

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref] = {}

    def add(self, t: Tensor) -> None:
        self._refs[id(t)] = weakref.ref(t)

    def __contains__(self, t: Tensor) -> bool:
        r = self._refs.get(id(t))
        return r is not None and r() is t


_MULS = frozenset({"mul", "__mul__", "__rmul__", "mul_", "__imul__"})
_IGNORED = object()


def _func_info(func) -> Any:
    """What the scan needs to know of a function, worked out once per function."""
    from foresight.layers.registry import rules_for

    name = func_name(func)
    if name in _IGNORED_NAMES:
        return _IGNORED
    if kinds.is_activation(func):
        kind = "activation"
    elif kinds.is_max_pool(func):
        kind = "max-pool"
    elif kinds.is_attention(func):
        kind = "attention"
    elif kinds.is_residual_add(func):
        kind = "residual"
    else:
        kind = None
    free = any(getattr(r, "param_free", False) for r in rules_for(func))
    return (name, kind, free, kinds.is_normalising(func), name in _MULS)


def _tensors(obj: Any, out: list) -> None:
    for a in obj:
        if isinstance(a, Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)) and not isinstance(a, torch.Size):
            _tensors(a, out)


class _Scanner(TorchFunctionMode):
    def __init__(self, params: dict[int, tuple[str, Tensor]]) -> None:
        super().__init__()
        self.params = params
        self.act = _Ids()
        self.derived = _Ids()
        self.stack: list[str] = []
        self.kinds: list[nn.Module] = []  # the modules running, outermost first
        self.normalised: list[bool] = []  # per running module: a normalising call happened
        self.result = Scan()
        self._info: dict[Any, Any] = {}

    def _count(self, kind: str) -> None:
        self.result.counts[kind] = self.result.counts.get(kind, 0) + 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            info = self._info[func]
        except KeyError:
            info = self._info[func] = _func_info(func)
        except TypeError:  # an unhashable callable
            info = _func_info(func)
        if info is _IGNORED:
            return func(*args, **kwargs)
        tensors: list[Tensor] = []
        _tensors(args, tensors)
        if kwargs:
            _tensors(kwargs.values(), tensors)
        params = []
        acts = []
        tracked = False
        for t in tensors:
            entry = self.params.get(id(t))
            if entry is not None and entry[1] is t:
                params.append(entry[0])
                tracked = True
            elif t in self.act:
                acts.append(t)
            elif t in self.derived:
                tracked = True
        result = func(*args, **kwargs)
        if not acts and not tracked:
            return result
        outs = outputs(result)
        if not outs:
            return result
        name, kind, free, normalising, is_mul = info
        if tracked:
            stack = tuple(self.stack)
            norm_scale = bool(acts) and is_mul and bool(self.normalised and self.normalised[-1])
            if norm_scale and stack:
                self.result.norm_like.add(stack[-1])
            self.result.reads.append(Read(name, stack, tuple(params), bool(acts), norm_scale))
        if acts:
            for o in outs:
                self.act.add(o)
            self._classify(kind, free, normalising, name, acts)
        else:
            for o in outs:
                self.derived.add(o)
        return result

    def _classify(self, kind, free: bool, normalising: bool, name: str, acts: list) -> None:
        if free:
            self.result.free.append((name, tuple(self.stack)))
        if normalising and self.normalised:
            self.normalised[-1] = True  # a normalising statistic computed in this module
        if kind is None:
            return
        inner = self.kinds[-1] if self.kinds else None
        if kind == "activation":
            if not kinds.is_activation(inner):
                self._count(kind)
        elif kind == "max-pool":
            if not kinds.is_max_pool(inner):
                self._count(kind)
        elif kind == "attention":
            self._count(kind)
        elif len(acts) >= 2 and acts[0].is_floating_point() and acts[0].shape == acts[1].shape:
            self._count("residual")


_CONTAINER_FORWARDS = (nn.Sequential.forward, nn.Module.forward)  # run no operations of their own
_TYPE_INFO: dict[tuple[type, frozenset], tuple[str | None, bool, bool]] = {}


def _type_info(module: nn.Module, tables: frozenset) -> tuple[str | None, bool, bool]:
    """``(kind, standard, container)`` of a module's type (cached per type and module tables)."""
    key = (type(module), tables)
    info = _TYPE_INFO.get(key)
    if info is None:
        from foresight.layers.modules import standard_forward

        forward = getattr(type(module), "forward", None)
        info = (_module_kind(module), standard_forward(module),
                forward in _CONTAINER_FORWARDS)
        if len(_TYPE_INFO) > 4096:
            _TYPE_INFO.clear()
        _TYPE_INFO[key] = info
    return info


def _module_kind(module: nn.Module) -> str | None:
    if kinds.is_activation(module):
        return "activation"
    if kinds.is_max_pool(module):
        return "max-pool"
    if kinds.is_norm(module):
        return "norm"
    return None


@contextlib.contextmanager
def _hooks(scanner: _Scanner, names: dict[int, tuple[str, str | None, bool, bool]]
           ) -> Iterator[None]:
    from torch.nn.modules.module import (
        register_module_forward_hook,
        register_module_forward_pre_hook,
    )

    seen: set[int] = set()
    open_calls: list[tuple[int, tuple[int, ...] | None, bool | None, tuple[str, ...]]] = []
    count = scanner._count

    def first_tensor(args: Any) -> Tensor | None:
        for a in args:
            if isinstance(a, Tensor):
                return a
        return next((a for a in _leaves(args) if isinstance(a, Tensor)), None)

    skip = [0, None]  # [depth inside modules run unintercepted, the mode popped at depth 1]

    def pre(module: nn.Module, args: Any) -> None:
        entry = names.get(id(module))
        if entry is None:
            return
        name, kind, opaque, _ = entry
        first = first_tensor(args)
        open_calls.append((id(module), tuple(first.shape) if first is not None else None,
                           (first in scanner.act) if first is not None else None,
                           tuple(scanner.stack)))
        scanner.stack.append(name)
        scanner.kinds.append(module)
        scanner.normalised.append(False)
        if kind is not None and skip[0] == 0:
            count(kind)
        if skip[0] or opaque:
            if skip[0] == 0:
                scanner.result.opaque.add(name)
                n = torch._C._len_torch_function_stack()
                if n and torch._C._get_function_stack_at(n - 1) is scanner:
                    skip[1] = torch._C._pop_torch_function_stack()
            skip[0] += 1

    def post(module: nn.Module, args: Any, output: Any) -> None:
        if not open_calls or open_calls[-1][0] != id(module):
            return
        mid, in_shape, on_batch, stack = open_calls.pop()
        scanner.stack.pop()
        scanner.kinds.pop()
        scanner.normalised.pop()
        out = output if isinstance(output, Tensor) else next(
            (a for a in _leaves(_plain(output)) if isinstance(a, Tensor)), None)
        if skip[0]:
            skip[0] -= 1
            if skip[0] == 0:
                if skip[1] is not None:
                    torch._C._push_on_torch_function_stack(skip[1])
                    skip[1] = None
                if on_batch:
                    for t in _leaves(_plain(output)):
                        if isinstance(t, Tensor):
                            scanner.act.add(t)
        if mid in seen:
            return
        seen.add(mid)
        scanner.result.calls.append(ModuleCall(
            names[mid][0], type(module).__name__, module, stack, in_shape,
            tuple(out.shape) if out is not None else None, on_batch, names[mid][3],
        ))

    h1 = register_module_forward_pre_hook(pre)
    h2 = register_module_forward_hook(post, always_call=True)
    try:
        yield
    finally:
        h1.remove()
        h2.remove()


def scan(
    model: nn.Module, inputs: Any, kwargs: dict[str, Any] | None = None, *, opaque: bool = True
) -> Scan:
    """One forward pass of ``model`` on ``inputs`` (as it is: mode, grad mode and batch are the
    caller's; wrap it in :func:`foresight._guard.preserved`), recording what
    :class:`Scan` holds. ``opaque=False`` intercepts inside every module too."""
    from foresight.layers.modules import DENSE, GRAPHS

    tables = frozenset(GRAPHS) | frozenset(DENSE)
    names: dict[int, tuple[str, str | None, bool, bool]] = {}  # name, kind, opaque, standard
    between = False  # whether operations can run between the modules run unintercepted
    for n, m in model.named_modules(remove_duplicate=False):
        if id(m) not in names:
            kind, standard, container = _type_info(m, tables)
            is_opaque = opaque and (standard or kind is not None or kinds.is_pass_through(m))
            names[id(m)] = (n, kind, is_opaque, standard)
            between = between or not (is_opaque or container)
    params = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        params.setdefault(id(p), (n, p))
    scanner = _Scanner(params)
    for t in _leaves((inputs, kwargs or {})):
        if isinstance(t, Tensor):
            scanner.act.add(t)
    mode = scanner if (between or not opaque) else contextlib.nullcontext()
    with _hooks(scanner, names), mode:  # (only modules run unintercepted: no interception)
        out = call_model(model, inputs, kwargs)
    del out
    return scanner.result


def _unused() -> None:  # pragma: no cover
    _ = torch
