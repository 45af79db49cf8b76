r"""Convolutions with a parameter weight: ``F.conv1d/2d/3d`` (``nn.Conv1d/2d/3d`` and anything else
calling them; the padding modes of ``nn.Conv`` are an ``F.pad`` before the call).

Per example :math:`b`, the weight gradient
:math:`W_b[o, c, k] = \sum_l G_b[o, l]\, X_b[c, l s + k d]`
is itself a convolution -- of the (padded) input with the output gradient as the kernel, stride and
dilation swapped -- so a few examples at a time are one grouped convolution (every (example, group)
pair a group). The bias gradient sums the output gradient over positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from foresight.layers.contrib import Dense
from foresight.layers.registry import Rule, register_rule
from foresight.layers.rules._common import is_batched, is_tracked, pos

__all__ = ["ConvRule", "CONV_CHUNK"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

#: Examples whose per-example weight gradients are formed by one grouped convolution (on the
#: reference CPU, chunks of 4 beat both one example at a time and the whole batch at once).
CONV_CHUNK = 4


def _tuple(v, nd: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v) if len(v) == nd else (int(v[0]),) * nd
    return (int(v),) * nd


def padding_pairs(padding, kernel: tuple[int, ...], dilation: tuple[int, ...]):
    """Per spatial dim ``(left, right)`` zero padding; ``'same'``/``'valid'`` resolved."""
    nd = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * nd
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        return [(t // 2, t - t // 2) for t in totals]
    return [(p, p) for p in _tuple(padding, nd)]


@dataclass
class ConvWeight:
    """Per-example weight gradients of a convolution, formed a few examples at a time."""

    x: Tensor  # [N, C, *spatial], padded; N = B * k
    g: Tensor  # [N, Cout, *out spatial]
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    batch: int

    def _chunks(self):
        n = self.x.shape[0]
        step = max(1, CONV_CHUNK)
        for i in range(0, n, step):
            yield _grouped(self.x[i : i + step], self.g[i : i + step], self.shape, self.stride,
                           self.dilation, self.groups)

    def dense(self) -> Tensor:
        w = torch.cat(list(self._chunks()))
        k = w.shape[0] // self.batch
        return w.reshape(self.batch, k, *self.shape).sum(1)

    def sq(self) -> Tensor:
        k = self.x.shape[0] // self.batch
        if k != 1:
            return Dense(self.dense()).sq()
        parts = [torch.linalg.vector_norm(w.reshape(w.shape[0], -1).float()
                                          if w.dtype in (torch.float16, torch.bfloat16)
                                          else w.reshape(w.shape[0], -1), dim=1).square()
                 for w in self._chunks()]
        return torch.cat(parts)


def _grouped(x: Tensor, g: Tensor, shape, stride, dilation, groups) -> Tensor:
    nd = len(shape) - 2
    bsz = x.shape[0]
    cin_g, cout = x.shape[1] // groups, g.shape[1]
    inp = x.reshape(bsz * groups, cin_g, *x.shape[2:]).transpose(0, 1)
    ker = g.reshape(bsz * cout, 1, *g.shape[2:])
    out = _CONV[nd](inp, ker, None, stride=dilation, padding=0, dilation=stride,
                    groups=bsz * groups)
    out = out[(slice(None), slice(None)) + tuple(slice(0, k) for k in shape[2:])]
    return out.transpose(0, 1).reshape(bsz, *shape)


class ConvRule(Rule):
    """``F.conv{1,2,3}d(input, weight, bias, stride, padding, dilation, groups)``."""

    name = "conv"
    role = "weight"
    funcs = (F.conv1d, F.conv2d, F.conv3d)
    signature = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    defaults = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}

    def match(self, call, tracked, batched, out_layout):
        b = self.bound(call)
        x, w, bias = b["input"], b["weight"], b["bias"]
        if not (is_batched(x, batched) and is_tracked(w, tracked)):
            return None
        if bias is not None and not is_tracked(bias, tracked):
            return None
        layout = batched[pos(x)]
        if layout.dim != 0 or layout.order != "major" or out_layout != layout:
            return None
        wshape = call.args[pos(w)].shape
        nd = len(wshape) - 2
        if len(call.args[pos(x)].shape) != nd + 2:  # unbatched conv input
            return None
        kernel = tuple(wshape[2:])
        dilation = _tuple(b["dilation"], nd)
        slots = {"weight": pos(w)}
        if bias is not None:
            slots["bias"] = pos(bias)
        return pos(x), slots, {
            "stride": _tuple(b["stride"], nd),
            "padding": padding_pairs(b["padding"], kernel, dilation),
            "dilation": dilation,
            "groups": int(b["groups"]),
        }

    def per_example(self, use, act, grad, operands, batch):
        opts = use.options
        pads = [p for pair in reversed(opts["padding"]) for p in pair]
        x = F.pad(act, pads) if any(pads) else act
        out = {}
        if "weight" in operands:
            out["weight"] = ConvWeight(x, grad, tuple(operands["weight"].shape), opts["stride"],
                                       opts["dilation"], opts["groups"], batch)
        if "bias" in operands:
            n = grad.shape[0]
            s = grad.reshape(n, grad.shape[1], -1).sum(2)
            out["bias"] = Dense(s.reshape(batch, n // batch, -1).sum(1))
        return out


register_rule(ConvRule())
