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

import functools
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


@functools.lru_cache(maxsize=4096)
def _taps_cpu(n_rows: int, n_steps: int, stride: int, dilation: int, kernel: int, offset: int,
              n_target: int, circular: bool, transposed: bool) -> Tensor:
    k = torch.arange(kernel)
    m = torch.zeros(n_rows, kernel, dtype=torch.float64)
    if transposed:
        x = torch.arange(n_rows)[:, None]
        y = x * stride + k[None, :] * dilation - offset
        m += ((y >= 0) & (y < n_target)).to(m.dtype)
        return m
    o = torch.arange(n_steps)[:, None]
    x = o * stride + k[None, :] * dilation - offset
    kk = k[None, :].expand_as(x)
    if circular:
        x = x % n_rows
        valid = torch.ones_like(x, dtype=torch.bool)
    else:
        valid = (x >= 0) & (x < n_rows)
    m.index_put_((x[valid], kk[valid]), torch.ones((), dtype=m.dtype), accumulate=True)
    return m


def _taps(n_rows: int, n_steps: int, stride: int, dilation: int, kernel: int, offset: int,
          n_target: int, circular: bool, transposed: bool, device) -> Tensor:
    """0/1 (counts) matrix ``m[x, k]`` of the 1-d taps of a convolution along one dimension.

    Convolution (``transposed=False``): input ``x`` is tap ``k`` of some output ``o`` in
    ``range(n_steps)`` when ``x = o*stride + k*dilation - offset`` (wrapped modulo ``n_rows``
    for circular padding). Transposed (``transposed=True``): input ``x`` in ``range(n_rows)``
    reaches output ``y = x*stride + k*dilation - offset``, valid when ``0 <= y < n_target``.
    The geometry is cached (it depends on shapes only).
    """
    return _taps_cpu(n_rows, n_steps, stride, dilation, kernel, offset, n_target, circular,
                     transposed)  # on the CPU; moved to the compute device where used


@functools.lru_cache(maxsize=4096)
def _unique_rows(t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return torch.unique(t, dim=0, return_inverse=True, return_counts=True)


def _apply_taps(kernels: Tensor, taps: list[Tensor]) -> Tensor:
    """``out[..., x1, x2] = sum_k kernels[..., k1, k2] taps1[x1, k1] taps2[x2, k2]``, any nd."""
    nd = len(taps)
    x = kernels
    for d, t in enumerate(taps):
        axis = x.dim() - nd + d
        x = (x.movedim(axis, -1) @ t.to(x.device, x.dtype).T).movedim(-1, axis)
    return x


def compact_rows(stacked: Tensor, taps: list[Tensor]):
    """Row sums evaluated once per distinct tap pattern.

    Along each spatial dimension, input positions with the same row of ``taps`` (the same set of
    kernel taps reaching them: all interior positions, up to the stride's residues) have the same
    row sums. Returns ``(rows, counts, expand)``: ``rows[f]`` of shape ``(C, U_1, ..., U_nd)`` over
    the distinct patterns, ``counts`` (broadcastable) how many positions share each pattern, and
    ``expand`` mapping such a compact tensor to the full flattened ``(C, n_1, ..., n_nd)`` one.
    """
    uniques, inverses, counts = [], [], []
    for t in taps:
        u, inv, cnt = _unique_rows(t)  # cached, on the CPU
        dev = stacked.device
        u, inv, cnt = u.to(dev), inv.to(dev), cnt.to(dev)
        uniques.append(u)
        inverses.append(inv)
        counts.append(cnt.to(stacked.dtype))
    weight = counts[0]
    for c in counts[1:]:
        weight = weight[..., None] * c
    compact = _apply_taps(stacked, uniques)

    def expand(x: Tensor) -> Tensor:
        for d, idx in enumerate(inverses):
            x = x.index_select(1 + d, idx)
        return x.reshape(-1)

    return list(compact.unbind(0)), weight, expand


def _numel(shape: Shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class _TapRows:
    """Row statistics shared by the convolution graphs: both reduce to tap matrices.

    Subclasses provide ``_kernels_and_taps(fns) -> (stacked kernels, per-dimension taps)``.
    """

    def rows(self, fns: Sequence[Elementwise]) -> list[Tensor]:
        stacked, taps = self._kernels_and_taps(fns)
        out = _apply_taps(stacked, taps)
        return list(out.reshape(len(fns), -1).unbind(0))

    def rows_compact(self, fns: Sequence[Elementwise]):
        """:meth:`rows` on the distinct tap patterns only (see :func:`compact_rows`)."""
        stacked, taps = self._kernels_and_taps(fns)
        return compact_rows(stacked, taps)


@dataclass
class ConvGraph(_TapRows):
    """Matrix-free connectivity of a convolution (zeros or circular padding)."""

    module: nn.modules.conv._ConvNd
    fin: Shape
    fout: Shape
    device: torch.device
    dtype: torch.dtype

    def __post_init__(self) -> None:
        self.nd = len(self.module.kernel_size)
        self.pairs = _padding_pairs(self.module)
        self._cache: dict = {}
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

    def _f(self, fn: Elementwise) -> Tensor:
        """``fn(weight)``, kept from :meth:`rows` until :meth:`cols` uses it."""
        if fn not in self._cache:
            self._cache[fn] = fn(self._weight())
        return self._cache[fn]

    def _kernels_and_taps(self, fns: Sequence[Elementwise]) -> tuple[Tensor, list[Tensor]]:
        m = self.module
        kernel = tuple(m.kernel_size)
        g = m.groups
        c_out, c_in = m.out_channels, m.in_channels
        ones = torch.ones(g, 1, c_out // g, device=self.device, dtype=self.dtype)
        stacked = torch.stack(  # sum over each group's output channels, as a batched gemv
            [torch.bmm(ones, self._f(f).reshape(g, c_out // g, -1)).reshape(c_in, *kernel)
             for f in fns]
        )
        circular = m.padding_mode == "circular"
        taps = [
            _taps(n, o, s, d, k, left, n, circular, False, self.device)
            for n, o, s, d, k, (left, _) in zip(
                self.fin[1:], self.fout[1:], m.stride, m.dilation, kernel, self.pairs
            )
        ]
        return stacked, taps

    def cols(self, fn: Elementwise, u: Tensor) -> Tensor:
        m = self.module
        u = u.reshape(1, *self.fin).to(self.dtype)
        fw = self._cache.pop(fn, None)
        if fw is None:
            fw = fn(self._weight())
        self._cache.clear()
        return _conv_apply(m, u, fw).reshape(-1)


@dataclass
class ConvTransposeGraph(_TapRows):
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

    def _kernels_and_taps(self, fns: Sequence[Elementwise]) -> tuple[Tensor, list[Tensor]]:
        m, w = self.module, self._weight()
        stacked = torch.stack([f(w).sum(1) for f in fns])  # (n_fns, C_in, *kernel)
        taps = [
            _taps(n, 0, s, d, k, p, o, False, True, self.device)
            for n, o, s, d, k, p in zip(
                self.fin[1:], self.fout[1:], m.stride, m.dilation, m.kernel_size, m.padding
            )
        ]
        return stacked, taps

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
