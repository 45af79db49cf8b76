"""The tensors some uses of a plan read, from one more run of discovery's main probe pass.

Plans hold no tensors. A metric that needs the value an operand had at the call -- the effective
weight of a parametrization, ``weight * gain`` computed inside ``forward`` -- asks
:func:`operand_values`: the same forward pass as the discovery's first probe (same examples, same
seed, gradients enabled), counting calls the way the discovery does, copies the operands of the
wanted uses. A call that is not what the plan says (another function, other shapes) raises.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from foresight._guard import preserved
from foresight.layers.calls import flatten, func_name, outputs
from foresight.layers.discover import (
    _IGNORED_NAMES,
    PROBE_BATCH,
    DiscoveryError,
    _index_batch,
    _leaves,
    batch_inputs,
    call_model,
)
from foresight.layers.plan import Use

__all__ = ["operand_values"]


class _Grab(TorchFunctionMode):
    def __init__(self, wanted: dict[int, Use]) -> None:
        super().__init__()
        self.wanted = wanted
        self.count = 0
        self.values: dict[int, dict[str, Tensor]] = {}
        self.error: str | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func_name(func) in _IGNORED_NAMES:
            return func(*args, **kwargs)
        result = func(*args, **kwargs)
        if not outputs(result):
            return result
        use = self.wanted.get(self.count)
        if use is not None and self.error is None:
            flat = flatten(args, kwargs)
            got = {}
            for o in use.operands:
                t = flat[o.position] if o.position < len(flat) else None
                if (func_name(func) != use.op or not isinstance(t, Tensor)
                        or tuple(t.shape) != tuple(o.shape)):
                    self.error = (f"call {self.count} is {func_name(func)}, the plan has "
                                  f"{use.op} reading {o.slot} of shape {o.shape}")
                    break
                got[o.slot] = t.detach().clone()
            else:
                self.values[use.index] = got
        self.count += 1
        return result


def operand_values(
    model: nn.Module,
    inputs: Any,
    uses: list[Use],
    kwargs: dict[str, Any] | None = None,
    *,
    seed: int = 0,
) -> dict[int, dict[str, Tensor]]:
    """``{use.index: {slot: tensor}}`` for ``uses`` of the plan that
    :func:`~foresight.layers.discover` made from ``model`` and ``inputs`` (detached copies).

    Raises:
        DiscoveryError: the forward pass no longer runs what the plan describes.
    """
    kwargs = dict(kwargs or {})
    batch = batch_inputs(inputs, kwargs)
    wanted = {u.index: u for u in uses}
    grab = _Grab(wanted)
    dev = next((t.device for t in _leaves((inputs, kwargs)) if isinstance(t, Tensor)), None)
    idx = torch.arange(PROBE_BATCH, device=dev) % batch
    devices = sorted({p.device.index for p in model.parameters() if p.device.type == "cuda"}
                     - {None})
    probe, probe_kw = _index_batch(inputs, idx, batch), _index_batch(kwargs, idx, batch)
    with preserved(model), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with torch.set_grad_enabled(True), grab:
            out = call_model(model, probe, probe_kw)
        del out
    if grab.error is not None or len(grab.values) != len(wanted):
        raise DiscoveryError(
            "the forward pass differs from its plan "
            f"({grab.error or 'some planned calls did not run'}); make the plan again"
        )
    return grab.values
