r"""Convolutions (``nn.Conv1d/2d/3d``) and transposed convolutions (``nn.ConvTranspose1d/2d/3d``).

Connectivity: input neuron :math:`(c, x)` and output neuron :math:`(c', y)` of a convolution are
joined by the single kernel entry :math:`w[c', c \bmod (C_{in}/g), k]` with
:math:`x = y s + k d - p_{\text{left}}` (stride :math:`s`, dilation :math:`d`, groups :math:`g`,
:math:`c` and :math:`c'` in the same group), or not at all. Hence, for an elementwise :math:`f`
with :math:`f(0) = 0`,

* :math:`\sum_j f(W_{ij})` is a depthwise *transposed* convolution of an all-ones output map with
  the kernel :math:`K[c, k] = \sum_{c'} f(w[c', c, k])` (cheap: no sum over output channels);
* :math:`\sum_i u_i f(W_{ij})` is the convolution of :math:`u` with :math:`f(w)` (one forward).

A transposed convolution swaps the two roles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foresight.ei.registry import Elementwise, NotMatrixFree, Shape, features, register_layer

__all__ = [
    "conv_create_matrix",
    "conv1d_create_matrix",
    "conv2d_create_matrix",
    "conv3d_create_matrix",
    "conv_transpose_create_matrix",
    "conv_transpose1d_create_matrix",
    "conv_transpose2d_create_matrix",
    "conv_transpose3d_create_matrix",
    "ConvGraph",
    "ConvTransposeGraph",
]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_DENSE_BLOCK_ELEMENTS = 1 << 24


def compute_dtype(weight: Tensor) -> torch.dtype:
    """float64 stays float64; float32, float16 and bfloat16 are computed in float32."""
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def _padding_pairs(module: nn.modules.conv._ConvNd) -> list[tuple[int, int]]:
    """Per spatial dim ``(left, right)`` zero-padding of a convolution, 'same'/'valid' resolved."""
    nd = len(module.kernel_size)
    pad = module.padding
    if isinstance(pad, str):
        if pad == "valid":
            return [(0, 0)] * nd
        totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
        return [(t // 2, t - t // 2) for t in totals]
    return [(int(p), int(p)) for p in pad]


def _conv_geometry(module: nn.modules.conv._ConvNd, in_shape: Shape, out_shape: Shape):
    nd = len(module.kernel_size)
    fin, fout = features(in_shape, nd), features(out_shape, nd)
    if fin[0] != module.in_channels or fout[0] != module.out_channels:
        raise ValueError(
            f"shapes {in_shape} -> {out_shape} do not match the channels of {module!r}"
        )
    return nd, fin, fout


def _dense_jacobian(apply, fin: Shape, fout: Shape, dtype: torch.dtype, device) -> Tensor:
    """Rows of the Jacobian of a linear map: apply it to blocks of the identity."""
    n_in = 1
    for s in fin:
        n_in *= s
    n_out = 1
    for s in fout:
        n_out *= s
    out = torch.empty(n_in, n_out, dtype=dtype, device=device)
    block = max(1, _DENSE_BLOCK_ELEMENTS // max(n_in, n_out))
    for start in range(0, n_in, block):
        stop = min(n_in, start + block)
        eye = torch.zeros(stop - start, n_in, dtype=dtype, device=device)
        eye[torch.arange(stop - start, device=device), torch.arange(start, stop, device=device)] = 1
        out[start:stop] = apply(eye.reshape(stop - start, *fin)).reshape(stop - start, n_out)
    return out


def _conv_apply(module: nn.modules.conv._ConvNd, x: Tensor, weight: Tensor) -> Tensor:
    """The bias-free convolution of ``module`` (any padding mode) applied to a batch ``x``."""
    nd = len(module.kernel_size)
    pairs = _padding_pairs(module)
    if module.padding_mode != "zeros" or any(a != b for a, b in pairs):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        flat = [p for pair in reversed(pairs) for p in pair]
        x = F.pad(x, flat, mode=mode)
        padding: tuple[int, ...] = (0,) * nd
    else:
        padding = tuple(a for a, _ in pairs)
    return _CONV[nd](x, weight, None, module.stride, padding, module.dilation, module.groups)


def conv_create_matrix(
    module: nn.modules.conv._ConvNd, in_shape: Shape, out_shape: Shape
) -> Tensor:
    """Dense ``(inputs, outputs)`` connectivity of ``nn.Conv1d/2d/3d``: the Jacobian of the
    bias-free convolution (stride, padding of every mode, dilation and groups included).

    >>> m = torch.nn.Conv2d(1, 1, 2, bias=False)
    >>> tuple(conv2d_create_matrix(m, (1, 1, 3, 3), (1, 1, 2, 2)).shape)
    (9, 4)
    """
    nd, fin, fout = _conv_geometry(module, in_shape, out_shape)
    weight = module.weight.detach()
    w = weight.to(compute_dtype(weight))
    return _dense_jacobian(lambda x: _conv_apply(module, x, w), fin, fout, w.dtype, w.device)


conv1d_create_matrix = conv_create_matrix
conv2d_create_matrix = conv_create_matrix
conv3d_create_matrix = conv_create_matrix


def _output_padding(module, fin: Shape, fout: Shape) -> tuple[int, ...]:
    ops = []
    for i, (s, p, d, k) in enumerate(
        zip(module.stride, module.padding, module.dilation, module.kernel_size)
    ):
        base = (fin[i + 1] - 1) * s - 2 * p + d * (k - 1) + 1
        op = fout[i + 1] - base
        if not 0 <= op < max(s, d):
            raise ValueError(f"output shape {fout} is not reachable by {module!r} from {fin}")
        ops.append(op)
    return tuple(ops)


def conv_transpose_create_matrix(
    module: nn.modules.conv._ConvTransposeNd, in_shape: Shape, out_shape: Shape
) -> Tensor:
    """Dense ``(inputs, outputs)`` connectivity of ``nn.ConvTranspose1d/2d/3d`` (the Jacobian of
    the bias-free transposed convolution; ``output_padding`` is read off ``out_shape``).

    >>> m = torch.nn.ConvTranspose1d(1, 1, 3, stride=2, bias=False)
    >>> tuple(conv_transpose1d_create_matrix(m, (1, 1, 4), (1, 1, 9)).shape)
    (4, 9)
    """
    nd, fin, fout = _conv_geometry(module, in_shape, out_shape)
    op = _output_padding(module, fin, fout)
    weight = module.weight.detach()
    w = weight.to(compute_dtype(weight))

    def apply(x: Tensor) -> Tensor:
        return _CONV_T[nd](
            x, w, None, module.stride, module.padding, op, module.groups, module.dilation
        )

    return _dense_jacobian(apply, fin, fout, w.dtype, w.device)


conv_transpose1d_create_matrix = conv_transpose_create_matrix
conv_transpose2d_create_matrix = conv_transpose_create_matrix
conv_transpose3d_create_matrix = conv_transpose_create_matrix


def _numel(shape: Shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@dataclass
class ConvGraph:
    """Matrix-free connectivity of a convolution (zeros or circular padding)."""

    module: nn.modules.conv._ConvNd
    fin: Shape
    fout: Shape
    device: torch.device
    dtype: torch.dtype

    def __post_init__(self) -> None:
        self.nd = len(self.module.kernel_size)
        self.pairs = _padding_pairs(self.module)
        mode = self.module.padding_mode
        if mode not in ("zeros", "circular"):
            raise NotMatrixFree(
                f"padding_mode={mode!r} joins some pairs of neurons twice", self.n_in, self.n_out
            )
        if mode == "circular":
            for k, d, n in zip(self.module.kernel_size, self.module.dilation, self.fin[1:]):
                if (k - 1) * d + 1 > n:
                    raise NotMatrixFree(
                        "the circular padding wraps a window around twice", self.n_in, self.n_out
                    )

    @property
    def n_in(self) -> int:
        return _numel(self.fin)

    @property
    def n_out(self) -> int:
        return _numel(self.fout)

    def _weight(self) -> Tensor:
        return self.module.weight.detach().to(self.device, self.dtype)

    def rows(self, fns: Sequence[Elementwise]) -> list[Tensor]:
        m, w = self.module, self._weight()
        c_out, c_in_g = w.shape[:2]
        g, kernel = m.groups, tuple(w.shape[2:])
        c_in = c_in_g * g
        stacked = torch.cat(
            [f(w).reshape(g, c_out // g, c_in_g, *kernel).sum(1).reshape(c_in, 1, *kernel)
             for f in fns]
        )
        ones = torch.ones(1, stacked.shape[0], *self.fout[1:], device=self.device, dtype=self.dtype)
        full = _CONV_T[self.nd](
            ones, stacked, None, m.stride, 0, 0, stacked.shape[0], m.dilation
        )
        folded = self._fold(full)
        return list(folded.reshape(len(fns), -1).unbind(0))

    def _fold(self, full: Tensor) -> Tensor:
        """Map padded coordinates back onto the input (crop for zeros, wrap for circular)."""
        for i, ((left, right), n) in enumerate(zip(self.pairs, self.fin[1:])):
            dim = 2 + i
            length = n + left + right
            if full.shape[dim] < length:
                extra = [0, 0] * (full.dim() - dim - 1) + [0, length - full.shape[dim]]
                full = F.pad(full, extra)
            if self.module.padding_mode == "circular":
                idx = (torch.arange(length, device=full.device) - left) % n
                shape = list(full.shape)
                shape[dim] = n
                full = full.new_zeros(shape).index_add_(dim, idx, full)
            else:
                full = full.narrow(dim, left, n)
        return full

    def cols(self, fn: Elementwise, u: Tensor) -> Tensor:
        m = self.module
        u = u.reshape(1, *self.fin).to(self.dtype)
        return _conv_apply(m, u, fn(self._weight())).reshape(-1)


@dataclass
class ConvTransposeGraph:
    """Matrix-free connectivity of a transposed convolution."""

    module: nn.modules.conv._ConvTransposeNd
    fin: Shape
    fout: Shape
    device: torch.device
    dtype: torch.dtype

    def __post_init__(self) -> None:
        self.nd = len(self.module.kernel_size)
        self.output_padding = _output_padding(self.module, self.fin, self.fout)

    @property
    def n_in(self) -> int:
        return _numel(self.fin)

    @property
    def n_out(self) -> int:
        return _numel(self.fout)

    def _weight(self) -> Tensor:
        return self.module.weight.detach().to(self.device, self.dtype)

    def rows(self, fns: Sequence[Elementwise]) -> list[Tensor]:
        m, w = self.module, self._weight()
        c_in, c_out_g = w.shape[:2]
        kernel = tuple(w.shape[2:])
        stacked = torch.cat([f(w).sum(1).reshape(c_in, 1, *kernel) for f in fns])
        ones = torch.ones(1, stacked.shape[0], *self.fout[1:], device=self.device, dtype=self.dtype)
        y = _CONV[self.nd](ones, stacked, None, m.stride, m.padding, m.dilation, stacked.shape[0])
        for i, n in enumerate(self.fin[1:]):
            y = y.narrow(2 + i, 0, n)
        return list(y.reshape(len(fns), -1).unbind(0))

    def cols(self, fn: Elementwise, u: Tensor) -> Tensor:
        m = self.module
        u = u.reshape(1, *self.fin).to(self.dtype)
        y = _CONV_T[self.nd](
            u, fn(self._weight()), None, m.stride, m.padding, self.output_padding, m.groups,
            m.dilation,
        )
        return y.reshape(-1)


def _conv_rule(module, in_shape, out_shape, device, dtype) -> ConvGraph:
    _, fin, fout = _conv_geometry(module, in_shape, out_shape)
    return ConvGraph(module, fin, fout, device, dtype)


def _conv_transpose_rule(module, in_shape, out_shape, device, dtype) -> ConvTransposeGraph:
    _, fin, fout = _conv_geometry(module, in_shape, out_shape)
    return ConvTransposeGraph(module, fin, fout, device, dtype)


for _t in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_layer(_t, dense=conv_create_matrix)(_conv_rule)
for _t in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register_layer(_t, dense=conv_transpose_create_matrix)(_conv_transpose_rule)
