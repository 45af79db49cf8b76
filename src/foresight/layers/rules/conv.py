r"""Convolutions with a parameter weight: ``F.conv1d/2d/3d`` (``nn.Conv1d/2d/3d`` and anything else
calling them; the padding modes of ``nn.Conv`` are an ``F.pad`` before the call).

Per example :math:`b`, the weight gradient
:math:`W_b[o, c, k] = \sum_l G_b[o, l]\, X_b[c, l s + k d]` is the weight gradient of the
convolution on example :math:`b` alone; a chunk of examples side by side as channels, with as many
times the groups, gives all of theirs in one call of the convolution's weight backward. The bias
gradient sums the output gradient over positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from foresight.layers.contrib import Dense
from foresight.layers.registry import Rule, register_rule
from foresight.layers.rules._common import is_batched, is_tracked, pos

__all__ = ["ConvRule", "ConvWeight", "padding_pairs", "CONV_CHUNK_ELEMENTS"]

#: Largest number of weight entries (examples x weight size) formed at once by one call.
CONV_CHUNK_ELEMENTS = 1 << 23


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
    """Per-example weight gradients of a convolution, a chunk of examples at a time.

    Example :math:`b`'s weight gradient is the weight gradient of the convolution of example
    :math:`b` alone; for a chunk of :math:`n` examples it is the weight gradient of one convolution
    with :math:`n` times the groups, the examples side by side as channels (the convolution's own
    weight backward, about as fast as the batch's).
    """

    x: Tensor  # [N, C, *spatial]; N = B * k
    g: Tensor  # [N, Cout, *out spatial]
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    batch: int

    def _chunks(self):
        n = self.x.shape[0]
        size = 1
        for s in self.shape:
            size *= s
        step = max(1, min(n, CONV_CHUNK_ELEMENTS // max(1, size)))
        nd = len(self.shape) - 2
        for i in range(0, n, step):
            x, g = self.x[i : i + step], self.g[i : i + step]
            m = x.shape[0]
            weight = x.new_zeros(()).expand(m * self.shape[0], *self.shape[1:])  # shape only
            w = torch.ops.aten.convolution_backward(
                g.reshape(1, m * g.shape[1], *g.shape[2:]),
                x.reshape(1, m * x.shape[1], *x.shape[2:]),
                weight,
                None, list(self.stride), list(self.padding), list(self.dilation), False,
                [0] * nd, m * self.groups, [False, True, False],
            )[1]
            yield w.reshape(m, *self.shape)

    def dense(self) -> Tensor:
        w = torch.cat(list(self._chunks()))
        k = w.shape[0] // self.batch
        return w.reshape(self.batch, k, *self.shape).sum(1)

    def sq(self) -> Tensor:
        k = self.x.shape[0] // self.batch
        if k != 1:
            return Dense(self.dense()).sq()
        parts = []
        for w in self._chunks():
            w = w.reshape(w.shape[0], -1)
            if w.dtype in (torch.float16, torch.bfloat16):
                w = w.float()
            parts.append(torch.linalg.vector_norm(w, dim=1).square())
        return torch.cat(parts)


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
        pairs = opts["padding"]
        if all(a == b for a, b in pairs):
            x, padding = act, tuple(a for a, _ in pairs)
        else:  # asymmetric ('same' with an even kernel): pad explicitly
            x = F.pad(act, [p for pair in reversed(pairs) for p in pair])
            padding = (0,) * len(pairs)
        out = {}
        if "weight" in operands:
            out["weight"] = ConvWeight(x, grad, tuple(operands["weight"].shape), opts["stride"],
                                       padding, opts["dilation"], opts["groups"], batch)
        if "bias" in operands:
            n = grad.shape[0]
            s = grad.reshape(n, grad.shape[1], -1).sum(2)
            out["bias"] = Dense(s.reshape(batch, n // batch, -1).sum(1))
        return out


register_rule(ConvRule())
