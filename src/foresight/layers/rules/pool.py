r"""Average pooling (``F.avg_pool1d/2d/3d``, ``F.adaptive_avg_pool1d/2d/3d``): a weight graph
without parameters (per channel, :math:`1/\text{divisor}` on each pooled pair), read by EI.
"""

from __future__ import annotations

import torch.nn.functional as F  # noqa: N812

from foresight.layers.registry import Rule, register_rule
from foresight.layers.rules._common import is_batched, pos

__all__ = ["AvgPoolRule", "AdaptiveAvgPoolRule"]


class AvgPoolRule(Rule):
    """``F.avg_pool{1,2,3}d(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
    divisor_override)``."""

    name = "pool"
    role = "weight"
    param_free = True
    funcs = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)
    signature = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                 "divisor_override")
    defaults = {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                "divisor_override": None}

    def match(self, call, tracked, batched, out_layout):
        b = self.bound(call)
        x = b["input"]
        if not is_batched(x, batched) or batched[pos(x)].dim != 0 or out_layout.dim != 0:
            return None
        opts = {k: b[k] for k in self.signature[1:]}
        return pos(x), {}, opts


class AdaptiveAvgPoolRule(Rule):
    """``F.adaptive_avg_pool{1,2,3}d(input, output_size)``."""

    name = "pool"
    role = "weight"
    param_free = True
    funcs = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
    signature = ("input", "output_size")

    def match(self, call, tracked, batched, out_layout):
        b = self.bound(call)
        x = b["input"]
        if not is_batched(x, batched) or batched[pos(x)].dim != 0 or out_layout.dim != 0:
            return None
        return pos(x), {}, {"output_size": b["output_size"], "adaptive": True}


register_rule(AvgPoolRule())
register_rule(AdaptiveAvgPoolRule())
