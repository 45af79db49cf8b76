r"""Average pooling (``F.avg_pool1d/2d/3d``, ``F.adaptive_avg_pool1d/2d/3d``): a weight graph
without parameters, read by EI.

Pooling is per channel: input :math:`(c, x)` feeds output :math:`(c, y)` when :math:`x` lies in
the window of :math:`y`, with weight :math:`v_y = 1/\text{divisor}_y` (the divisor depends on the
output position when ``count_include_pad=False``, with ``ceil_mode`` edge windows, or for adaptive
pooling). For an elementwise :math:`f` with :math:`f(0) = 0`,

* :math:`\sum_j f(W_{ij}) = \text{SumPool}^{\top}(f(v))_i` (the adjoint of the window sum);
* :math:`\sum_i u_i f(W_{ij}) = f(v_j)\,\text{SumPool}(u)_j`.

The 2020 package connected every input channel to every output channel here (a defect); the
numbers below are the true Jacobian. ``nn.AvgPool*`` and ``nn.AdaptiveAvgPool*`` are also
registered as modules (:mod:`foresight.layers.modules`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from foresight.layers.graphs import Elementwise, Shape, dense_jacobian, features, numel
from foresight.layers.modules import register_module
from foresight.layers.registry import Rule, register_rule
from foresight.layers.rules._common import is_batched, pos

__all__ = ["AvgPoolRule", "AdaptiveAvgPoolRule", "PoolGraph", "pool_create_matrix"]


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

    def ei_graph(self, use, operands, device, dtype):
        return PoolGraph(_op_options(use), tuple(use.in_shape), tuple(use.out_shape), device,
                         dtype)

    def ei_dense(self, use, operands):
        return _pool_dense(_op_options(use), tuple(use.in_shape), tuple(use.out_shape))


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

    def ei_graph(self, use, operands, device, dtype):
        return PoolGraph(_op_options(use), tuple(use.in_shape), tuple(use.out_shape), device,
                         dtype)

    def ei_dense(self, use, operands):
        return _pool_dense(_op_options(use), tuple(use.in_shape), tuple(use.out_shape))


register_rule(AvgPoolRule())
register_rule(AdaptiveAvgPoolRule())


# ------------------------------------------------------------------ weight graphs


def _op_options(use) -> dict[str, Any]:
    """The pooling options of a use, with its number of spatial dimensions."""
    opts = dict(use.options)
    opts["nd"] = int(use.op.rstrip("d")[-1])  # avg_pool2d, adaptive_avg_pool3d, ...
    return opts


def _tuple(value, nd: int) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        return tuple(int(v) for v in value) if len(value) == nd else (int(value[0]),) * nd
    return (int(value),) * nd


class _AvgWindows:
    """Window sums of an average pooling (1d lifted to 2d) and its per-output weights."""

    def __init__(self, opts: dict[str, Any]) -> None:
        nd = opts["nd"]
        self.lift = nd == 1
        n = 2 if self.lift else nd
        k = _tuple(opts["kernel_size"], nd)
        stride = opts.get("stride")
        s = _tuple(stride if stride is not None and stride != [] and stride != () else k, nd)
        p = _tuple(opts.get("padding", 0), nd)
        if self.lift:
            k, s, p = (1, *k), (1, *s), (0, *p)
        self.k, self.s, self.p, self.n = list(k), list(s), list(p), n
        self.ceil = bool(opts.get("ceil_mode", False))
        self.include_pad = bool(opts.get("count_include_pad", True))
        self.divisor = opts.get("divisor_override")

    def _shape(self, x: Tensor) -> Tensor:
        return x.unsqueeze(-2) if self.lift else x

    def _unshape(self, x: Tensor) -> Tensor:
        return x.squeeze(-2) if self.lift else x

    def avg(self, x: Tensor) -> Tensor:
        fn = F.avg_pool2d if self.n == 2 else F.avg_pool3d
        y = fn(self._shape(x), self.k, self.s, self.p, self.ceil, self.include_pad, self.divisor)
        return self._unshape(y)

    def window_sum(self, x: Tensor) -> Tensor:
        fn = F.avg_pool2d if self.n == 2 else F.avg_pool3d
        return self._unshape(fn(self._shape(x), self.k, self.s, self.p, self.ceil, True, 1))

    def window_sum_adjoint(self, g: Tensor, like: Tensor) -> Tensor:
        aten = torch.ops.aten
        op = aten.avg_pool2d_backward if self.n == 2 else aten.avg_pool3d_backward
        y = op(self._shape(g), self._shape(like), self.k, self.s, self.p, self.ceil, True, 1)
        return self._unshape(y)


class _AdaptiveWindows:
    """Window sums of an adaptive average pooling (1d lifted to 2d)."""

    def __init__(self, nd: int, in_sp: Shape, out_sp: Shape) -> None:
        self.lift = nd == 1
        self.n = 2 if self.lift else nd
        self.out_sp = ((1,) if self.lift else ()) + tuple(out_sp)
        self.in_sp = tuple(in_sp)
        self.out_sp_orig = tuple(out_sp)

    def _shape(self, x: Tensor) -> Tensor:
        return x.unsqueeze(-2) if self.lift else x

    def _unshape(self, x: Tensor) -> Tensor:
        return x.squeeze(-2) if self.lift else x

    def sizes(self, device, dtype) -> Tensor:
        """Number of inputs in each output's window, shape ``out_sp``."""
        total = torch.ones((), device=device, dtype=dtype)
        for i, (n_in, n_out) in enumerate(zip(self.in_sp, self.out_sp_orig)):
            j = torch.arange(n_out, device=device)
            start = (j * n_in) // n_out
            end = ((j + 1) * n_in + n_out - 1) // n_out
            size = (end - start).to(dtype)
            shape = [1] * len(self.in_sp)
            shape[i] = n_out
            total = total * size.reshape(shape)
        return total

    def avg(self, x: Tensor) -> Tensor:
        fn = F.adaptive_avg_pool2d if self.n == 2 else F.adaptive_avg_pool3d
        return self._unshape(fn(self._shape(x), self.out_sp))

    def window_sum(self, x: Tensor) -> Tensor:
        return self.avg(x) * self.sizes(x.device, x.dtype)

    def window_sum_adjoint(self, g: Tensor, like: Tensor) -> Tensor:
        op = (
            torch.ops.aten._adaptive_avg_pool2d_backward
            if self.n == 2
            else torch.ops.aten._adaptive_avg_pool3d_backward
        )
        g = g * self.sizes(g.device, g.dtype)
        return self._unshape(op(self._shape(g), self._shape(like)))


def _windows(opts: dict[str, Any], fin: Shape, fout: Shape):
    nd = opts["nd"]
    if opts.get("adaptive"):
        return _AdaptiveWindows(nd, fin[-nd:], fout[-nd:])
    return _AvgWindows(opts)


def _pool_dense(opts: dict[str, Any], fin: Shape, fout: Shape) -> Tensor:
    win = _windows(opts, fin, fout)
    return dense_jacobian(win.avg, fin, fout, torch.float32, torch.device("cpu"))


@dataclass
class PoolGraph:
    """Matrix-free connectivity of an (adaptive) average pooling of one example
    ``fin = (C, *spatial)`` -> ``fout`` (``opts``: the pooling options and ``nd``)."""

    opts: dict[str, Any]
    fin: Shape
    fout: Shape
    device: torch.device
    dtype: torch.dtype

    def __post_init__(self) -> None:
        if self.fin[0] != self.fout[0]:
            raise ValueError(f"pooling keeps the channels, got {self.fin} -> {self.fout}")
        self.win = _windows(self.opts, self.fin, self.fout)
        self.ones = torch.ones(1, 1, *self.fin[1:], device=self.device, dtype=self.dtype)
        counts = self.win.window_sum(self.ones)
        if tuple(counts.shape[2:]) != tuple(self.fout[1:]):
            raise ValueError(
                f"this pooling maps {self.fin} to {(self.fin[0], *counts.shape[2:])}, not "
                f"{self.fout}"
            )
        avg = self.win.avg(self.ones)
        # the Jacobian entry on every pair of output y's window: avg(ones)_y / count_y
        self.value = torch.where(counts > 0, avg / counts.clamp_min(1), torch.zeros_like(avg))

    @property
    def n_in(self) -> int:
        return numel(self.fin)

    @property
    def n_out(self) -> int:
        return numel(self.fout)

    def rows(self, fns: Sequence[Elementwise]) -> list[Tensor]:
        g = torch.cat([f(self.value) for f in fns])
        per = self.win.window_sum_adjoint(g, self.ones.expand(len(fns), *self.ones.shape[1:]))
        channels = self.fin[0]
        return [r.expand(channels, *r.shape[1:]).reshape(-1) for r in per.unbind(0)]

    def cols(self, fn: Elementwise, u: Tensor) -> Tensor:
        u = u.reshape(1, *self.fin).to(self.dtype)
        return (self.win.window_sum(u) * fn(self.value)).reshape(-1)


# ------------------------------------------------------------------ nn.*AvgPool* as modules

_ND = {
    nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
}
_ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def _module_options(module: nn.Module) -> dict[str, Any]:
    nd = next(n for klass, n in _ND.items() if isinstance(module, klass))
    if isinstance(module, _ADAPTIVE):
        return {"nd": nd, "adaptive": True, "output_size": module.output_size}
    return {
        "nd": nd, "kernel_size": module.kernel_size, "stride": module.stride,
        "padding": module.padding, "ceil_mode": module.ceil_mode,
        "count_include_pad": module.count_include_pad,
        "divisor_override": getattr(module, "divisor_override", None),
    }


def _pool_geometry(module: nn.Module, in_shape: Shape, out_shape: Shape):
    opts = _module_options(module)
    fin, fout = features(in_shape, opts["nd"]), features(out_shape, opts["nd"])
    if fin[0] != fout[0]:
        raise ValueError(f"pooling keeps the channels, got {in_shape} -> {out_shape}")
    return opts, fin, fout


def pool_create_matrix(module: nn.Module, in_shape: Shape, out_shape: Shape) -> Tensor:
    """Dense ``(inputs, outputs)`` connectivity of an average-pooling layer (per channel).

    >>> m = torch.nn.AvgPool2d(2)
    >>> W = pool_create_matrix(m, (1, 2, 4, 4), (1, 2, 2, 2))
    >>> tuple(W.shape), float(W.sum())
    ((32, 8), 8.0)
    """
    opts, fin, fout = _pool_geometry(module, in_shape, out_shape)
    return _pool_dense(opts, fin, fout)


def _pool_module_graph(module, in_shape, out_shape, device, dtype) -> PoolGraph:
    opts, fin, fout = _pool_geometry(module, in_shape, out_shape)
    return PoolGraph(opts, fin, fout, device, dtype)


for _t in _ND:
    register_module(_t, graph=_pool_module_graph, dense=pool_create_matrix)
