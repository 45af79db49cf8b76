"""Leave the user's model exactly as it was.

Every function that runs a user's model does so inside :func:`preserved`, which snapshots and, on
exit (also when an exception propagates), restores:

* the training flag of every submodule;
* every module's forward/backward hook dictionaries (hooks we add are dropped);
* ``requires_grad`` of every parameter;
* every parameter's ``.grad`` (same tensor object and the same values);
* every buffer's values (BatchNorm running statistics, ``num_batches_tracked``).

Parameter *values* are not copied by default (we never write them); pass ``params=True`` to guard
them too (costs one copy of the weights).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator

import torch
from torch import nn

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


@contextlib.contextmanager
def preserved(model: nn.Module, *, params: bool = False) -> Iterator[nn.Module]:
    """Context manager that restores ``model``'s mode, hooks, grads, ``requires_grad`` and buffers.

    >>> import torch
    >>> bn = torch.nn.BatchNorm1d(3)
    >>> with preserved(bn):
    ...     _ = bn(torch.randn(4, 3))  # updates the running statistics ...
    >>> bool(bn.running_mean.eq(0).all())  # ... which are restored on exit
    True
    """
    modules = list(model.modules())
    modes = [m.training for m in modules]
    hooks = [
        {name: OrderedDict(getattr(m, name)) for name in _HOOK_DICTS if hasattr(m, name)}
        for m in modules
    ]
    plist = list(model.parameters())
    requires = [p.requires_grad for p in plist]
    with torch.no_grad():
        grads = [(p.grad, None if p.grad is None else p.grad.detach().clone()) for p in plist]
        buffers = [(b, b.detach().clone()) for b in model.buffers()]
        values = [(p, p.detach().clone()) for p in plist] if params else []
    try:
        yield model
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode
        for m, saved in zip(modules, hooks):
            for name, content in saved.items():
                current = getattr(m, name)
                current.clear()
                current.update(content)
        with torch.inference_mode(False), torch.no_grad():
            for p, flag in zip(plist, requires):
                if p.requires_grad != flag:
                    p.requires_grad_(flag)
            for p, (grad, saved_grad) in zip(plist, grads):
                if grad is not None and saved_grad is not None:
                    if not torch.equal(grad, saved_grad):
                        grad.copy_(saved_grad)
                p.grad = grad
            for b, saved_b in buffers:
                if not torch.equal(b, saved_b):
                    b.copy_(saved_b)
            for p, saved_p in values:
                if not torch.equal(p, saved_p):
                    p.copy_(saved_p)
