r"""The rank logic of every metric, in one place: plain models, DDP and FSDP2.

What a metric needs to know about a distributed model, and the few collectives it uses:

* :func:`detect` -- how the model is parallelised (:class:`Parallel`): ``"none"``, ``"ddp"``
  (``DistributedDataParallel``) or ``"fsdp"`` (FSDP2, ``torch.distributed.fsdp.fully_shard``);
  the module whose forward pass the training loop calls; the process group; each parameter under
  its usual name whatever FSDP currently has registered; the tensor the forward pass reads for it
  (FSDP2's unsharded parameter); the rank-local gradient accumulated so far (before the
  all-reduce or reduce-scatter); whether the current backward pass synchronises gradients.
  Unsupported layouts raise a clear error: FSDP1 wrappers and tensor-parallel ``DTensor``
  parameters everywhere; for the gradient noise scale also HSDP (a 2-D mesh, or DDP around
  ``fully_shard``) and a ``fully_shard`` without the root.
* :func:`full_weights` -- a context in which every FSDP2 module holds its full (unsharded)
  weights and forward passes run on them without FSDP's hooks: metrics of the weights (EI, the
  causal report, the information plane, the planning of per-example norms) see the model as if it
  were not sharded. Collective (one all-gather per FSDP group) when something is sharded; a no-op
  otherwise, and when already inside one.
* :func:`all_reduce_sum` -- ONE ``all_reduce`` of a few float64 scalars; :func:`agree` -- run a
  computation on every rank, then ONE ``all_gather_object``: every rank gets rank 0's result, or
  every rank raises if any rank did; :func:`shared` -- rank 0's value of a small object on every
  rank of a sharded model.

Design rules:

* Safe without ``torch.distributed`` (not built, or no process group): world size 1, rank 0, and
  no function communicates.
* A function that communicates says so in its documentation, and every rank must call it in the
  same order. There are no barriers: the order is the program's own (the same metrics on the same
  schedule on every rank).
* FSDP2's private structures (parameter groups, unsharded parameters, hook handles) are read only
  here, so a change in torch is fixed in one file.

>>> model = torch.nn.Linear(3, 2)
>>> par = detect(model)
>>> par.kind, par.world, sorted(par.params())
('none', 1, ['bias', 'weight'])
>>> with full_weights(model):  # nothing is sharded: a no-op
...     pass
>>> all_reduce_sum([1.0, 2.5])  # no process group: the values themselves
[1.0, 2.5]
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Parallel",
    "DistributedError",
    "detect",
    "full_weights",
    "is_sharded",
    "all_reduce_sum",
    "agree",
    "shared",
    "local",
    "world_size",
    "rank",
    "is_main",
    "initialized",
]


class DistributedError(ValueError):
    """A distributed layout foresight cannot measure exactly (the message says what to do)."""


# ------------------------------------------------------------------ the process group


def initialized() -> bool:
    """Whether ``torch.distributed`` is available and a default process group exists."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch built without distributed
        return False
    return bool(dist.is_available() and dist.is_initialized())


def world_size(group: Any = None) -> int:
    """The number of ranks of ``group`` (default: the world); 1 without a process group."""
    if not initialized():
        return 1
    import torch.distributed as dist

    return int(dist.get_world_size(group))


def rank(group: Any = None) -> int:
    """This process's rank in ``group`` (default: the world); 0 without a process group."""
    if not initialized():
        return 0
    import torch.distributed as dist

    return int(dist.get_rank(group))


def is_main(group: Any = None) -> bool:
    """Whether this process is rank 0 (always true without a process group)."""
    return rank(group) == 0


def _device_for(group: Any, fallback: torch.device | None) -> torch.device:
    """Where a small collective's tensor must live for the group's backend."""
    import torch.distributed as dist

    backend = str(dist.get_backend(group)).lower()
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if fallback is not None and "gloo" not in backend:
        return fallback
    return torch.device("cpu")


def all_reduce_sum(
    values: Sequence[float], *, group: Any = None, device: torch.device | None = None
) -> list[float]:
    """The element-wise sum over the ranks of ``values`` (float64), in ONE ``all_reduce``.

    **Collective** when a process group of more than one rank exists: every rank must call it,
    in the same order, with the same number of values. Without one it returns the values.

    Args:
        values: a few scalars.
        group: the process group (default: the world).
        device: where the tensor lives for backends that need a device (NCCL uses the current
            CUDA device; gloo the CPU).
    """
    vals = [float(v) for v in values]
    if not initialized() or world_size(group) == 1 or not vals:
        return vals
    import torch.distributed as dist

    vec = torch.tensor(vals, dtype=torch.float64, device=_device_for(group, device))
    dist.all_reduce(vec, group=group)
    return [float(v) for v in vec.cpu().tolist()]


class _Failed:
    """What a rank sends in :func:`agree` when its computation raised."""

    def __init__(self, exc: BaseException) -> None:
        self.type = type(exc).__name__
        self.message = str(exc)


def agree(fn: Callable[[], Any], *, same: Any = None, group: Any = None) -> Any:
    """Run ``fn()`` on every rank and return rank 0's result on every rank.

    **Collective** (one ``all_gather_object``) when a process group of more than one rank
    exists; every rank must call it in the same order. If ``fn`` raised on any rank, every rank
    raises -- the rank's own exception where it raised, a :class:`RuntimeError` naming the rank
    elsewhere -- instead of leaving the others waiting in the next collective. ``same``: a small
    value that must be equal on every rank (e.g. the step being measured); every rank raises
    :class:`DistributedError` if it is not.
    """
    if not initialized() or world_size(group) == 1:
        return fn()
    import torch.distributed as dist

    error: BaseException | None = None
    try:
        mine: Any = fn()
    except Exception as exc:  # reported to every rank below
        error, mine = exc, _Failed(exc)
    gathered: list[Any] = [None] * world_size(group)
    dist.all_gather_object(gathered, (same, mine), group=group)
    if error is not None:
        raise error
    for r, (_, item) in enumerate(gathered):
        if isinstance(item, _Failed):
            raise RuntimeError(
                f"foresight: the measurement failed on rank {r} ({item.type}: {item.message}); "
                "every rank stops here"
            )
    keys = [key for key, _ in gathered]
    if any(key != keys[0] for key in keys):
        raise DistributedError(
            f"foresight: the ranks are out of step (rank by rank: {keys}); every rank must make "
            "the same calls in the same order"
        )
    return gathered[0][1]


def shared(model: nn.Module, value: Any) -> Any:
    """Rank 0's ``value`` on every rank when ``model`` is sharded by FSDP2, else ``value``.

    **Collective** (one ``broadcast_object_list``) for a sharded model -- whose measurements
    every rank runs together anyway; local otherwise. Used for values drawn at random (a seed),
    so that a measurement of a sharded model is the same on every rank.
    """
    if not initialized() or not is_sharded(model):
        return value
    import torch.distributed as dist

    group = _fsdp_group(model)
    if world_size(group) == 1:
        return value
    box = [value]
    src = dist.get_global_rank(group, 0) if group is not None else 0
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def local(t: Tensor) -> Tensor:
    """The part of ``t`` held by this rank: a ``DTensor``'s local shard, any other tensor as is."""
    to_local = getattr(t, "to_local", None)
    if callable(to_local) and _is_dtensor(t):
        return to_local()
    return t


# ------------------------------------------------------------------ FSDP2 structures


def _loaded(module: str, name: str) -> Any:
    """``module.name`` if ``module`` was imported already, else ``None``: a model can only be
    sharded (or hold a ``DTensor``) if the user imported FSDP2 (or DTensor), so foresight never
    imports them itself (no import cost for everyone else)."""
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def _fsdp_module_class() -> type | None:
    return _loaded("torch.distributed.fsdp", "FSDPModule") or _loaded(
        "torch.distributed._composable.fsdp", "FSDPModule"
    )


def _is_dtensor(t: Any) -> bool:
    cls = _loaded("torch.distributed.tensor", "DTensor") or _loaded(
        "torch.distributed._tensor", "DTensor"
    )
    return cls is not None and isinstance(t, cls)


def _fsdp_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    cls = _fsdp_module_class()
    if cls is None:
        return []
    return [(n, m) for n, m in model.named_modules() if isinstance(m, cls)]


def _groups_of(module: nn.Module) -> list[Any]:
    state = module._get_fsdp_state()
    groups = getattr(state, "_fsdp_param_groups", None)
    if groups is None:  # older torch: one group per state
        group = getattr(state, "_fsdp_param_group", None)
        groups = [group] if group is not None else []
    return list(groups)


@dataclass
class _Managed:
    """One parameter managed by FSDP2."""

    name: str
    fsdp_param: Any
    group: Any


def _managed(model: nn.Module) -> dict[str, _Managed]:
    """Every FSDP2-managed parameter of ``model`` by its name in ``model.named_parameters()``."""
    mods = _fsdp_modules(model)
    if not mods:
        return {}
    where = {}
    for n, m in model.named_modules(remove_duplicate=False):
        where.setdefault(id(m), n)
    out: dict[str, _Managed] = {}
    for _, module in mods:
        for group in _groups_of(module):
            for fp in group.fsdp_params:
                info = fp._module_info
                owner = where.get(id(info.module))
                if owner is None:
                    continue
                name = f"{owner}.{info.param_name}" if owner else info.param_name
                out.setdefault(name, _Managed(name, fp, group))
    return out


def _all_groups(model: nn.Module) -> list[Any]:
    seen: dict[int, Any] = {}
    for _, module in _fsdp_modules(model):
        for g in _groups_of(module):
            seen.setdefault(id(g), g)
    return list(seen.values())


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` (or a submodule) is managed by FSDP2's ``fully_shard``."""
    return bool(_fsdp_modules(model))


def _fsdp_group(model: nn.Module) -> Any:
    for g in _all_groups(model):
        info = g.mesh_info
        pg = getattr(info, "shard_process_group", None)
        if pg is not None:
            return pg
    return None


def _is_hsdp(group: Any) -> bool:
    info = group.mesh_info
    return getattr(info, "replicate_process_group", None) is not None or (
        getattr(getattr(info, "mesh", None), "ndim", 1) > 1
    )


# ------------------------------------------------------------------ the layout


@dataclass
class Parallel:
    """How a model is parallelised, as :func:`detect` found it.

    Attributes:
        kind: ``"none"``, ``"ddp"`` or ``"fsdp"``.
        module: the module whose forward pass the training loop runs (the DDP wrapper's
            ``module``, else the model itself).
        wrapper: the ``DistributedDataParallel`` wrapper, if any.
        group: the process group the gradients are averaged over (``None``: the world).
    """

    kind: str
    module: nn.Module
    wrapper: nn.Module | None = None
    group: Any = None
    _managed: dict[str, _Managed] = field(default_factory=dict, repr=False)
    _groups: list[Any] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.kind == "fsdp" and not self._groups:
            self._groups = _all_groups(self.module)

    @property
    def world(self) -> int:
        """Ranks the gradients are averaged over (1 for ``"none"`` or without a process
        group)."""
        if self.kind == "none":
            return 1
        return world_size(self.group)

    @property
    def collective(self) -> bool:
        """Whether measurements must run on every rank together (DDP or FSDP2 with more than
        one rank)."""
        return self.kind != "none" and self.world > 1

    @property
    def sharded(self) -> bool:
        """Whether the parameters are FSDP2 shards (gradient norms need a sum over ranks)."""
        return self.kind == "fsdp"

    def refresh(self) -> None:
        """Read FSDP2's parameter bookkeeping again (after ``fully_shard`` re-registered
        parameters, e.g. on ``model.to()``)."""
        if self.kind == "fsdp":
            self._managed = _managed(self.module)
            self._groups = _all_groups(self.module)

    def params(self) -> dict[str, nn.Parameter]:
        """Every parameter by name, as the optimizer sees it (FSDP2: the sharded parameter,
        whatever is registered on the module right now)."""
        named = dict(self.module.named_parameters())
        for name, m in self._managed.items():
            if name in named:
                named[name] = m.fsdp_param.sharded_param
        return named

    def forward_tensors(self) -> dict[str, Tensor]:
        """Every parameter by name, as the forward pass reads it (FSDP2: the unsharded
        parameter, once FSDP has created it; the parameter itself otherwise)."""
        named: dict[str, Tensor] = dict(self.params())
        for name, m in self._managed.items():
            fp = m.fsdp_param
            if name in named and hasattr(fp, "_unsharded_param"):
                named[name] = fp._unsharded_param
        return named

    def missing_forward_tensors(self) -> bool:
        """Whether some FSDP2 parameter has no unsharded parameter yet (before its first
        all-gather)."""
        return any(not hasattr(m.fsdp_param, "_unsharded_param") for m in self._managed.values())

    def local_grad(self, name: str, param: Tensor) -> list[Tensor]:
        """The rank-local gradient of ``name`` accumulated by earlier backward passes of this
        step and not yet reduced (gradient accumulation under ``no_sync()`` /
        ``set_requires_gradient_sync(False)``), as a list of tensors to add up."""
        if self.kind == "fsdp":
            m = self._managed.get(name)
            if m is None:
                return []
            fp = m.fsdp_param
            out = []
            unsharded = getattr(fp, "_unsharded_param", None)
            if unsharded is not None and unsharded.grad is not None:
                out.append(unsharded.grad)
            acc = getattr(fp, "unsharded_accumulated_grad", None)
            if acc is not None:
                out.append(acc)
            return out
        return [param.grad] if param.grad is not None else []

    def syncing(self) -> bool:
        """Whether the backward pass running now reduces the gradients across ranks."""
        if self.kind == "ddp":
            return bool(getattr(self.wrapper, "require_backward_grad_sync", True))
        if self.kind == "fsdp":
            return all(bool(getattr(g, "reduce_grads", True)) for g in self._groups)
        return True

    def check_gradients(self) -> None:
        """Raise :class:`DistributedError` where the reduced gradient is not the mean of the
        ranks' gradients over one process group (what the gradient noise scale reads): HSDP (a
        2-D mesh, or DDP around ``fully_shard``), parameters outside ``fully_shard`` next to
        sharded ones, a changed gradient divide factor."""
        if self.kind != "fsdp":
            return
        if self.wrapper is not None:
            raise DistributedError(
                "DistributedDataParallel around a fully_shard model (HSDP) is not supported by "
                "the gradient noise scale: use fully_shard alone (a 1-D device mesh) or DDP alone"
            )
        groups = _all_groups(self.module)
        if any(_is_hsdp(g) for g in groups):
            raise DistributedError(
                "fully_shard on a 2-D device mesh (HSDP: replicated and sharded) is not "
                "supported by the gradient noise scale: shard on a 1-D mesh (fully_shard(model) "
                "or mesh=init_device_mesh(..., (world_size,))), or use DDP"
            )
        _check_all_managed(self.module, self._managed)
        for g in groups:
            factor = getattr(g, "gradient_divide_factor", None)
            if factor is not None and float(factor) != float(self.world):
                raise DistributedError(
                    f"fully_shard: set_gradient_divide_factor({factor}) makes the reduced "
                    f"gradient differ from the mean over the {self.world} ranks, which the "
                    "gradient noise scale reads; leave the default divide factor"
                )


def _ddp_class() -> type | None:
    try:
        from torch.nn.parallel import DistributedDataParallel
    except ImportError:  # pragma: no cover
        return None
    return DistributedDataParallel


def _fsdp1_class() -> type | None:
    return _loaded("torch.distributed.fsdp", "FullyShardedDataParallel")


def detect(model: nn.Module, wrapper: nn.Module | None = None) -> Parallel:
    """How ``model`` is parallelised.

    Args:
        model: the model as given to a metric: a module, its ``DistributedDataParallel``
            wrapper, or a module sharded in place with ``fully_shard`` (FSDP2).
        wrapper: the ``DistributedDataParallel`` wrapper around ``model`` when ``model`` is the
            module inside it (e.g. Lightning's LightningModule; the trainer's strategy holds the
            wrapper).

    Raises:
        DistributedError: FSDP1 (``FullyShardedDataParallel``) or tensor-parallel ``DTensor``
            parameters (outside ``fully_shard``). What only the gradient noise scale cannot
            measure (HSDP, ...) is checked by :meth:`Parallel.check_gradients`.
    """
    ddp_cls, fsdp1 = _ddp_class(), _fsdp1_class()
    if ddp_cls is not None and isinstance(model, ddp_cls):
        if wrapper is not None and wrapper is not model:
            raise DistributedError("pass either a DistributedDataParallel model or wrapper=")
        wrapper, module = model, model.module
    else:
        module = model
    if wrapper is not None:
        if ddp_cls is None or not isinstance(wrapper, ddp_cls):
            raise DistributedError(
                f"wrapper must be the DistributedDataParallel wrapper around the model, got "
                f"{type(wrapper).__name__}"
            )
        if not any(m is module for m in wrapper.module.modules()):
            raise DistributedError("wrapper does not contain the model (wrapper.module)")
    for m in module.modules():
        if fsdp1 is not None and isinstance(m, fsdp1):
            raise DistributedError(
                "FullyShardedDataParallel (FSDP1) is not supported: shard the model with "
                "torch.distributed.fsdp.fully_shard (FSDP2), or use DistributedDataParallel"
            )
    managed = _managed(module)
    if managed:
        return Parallel("fsdp", module, wrapper, _fsdp_group(module), managed)
    _check_no_dtensor(module)
    if wrapper is not None:
        return Parallel("ddp", module, wrapper, getattr(wrapper, "process_group", None))
    return Parallel("none", module)


def _check_all_managed(module: nn.Module, managed: dict[str, _Managed]) -> None:
    for name, p in module.named_parameters():
        if name in managed:
            continue
        if _is_dtensor(p):
            raise DistributedError(
                f"parameter {name!r} is a DTensor not managed by fully_shard (tensor "
                "parallelism?), which foresight does not support"
            )
        raise DistributedError(
            f"parameter {name!r} is not managed by fully_shard, so its gradient is never "
            "reduced across ranks: apply fully_shard to the root module too (after its "
            "submodules)"
        )


def _check_no_dtensor(module: nn.Module) -> None:
    for name, p in module.named_parameters():
        if _is_dtensor(p):
            raise DistributedError(
                f"parameter {name!r} is a DTensor outside fully_shard (tensor parallelism?), "
                "which foresight does not support"
            )


# ------------------------------------------------------------------ full weights


def _noop_hook(*args: Any, **kwargs: Any) -> None:
    return None


def _handles(handle: Any) -> list[Any]:
    if handle is None:
        return []
    inner = getattr(handle, "handles", None)
    if inner is not None:
        return [h for x in inner for h in _handles(x)]
    return [handle]


def _quiet_forward_hooks(modules: list[nn.Module]) -> list[tuple[dict, int, Any]]:
    """Replace FSDP2's forward hooks on ``modules`` by no-ops; returns what to restore."""
    saved: list[tuple[dict, int, Any]] = []
    for module in modules:
        state = module._get_fsdp_state()
        for attr in ("_pre_forward_hook_handle", "_post_forward_hook_handle"):
            for h in _handles(getattr(state, attr, None)):
                hooks = h.hooks_dict_ref() if hasattr(h, "hooks_dict_ref") else None
                if hooks is None or h.id not in hooks or hooks[h.id] is _noop_hook:
                    continue
                saved.append((hooks, h.id, hooks[h.id]))
                hooks[h.id] = _noop_hook
    return saved


def _root_of(model: nn.Module) -> nn.Module | None:
    mods = _fsdp_modules(model)
    return mods[0][1] if mods else None


@contextlib.contextmanager
def full_weights(model: nn.Module) -> Iterator[nn.Module]:
    """Inside this context ``model`` holds its full weights and runs without FSDP2's hooks.

    For a model sharded with ``fully_shard``: every FSDP2 parameter group that is sharded is
    unsharded (FSDP's own all-gather, on every rank), the modules' parameters are the full
    tensors, and FSDP's forward hooks are replaced by no-ops, so forward passes inside the context
    neither gather nor reshard nor register backward hooks; the modules have their own classes
    back (``Linear``, not FSDP's ``FSDPLinear``), so names and types read as in the unsharded
    model, and :func:`is_sharded` is false inside. On exit (also after an exception)
    the hooks come back and the groups that were sharded are resharded; groups that were
    unsharded on entry (the root's inside its own forward pass) stay as they were.

    **Collective** when something is sharded: every rank must enter it, in the same order.
    A no-op (no communication) for plain and DDP models, and inside another ``full_weights``.
    Mixed precision: the full weights are in FSDP's ``param_dtype``, as in training.

    Raises:
        DistributedError: tensor-parallel ``DTensor`` parameters (outside ``fully_shard``).
    """
    mods = [m for _, m in _fsdp_modules(model)]
    if not mods:
        _check_no_dtensor(model)
        yield model
        return
    root = _root_of(model)
    state = root._get_fsdp_state() if root is not None else None
    if state is not None and getattr(state, "_is_root", True) is None:
        state._lazy_init()  # what the first forward pass would do
    groups = _all_groups(model)
    unsharded_here = []
    saved: list[tuple[dict, int, Any]] = []
    classes: list[tuple[nn.Module, type]] = []
    try:
        for g in groups:
            if not g.is_unsharded:
                g.lazy_init()
                g.unshard()
                g.wait_for_unshard()
                unsharded_here.append(g)
        saved = _quiet_forward_hooks(mods)
        fsdp_cls = _fsdp_module_class()
        for m in mods:  # fully_shard swapped in a subclass "FSDP<Name>": the original's back
            cls = type(m)
            orig = next((b for b in cls.__bases__ if b is not fsdp_cls), None)
            if orig is not None and issubclass(orig, nn.Module):
                classes.append((m, cls))
                m.__class__ = orig
        yield model
    finally:
        for m, cls in reversed(classes):
            m.__class__ = cls
        for hooks, key, hook in reversed(saved):
            hooks[key] = hook
        for g in reversed(unsharded_here):
            g.reshard()
