r"""Normalisations with parameter scale and bias: ``F.layer_norm``, ``F.rms_norm``,
``F.group_norm`` and ``F.batch_norm`` with running statistics (BatchNorm in eval mode).

With :math:`\hat x` the normalised input, the output is :math:`w \odot \hat x + b`, so per example
the scale's gradient sums :math:`g \odot \hat x` and the bias's sums :math:`g` over every position
the parameters are broadcast over. :math:`\hat x` is recomputed from the layer input (one
normalisation without parameters). BatchNorm in training mode normalises with the batch's
statistics, which
couples the examples: per-example gradients are not defined there (the discovery reports it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from foresight.layers.contrib import Dense
from foresight.layers.registry import Rule, register_rule
from foresight.layers.rules._common import flat_batch, is_batched, is_tracked, pos

__all__ = ["LayerNormRule", "RMSNormRule", "GroupNormRule", "BatchNormRule"]


def _slots(b, tracked, names) -> dict | None:
    slots = {}
    for slot, key in names.items():
        v = b.get(key)
        if v is None:
            continue
        if not is_tracked(v, tracked):
            return None
        slots[slot] = pos(v)
    return slots or None


class _Trailing(Rule):
    """Parameters over the trailing ``normalized_shape`` dimensions."""

    role = "norm"

    def match(self, call, tracked, batched, out_layout):
        b = self.bound(call)
        x = b["input"]
        if not is_batched(x, batched):
            return None
        nshape = b["normalized_shape"]
        nshape = (int(nshape),) if isinstance(nshape, int) else tuple(int(s) for s in nshape)
        nd = len(call.args[pos(x)].shape)
        layout = batched[pos(x)]
        if layout.dim >= nd - len(nshape) or out_layout != layout:
            return None
        slots = _slots(b, tracked, {"scale": "weight", "bias": "bias"})
        if slots is None:
            return None
        return pos(x), slots, {"normalized_shape": nshape, "eps": b.get("eps")}

    def _hat(self, act, opts, operands):
        raise NotImplementedError

    def per_example(self, use, act, grad, operands, batch):
        nshape = use.options["normalized_shape"]
        g = flat_batch(grad, use.out_layout, batch, len(nshape))
        out = {}
        if "scale" in operands:
            xh = flat_batch(self._hat(act, use.options, operands), use.in_layout, batch,
                            len(nshape))
            out["scale"] = Dense((g * xh).sum(1))
        if "bias" in operands:
            out["bias"] = Dense(g.sum(1))
        return out


class LayerNormRule(_Trailing):
    name = "norm"
    funcs = (F.layer_norm,)
    signature = ("input", "normalized_shape", "weight", "bias", "eps")
    defaults = {"weight": None, "bias": None, "eps": 1e-5}

    def _hat(self, act, opts, operands):
        return F.layer_norm(act, opts["normalized_shape"], None, None, opts["eps"])


class RMSNormRule(_Trailing):
    name = "norm"
    funcs = (F.rms_norm,) if hasattr(F, "rms_norm") else ()
    signature = ("input", "normalized_shape", "weight", "eps")
    defaults = {"weight": None, "eps": None}

    def _hat(self, act, opts, operands):
        return F.rms_norm(act, opts["normalized_shape"], None, opts["eps"])


class _Channel(Rule):
    """Parameters per channel (dim 1 of a batch-first input)."""

    role = "norm"
    names = {"scale": "weight", "bias": "bias"}

    def match(self, call, tracked, batched, out_layout):
        b = self.bound(call)
        x = b["input"]
        if not is_batched(x, batched):
            return None
        layout = batched[pos(x)]
        if layout.dim != 0 or layout.order != "major" or out_layout != layout:
            return None
        if len(call.args[pos(x)].shape) < 2:
            return None
        slots = _slots(b, tracked, self.names)
        if slots is None:
            return None
        return self.accept(b, call, pos(x), slots)

    def accept(self, b, call, x, slots):
        raise NotImplementedError

    def per_example(self, use, act, grad, operands, batch):
        n, c = grad.shape[0], grad.shape[1]
        g = grad.reshape(n, c, -1)
        out = {}
        if "scale" in operands:
            xh = self._hat(act, use.options, operands).reshape(n, c, -1)
            s = (g * xh).sum(2)
            out["scale"] = Dense(s.reshape(batch, n // batch, c).sum(1))
        if "bias" in operands:
            out["bias"] = Dense(g.sum(2).reshape(batch, n // batch, c).sum(1))
        return out


class GroupNormRule(_Channel):
    name = "norm"
    funcs = (F.group_norm,)
    signature = ("input", "num_groups", "weight", "bias", "eps")
    defaults = {"weight": None, "bias": None, "eps": 1e-5}

    def accept(self, b, call, x, slots):
        return x, slots, {"num_groups": int(b["num_groups"]), "eps": b["eps"]}

    def _hat(self, act, opts, operands):
        return F.group_norm(act, opts["num_groups"], None, None, opts["eps"])


class BatchNormRule(_Channel):
    """Only with running statistics (``training=False``): then each example is normalised alone."""

    name = "norm"
    funcs = (F.batch_norm,)
    signature = ("input", "running_mean", "running_var", "weight", "bias", "training",
                 "momentum", "eps")
    defaults = {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5}

    def accept(self, b, call, x, slots):
        if b["training"] or pos(b["running_mean"]) is None or pos(b["running_var"]) is None:
            return None
        capture = {"running_mean": pos(b["running_mean"]), "running_var": pos(b["running_var"])}
        return x, slots, {"eps": b["eps"], "capture": capture}

    def _hat(self, act, opts, operands):
        mean, var = operands["running_mean"], operands["running_var"]
        shape = (1, -1) + (1,) * (act.dim() - 2)
        return (act - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + opts["eps"])


register_rule(LayerNormRule())
if hasattr(F, "rms_norm"):
    register_rule(RMSNormRule())
register_rule(GroupNormRule())
register_rule(BatchNormRule())
