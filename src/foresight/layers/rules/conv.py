r"""Convolutions with a parameter weight: ``F.conv1d/2d/3d`` (``nn.Conv1d/2d/3d`` and anything else
calling them; the padding modes of ``nn.Conv`` are an ``F.pad`` before the call).

Per example :math:`b`, the weight gradient
:math:`W_b[o, c, k] = \sum_l G_b[o, l]\, X_b[c, l s + k d]` is the weight gradient of the
convolution on example :math:`b` alone; a chunk of examples side by side as channels, with as many
times the groups, gives all of theirs in one call of the convolution's weight backward. The bias
gradient sums the output gradient over positions.

**Weight graph** (:mod:`foresight.ei`). Input neuron :math:`(c, x)` and output neuron
:math:`(c', y)` are joined by the single kernel entry :math:`w[c', c \bmod (C_{in}/g), k]` with
:math:`x = y s + k d - p_{\text{left}}` (stride :math:`s`, dilation :math:`d`, groups :math:`g`,
:math:`c` and :math:`c'` in the same group), or not at all. Hence, for an elementwise :math:`f`
with :math:`f(0) = 0`,

* :math:`\sum_j f(W_{ij})` is a depthwise *transposed* convolution of an all-ones output map with
  the kernel :math:`K[c, k] = \sum_{c'} f(w[c', c, k])` (cheap: no sum over output channels),
  evaluated once per distinct pattern of taps;
* :math:`\sum_i u_i f(W_{ij})` is the convolution of :math:`u` with :math:`f(w)` (one forward).

A transposed convolution swaps the two roles. ``nn.Conv*`` and ``nn.ConvTranspose*`` are also
registered as modules (:mod:`foresight.layers.modules`): a module's weight graph is the Jacobian of
the whole module, its padding mode included (reflect and replicate padding join some pairs twice:
dense path). The causal affine map is the Jacobian on one input (by default one receptive field,
``(in_channels, *kernel_size)``) with the bias broadcast over the output positions.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from foresight.layers.contrib import Dense
from foresight.layers.graphs import (
    Elementwise,
    NotMatrixFree,
    Shape,
    compute_dtype,
    dense_jacobian,
    features,
    numel,
)
from foresight.layers.modules import effective, register_module
from foresight.layers.registry import Rule, register_rule
from foresight.layers.rules._common import is_batched, is_tracked, pos

__all__ = [
    "ConvRule", "ConvWeight", "CONV_CHUNK", "CONV_CHUNK_ELEMENTS", "ConvGraph",
    "ConvTransposeGraph", "conv_create_matrix", "conv_transpose_create_matrix", "conv_apply",
    "compact_rows", "padding_pairs",
]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}

#: Examples whose weight gradients one call forms (on the reference CPU, chunks of 4 to 16 beat
#: the whole batch by 10 %: the per-call work stays in cache) ...
CONV_CHUNK = 16
#: ... and at most this many weight entries (examples x weight size) at once.
CONV_CHUNK_ELEMENTS = 1 << 22


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
        step = max(1, min(n, CONV_CHUNK, CONV_CHUNK_ELEMENTS // max(1, size)))
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

    def _geometry(self, use, weight):
        o = use.options
        return dict(stride=o["stride"], pairs=[tuple(p) for p in o["padding"]],
                    dilation=o["dilation"], groups=o["groups"], mode="zeros")

    def ei_graph(self, use, operands, device, dtype):
        w = operands["weight"]
        return ConvGraph(w, tuple(use.in_shape), tuple(use.out_shape), device=device, dtype=dtype,
                         **self._geometry(use, w))

    def ei_dense(self, use, operands):
        w = operands["weight"].detach()
        w = w.to(compute_dtype(w))
        geo = self._geometry(use, w)
        return dense_jacobian(lambda x: conv_apply(x, w, **geo), tuple(use.in_shape),
                              tuple(use.out_shape), w.dtype, w.device)

    def affine(self, use, operands, input_shape=None):
        w = operands["weight"]
        shape = input_shape
        if shape is None:
            shape = (int(w.shape[1]) * use.options["groups"], *(int(k) for k in w.shape[2:]))
        return conv_affine(w, operands.get("bias"), tuple(shape), self._geometry(use, w),
                           "convolution")


register_rule(ConvRule())


# ------------------------------------------------------------------ weight graphs


def conv_apply(x: Tensor, weight: Tensor, stride, pairs, dilation, groups, mode="zeros") -> Tensor:
    """The bias-free convolution of a batch ``x``: padding ``pairs`` (left, right) per spatial
    dimension, in ``mode`` (``"zeros"``, ``"reflect"``, ``"replicate"``, ``"circular"``)."""
    nd = weight.dim() - 2
    pairs = [tuple(int(v) for v in p) for p in pairs]
    if mode != "zeros" or any(a != b for a, b in pairs):
        pad_mode = "constant" if mode == "zeros" else mode
        flat = [p for pair in reversed(pairs) for p in pair]
        x = F.pad(x, flat, mode=pad_mode)
        padding: tuple[int, ...] = (0,) * nd
    else:
        padding = tuple(a for a, _ in pairs)
    return _CONV[nd](x, weight, None, tuple(stride), padding, tuple(dilation), int(groups))


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
          n_target: int, circular: bool, transposed: bool) -> Tensor:
    """0/1 (counts) matrix ``m[x, k]`` of the 1-d taps of a convolution along one dimension.

    Convolution (``transposed=False``): input ``x`` is tap ``k`` of some output ``o`` in
    ``range(n_steps)`` when ``x = o*stride + k*dilation - offset`` (wrapped modulo ``n_rows``
    for circular padding). Transposed (``transposed=True``): input ``x`` in ``range(n_rows)``
    reaches output ``y = x*stride + k*dilation - offset``, valid when ``0 <= y < n_target``.
    The geometry is cached on the CPU (it depends on shapes only); moved where it is used.
    """
    return _taps_cpu(n_rows, n_steps, stride, dilation, kernel, offset, n_target, circular,
                     transposed)


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
    """Matrix-free connectivity of a convolution (zeros or circular padding) of one example
    ``fin = (C_in, *spatial)`` -> ``fout``."""

    weight: Tensor
    fin: Shape
    fout: Shape
    stride: tuple[int, ...]
    pairs: list[tuple[int, int]]
    dilation: tuple[int, ...]
    groups: int = 1
    mode: str = "zeros"
    device: torch.device | None = None
    dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        self.nd = self.weight.dim() - 2
        self.kernel = tuple(int(k) for k in self.weight.shape[2:])
        self.stride = tuple(int(v) for v in self.stride)
        self.dilation = tuple(int(v) for v in self.dilation)
        self.pairs = [tuple(int(v) for v in p) for p in self.pairs]
        self.device = self.weight.device if self.device is None else self.device
        self.dtype = compute_dtype(self.weight) if self.dtype is None else self.dtype
        self._cache: dict = {}
        if self.mode not in ("zeros", "circular"):
            raise NotMatrixFree(
                f"padding_mode={self.mode!r} joins some pairs of neurons twice", self.n_in,
                self.n_out,
            )
        if self.mode == "circular":
            for k, d, n in zip(self.kernel, self.dilation, self.fin[1:]):
                if (k - 1) * d + 1 > n:
                    raise NotMatrixFree(
                        "the circular padding wraps a window around twice", self.n_in, self.n_out
                    )

    @property
    def n_in(self) -> int:
        return numel(self.fin)

    @property
    def n_out(self) -> int:
        return numel(self.fout)

    def _weight(self) -> Tensor:
        return self.weight.detach().to(self.device, self.dtype)

    def _f(self, fn: Elementwise) -> Tensor:
        """``fn(weight)``, kept from :meth:`rows` until :meth:`cols` uses it."""
        if fn not in self._cache:
            self._cache[fn] = fn(self._weight())
        return self._cache[fn]

    def _kernels_and_taps(self, fns: Sequence[Elementwise]) -> tuple[Tensor, list[Tensor]]:
        g = self.groups
        c_out = int(self.weight.shape[0])
        c_in = int(self.weight.shape[1]) * g
        ones = torch.ones(g, 1, c_out // g, device=self.device, dtype=self.dtype)
        stacked = torch.stack(  # sum over each group's output channels, as a batched gemv
            [torch.bmm(ones, self._f(f).reshape(g, c_out // g, -1)).reshape(c_in, *self.kernel)
             for f in fns]
        )
        circular = self.mode == "circular"
        taps = [
            _taps(n, o, s, d, k, left, n, circular, False)
            for n, o, s, d, k, (left, _) in zip(
                self.fin[1:], self.fout[1:], self.stride, self.dilation, self.kernel, self.pairs
            )
        ]
        return stacked, taps

    def cols(self, fn: Elementwise, u: Tensor) -> Tensor:
        u = u.reshape(1, *self.fin).to(self.dtype)
        fw = self._cache.pop(fn, None)
        if fw is None:
            fw = fn(self._weight())
        self._cache.clear()
        return conv_apply(u, fw, self.stride, self.pairs, self.dilation, self.groups,
                          self.mode).reshape(-1)


@dataclass
class ConvTransposeGraph(_TapRows):
    """Matrix-free connectivity of a transposed convolution of one example."""

    weight: Tensor
    fin: Shape
    fout: Shape
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    output_padding: tuple[int, ...]
    device: torch.device | None = None
    dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        self.nd = self.weight.dim() - 2
        self.device = self.weight.device if self.device is None else self.device
        self.dtype = compute_dtype(self.weight) if self.dtype is None else self.dtype

    @property
    def n_in(self) -> int:
        return numel(self.fin)

    @property
    def n_out(self) -> int:
        return numel(self.fout)

    def _weight(self) -> Tensor:
        return self.weight.detach().to(self.device, self.dtype)

    def _kernels_and_taps(self, fns: Sequence[Elementwise]) -> tuple[Tensor, list[Tensor]]:
        w = self._weight()
        stacked = torch.stack([f(w).sum(1) for f in fns])  # (n_fns, C_in, *kernel)
        taps = [
            _taps(n, 0, s, d, k, p, o, False, True)
            for n, o, s, d, k, p in zip(
                self.fin[1:], self.fout[1:], self.stride, self.dilation, w.shape[2:],
                self.padding,
            )
        ]
        return stacked, taps

    def cols(self, fn: Elementwise, u: Tensor) -> Tensor:
        u = u.reshape(1, *self.fin).to(self.dtype)
        y = _CONV_T[self.nd](u, fn(self._weight()), None, self.stride, self.padding,
                             self.output_padding, self.groups, self.dilation)
        return y.reshape(-1)


def conv_affine(weight: Tensor, bias: Tensor | None, input_shape: Shape, geometry: dict,
                what: str) -> tuple[Tensor, Tensor, Shape]:
    """``(W, b, input_shape)`` of a convolution on one input of ``input_shape``: the columns of
    the bias-free map (one forward pass of the basis vectors -- exact: each output is a sum of
    products weight * 1 and zeros) and the bias broadcast over the output positions."""
    weight = weight.detach()
    n_in = math.prod(input_shape)
    basis = torch.eye(n_in, dtype=weight.dtype, device=weight.device).view(n_in, *input_shape)
    try:
        out = conv_apply(basis, weight, **geometry)
    except RuntimeError as exc:
        raise ValueError(f"the {what} cannot run on input_shape {input_shape}: {exc}") from exc
    out_shape = out.shape[1:]
    w = out.reshape(n_in, -1)
    if bias is None:
        b = torch.zeros(w.shape[1], dtype=w.dtype, device=w.device)
    else:
        view = (-1,) + (1,) * (len(out_shape) - 1)
        b = bias.detach().reshape(view).expand(out_shape).reshape(-1).clone()
    return w, b, tuple(input_shape)


# ------------------------------------------------------------------ nn.Conv* as modules


def _module_geometry(module) -> dict:
    return dict(
        stride=tuple(module.stride),
        pairs=padding_pairs(module.padding, tuple(module.kernel_size), tuple(module.dilation)),
        dilation=tuple(module.dilation), groups=int(module.groups), mode=module.padding_mode,
    )


def _conv_geometry(module, in_shape: Shape, out_shape: Shape):
    nd = len(module.kernel_size)
    fin, fout = features(in_shape, nd), features(out_shape, nd)
    if fin[0] != module.in_channels or fout[0] != module.out_channels:
        raise ValueError(
            f"shapes {in_shape} -> {out_shape} do not match the channels of {module!r}"
        )
    return nd, fin, fout


def conv_create_matrix(module, in_shape: Shape, out_shape: Shape) -> Tensor:
    """Dense ``(inputs, outputs)`` connectivity of ``nn.Conv1d/2d/3d``: the Jacobian of the
    bias-free convolution (stride, padding of every mode, dilation and groups included).

    >>> m = torch.nn.Conv2d(1, 1, 2, bias=False)
    >>> tuple(conv_create_matrix(m, (1, 1, 3, 3), (1, 1, 2, 2)).shape)
    (9, 4)
    """
    _, fin, fout = _conv_geometry(module, in_shape, out_shape)
    weight = effective(module).detach()
    w = weight.to(compute_dtype(weight))
    geo = _module_geometry(module)
    return dense_jacobian(lambda x: conv_apply(x, w, **geo), fin, fout, w.dtype, w.device)


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


def conv_transpose_create_matrix(module, in_shape: Shape, out_shape: Shape) -> Tensor:
    """Dense ``(inputs, outputs)`` connectivity of ``nn.ConvTranspose1d/2d/3d`` (the Jacobian of
    the bias-free transposed convolution; ``output_padding`` is read off ``out_shape``).

    >>> m = torch.nn.ConvTranspose1d(1, 1, 3, stride=2, bias=False)
    >>> tuple(conv_transpose_create_matrix(m, (1, 1, 4), (1, 1, 9)).shape)
    (4, 9)
    """
    nd, fin, fout = _conv_geometry(module, in_shape, out_shape)
    op = _output_padding(module, fin, fout)
    weight = effective(module).detach()
    w = weight.to(compute_dtype(weight))

    def apply(x: Tensor) -> Tensor:
        return _CONV_T[nd](
            x, w, None, module.stride, module.padding, op, module.groups, module.dilation
        )

    return dense_jacobian(apply, fin, fout, w.dtype, w.device)


def _conv_module_graph(module, in_shape, out_shape, device, dtype) -> ConvGraph:
    _, fin, fout = _conv_geometry(module, in_shape, out_shape)
    return ConvGraph(effective(module), fin, fout, device=device, dtype=dtype,
                     **_module_geometry(module))


def _conv_transpose_module_graph(module, in_shape, out_shape, device, dtype):
    _, fin, fout = _conv_geometry(module, in_shape, out_shape)
    return ConvTransposeGraph(
        effective(module), fin, fout, tuple(module.stride), tuple(module.padding),
        tuple(module.dilation), int(module.groups), _output_padding(module, fin, fout),
        device, dtype,
    )


def _receptive_field(module) -> Shape:
    return (int(module.in_channels), *(int(k) for k in module.kernel_size))


def _conv_module_affine(layer, input_shape):
    if input_shape is None:
        raise ValueError(
            f"{type(layer).__name__}: pass input_shape=(channels, *spatial) -- the input the "
            f"layer is perturbed on, e.g. one receptive field {_receptive_field(layer)}"
        )
    return conv_affine(effective(layer), layer.bias, tuple(input_shape),
                       _module_geometry(layer), type(layer).__name__)


def _conv_transpose_module_affine(layer, input_shape):
    if input_shape is None:
        raise ValueError(
            f"{type(layer).__name__}: pass input_shape=(channels, *spatial) -- the input the "
            f"layer is perturbed on, e.g. {_receptive_field(layer)}"
        )
    weight = effective(layer).detach()
    shape = tuple(int(s) for s in input_shape)
    n_in = math.prod(shape)
    basis = torch.eye(n_in, dtype=weight.dtype, device=weight.device).view(n_in, *shape)
    nd = len(layer.kernel_size)
    try:
        out = _CONV_T[nd](basis, weight, None, layer.stride, layer.padding, layer.output_padding,
                          layer.groups, layer.dilation)
    except RuntimeError as exc:
        raise ValueError(f"{type(layer).__name__} cannot run on input_shape {shape}: {exc}") \
            from exc
    w = out.reshape(n_in, -1)
    if layer.bias is None:
        b = torch.zeros(w.shape[1], dtype=w.dtype, device=w.device)
    else:
        view = (-1,) + (1,) * (out.dim() - 2)
        b = layer.bias.detach().reshape(view).expand(out.shape[1:]).reshape(-1).clone()
    return w, b, shape


for _t in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_module(_t, graph=_conv_module_graph, dense=conv_create_matrix,
                    affine=_conv_module_affine, input_shape=_receptive_field)
for _t in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register_module(_t, graph=_conv_transpose_module_graph, dense=conv_transpose_create_matrix,
                    affine=_conv_transpose_module_affine, input_shape=_receptive_field)
