r"""Average pooling (``nn.AvgPool1d/2d/3d``) and adaptive average pooling
(``nn.AdaptiveAvgPool1d/2d/3d``).

Pooling is per channel: input :math:`(c, x)` feeds output :math:`(c, y)` when :math:`x` lies in
the window of :math:`y`, with weight :math:`v_y = 1/\text{divisor}_y` (the divisor depends on the
output position when ``count_include_pad=False``, with ``ceil_mode`` edge windows, or for adaptive
pooling). For an elementwise :math:`f` with :math:`f(0) = 0`,

* :math:`\sum_j f(W_{ij}) = \text{SumPool}^{\top}(f(v))_i` (the adjoint of the window sum);
* :math:`\sum_i u_i f(W_{ij}) = f(v_j)\,\text{SumPool}(u)_j`.

The 2020 package connected every input channel to every output channel here (a defect); the
numbers below are the true Jacobian.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foresight.ei.conv import _dense_jacobian, _numel
from foresight.ei.registry import Elementwise, Shape, features, register_layer

__all__ = [
    "avgpool1d_create_matrix",
    "avgpool2d_create_matrix",
    "avgpool3d_create_matrix",
    "adaptive_avgpool1d_create_matrix",
    "adaptive_avgpool2d_create_matrix",
    "adaptive_avgpool3d_create_matrix",
    "PoolGraph",
]

_ND = {
    nn.AvgPool1d: 1,
    nn.AvgPool2d: 2,
    nn.AvgPool3d: 3,
    nn.AdaptiveAvgPool1d: 1,
    nn.AdaptiveAvgPool2d: 2,
    nn.AdaptiveAvgPool3d: 3,
}


def _nd(module: nn.Module) -> int:
    for klass in type(module).__mro__:
        if klass in _ND:
            return _ND[klass]
    raise TypeError(f"{type(module).__name__} is not an average pooling layer")


def _tuple(value, nd: int) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        return tuple(int(v) for v in value) if len(value) == nd else (int(value[0]),) * nd
    return (int(value),) * nd


class _AvgWindows:
    """Window sums of an ``AvgPool`` (1d lifted to 2d) and its per-output weights."""

    def __init__(self, module: nn.Module, nd: int) -> None:
        self.lift = nd == 1
        n = 2 if self.lift else nd
        k = _tuple(module.kernel_size, nd)
        s = _tuple(module.stride if module.stride is not None else module.kernel_size, nd)
        p = _tuple(module.padding, nd)
        if self.lift:
            k, s, p = (1, *k), (1, *s), (0, *p)
        self.k, self.s, self.p, self.n = list(k), list(s), list(p), n
        self.ceil = bool(module.ceil_mode)
        self.include_pad = bool(module.count_include_pad)
        self.divisor = getattr(module, "divisor_override", None)

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
    """Window sums of an ``AdaptiveAvgPool`` (1d lifted to 2d)."""

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


def _windows(module: nn.Module, fin: Shape, fout: Shape):
    nd = _nd(module)
    if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        return _AdaptiveWindows(nd, fin[-nd:], fout[-nd:])
    return _AvgWindows(module, nd)


def _pool_geometry(module: nn.Module, in_shape: Shape, out_shape: Shape):
    nd = _nd(module)
    fin, fout = features(in_shape, nd), features(out_shape, nd)
    if fin[0] != fout[0]:
        raise ValueError(f"pooling keeps the channels, got {in_shape} -> {out_shape}")
    return nd, fin, fout


def pool_create_matrix(module: nn.Module, in_shape: Shape, out_shape: Shape) -> Tensor:
    """Dense ``(inputs, outputs)`` connectivity of an average-pooling layer (per channel).

    >>> m = torch.nn.AvgPool2d(2)
    >>> W = avgpool2d_create_matrix(m, (1, 2, 4, 4), (1, 2, 2, 2))
    >>> tuple(W.shape), float(W.sum())
    ((32, 8), 8.0)
    """
    nd, fin, fout = _pool_geometry(module, in_shape, out_shape)
    win = _windows(module, fin, fout)
    dtype = torch.float32
    out = _dense_jacobian(win.avg, fin, fout, dtype, torch.device("cpu"))
    return out


avgpool1d_create_matrix = pool_create_matrix
avgpool2d_create_matrix = pool_create_matrix
avgpool3d_create_matrix = pool_create_matrix
adaptive_avgpool1d_create_matrix = pool_create_matrix
adaptive_avgpool2d_create_matrix = pool_create_matrix
adaptive_avgpool3d_create_matrix = pool_create_matrix


@dataclass
class PoolGraph:
    """Matrix-free connectivity of an (adaptive) average pooling layer."""

    module: nn.Module
    fin: Shape
    fout: Shape
    device: torch.device
    dtype: torch.dtype

    def __post_init__(self) -> None:
        self.win = _windows(self.module, self.fin, self.fout)
        self.ones = torch.ones(1, 1, *self.fin[1:], device=self.device, dtype=self.dtype)
        counts = self.win.window_sum(self.ones)
        if tuple(counts.shape[2:]) != tuple(self.fout[1:]):
            raise ValueError(
                f"{self.module!r} maps {self.fin} to {tuple(counts.shape[1:])}, not {self.fout}"
            )
        avg = self.win.avg(self.ones)
        # the Jacobian entry on every pair of output y's window: avg(ones)_y / count_y
        self.value = torch.where(counts > 0, avg / counts.clamp_min(1), torch.zeros_like(avg))

    @property
    def n_in(self) -> int:
        return _numel(self.fin)

    @property
    def n_out(self) -> int:
        return _numel(self.fout)

    def rows(self, fns: Sequence[Elementwise]) -> list[Tensor]:
        g = torch.cat([f(self.value) for f in fns])
        per = self.win.window_sum_adjoint(g, self.ones.expand(len(fns), *self.ones.shape[1:]))
        channels = self.fin[0]
        return [r.expand(channels, *r.shape[1:]).reshape(-1) for r in per.unbind(0)]

    def cols(self, fn: Elementwise, u: Tensor) -> Tensor:
        u = u.reshape(1, *self.fin).to(self.dtype)
        return (self.win.window_sum(u) * fn(self.value)).reshape(-1)


def _pool_rule(module, in_shape, out_shape, device, dtype) -> PoolGraph:
    _, fin, fout = _pool_geometry(module, in_shape, out_shape)
    return PoolGraph(module, fin, fout, device, dtype)


for _t in _ND:
    register_layer(_t, dense=pool_create_matrix)(_pool_rule)
