r"""Per-layer sufficient statistics of EI, matrix-free for the built-in norms.

For each layer we need only (i) the sum of the row entropies :math:`\sum_i H(P_i)` and (ii) the
column masses :math:`c_j = \sum_i P_{ij}`, reduced to the four numbers that the degeneracy of any
set of layers needs. With :math:`r = \text{relu}(W)`, :math:`s_i = \sum_j r_{ij}` and
:math:`t_i = \sum_j r_{ij}\log_2 r_{ij}`, the lin_norm row entropy is

.. math::
    H(P_i) = \log_2 s_i - t_i / s_i,

and :math:`c_j = \sum_i r_{ij}/s_i`. soft_norm and sig_norm use the same identity with
:math:`e^{W}` and :math:`\sigma(W)`: unconnected outputs enter the dense row with weight 0, so
writing :math:`g(w) = e^w - 1` (resp. :math:`\sigma(w) - 1/2`), which vanishes there, the row
normaliser is :math:`Z_i = n_{out} + \sum_j g(W_{ij})` (resp. :math:`n_{out}/2 + \dots`) without
counting the unconnected outputs. All sums :math:`\sum_j f(W_{ij})` and :math:`\sum_i u_i f(W_{ij})`
come from the layer's :class:`~foresight.layers.graphs.Connectivity` (a few convolutions).
Compute is float32 (float64 for float64 weights) with float64 accumulation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from foresight.ei.layers import EILayer
from foresight.ei.norms import H, lin_norm, sig_norm, soft_norm
from foresight.layers.graphs import Connectivity

__all__ = ["LayerStats", "layer_stats", "DEFAULT_MAX_DENSE_BYTES"]

#: Largest dense connectivity matrix (bytes) built for a custom norm or a non-matrix-free layer.
DEFAULT_MAX_DENSE_BYTES = 1 << 30

_LN2 = math.log(2.0)


@dataclass
class LayerStats:
    """What one layer contributes to determinism and degeneracy (float64 sums)."""

    n_in: int
    n_out: int
    entropy_sum: float  # sum over input neurons of the row entropy (bits)
    pos_mass: float  # sum of positive column masses
    pos_xlogx: float  # sum of c log2 c over positive column masses
    neg_mass: float  # sum of |c| over negative column masses (only with norm=None)
    neg_xlogx: float  # sum of |c| log2 |c| over negative column masses

    @property
    def determinism(self) -> float:
        return self.entropy_sum / self.n_in if self.n_in else 0.0

    @property
    def degeneracy(self) -> float:
        return degeneracy_of([self])


def degeneracy_of(stats: list[LayerStats]) -> float:
    r"""Entropy of the concatenated column masses divided by their total, like the 2020 code
    (terms with :math:`p \le 0` count 0)."""
    pm = sum(s.pos_mass for s in stats)
    px = sum(s.pos_xlogx for s in stats)
    nm = sum(s.neg_mass for s in stats)
    nx = sum(s.neg_xlogx for s in stats)
    total = pm - nm
    if total > 0:
        return -(px - pm * math.log2(total)) / total
    if total < 0:
        return -(nx - nm * math.log2(-total)) / -total
    return 0.0 if pm == 0 and nm == 0 else math.nan


def _xlnx(x: Tensor) -> Tensor:
    r""":math:`x \ln x` where :math:`x > 0`, else 0 (logs of clamped values: no slow -inf path)."""
    out = x.clamp_min(torch.finfo(x.dtype).tiny)
    out.log_()
    return out.mul_(x.clamp_min(0))


def _sum64(x: Tensor) -> float:
    """Sum with float64 accumulation: float32 partial sums of 1024 entries, then float64."""
    x = x.reshape(-1)
    if x.dtype == torch.float64 or x.numel() <= 1 << 16:
        return float(x.sum(dtype=torch.float64))
    head = x.numel() // 1024 * 1024
    partial = x[:head].view(-1, 1024).sum(1)
    return float(partial.sum(dtype=torch.float64) + x[head:].sum(dtype=torch.float64))


def _column_stats(c: Tensor, signed: bool) -> tuple[float, float, float, float]:
    r"""Masses and :math:`\sum c \log_2 c` of the positive (and, if signed, negative) columns."""
    if not signed:  # built-in norms: only rounding can make a column mass negative
        pos = c.clamp_min(0)
        xlnx = pos.clamp_min(torch.finfo(pos.dtype).tiny).log_().mul_(pos)
        return _sum64(pos), _sum64(xlnx) / _LN2, 0.0, 0.0
    pm, px = _sum64(c.clamp_min(0)), _sum64(_xlnx(c)) / _LN2
    neg = -c
    return pm, px, _sum64(neg.clamp_min(0)), _sum64(_xlnx(neg)) / _LN2


def _stats(
    n_in: int, n_out: int, entropy_sum: Tensor | float, c: Tensor, signed: bool = False
) -> LayerStats:
    pm, px, nm, nx = _column_stats(c, signed)
    return LayerStats(n_in, n_out, float(entropy_sum), pm, px, nm, nx)


def _rows(conn: Connectivity, fns: list) -> tuple[list[Tensor], Tensor | None, Callable]:
    """Row sums, compact (one entry per distinct row pattern, with counts) when the layer can."""
    compact = getattr(conn, "rows_compact", None)
    if compact is not None:
        return compact(fns)
    return conn.rows(fns), None, _flat


def _flat(x: Tensor) -> Tensor:
    return x.reshape(-1)


def _wsum(x: Tensor, counts: Tensor | None) -> float:
    """float64 sum of ``x`` over all input neurons (``counts`` per compact entry)."""
    return _sum64(x if counts is None else x * counts)


def _lin(conn: Connectivity) -> LayerStats:
    # s_i = sum_j r_ij and t_i = sum_j r_ij ln r_ij (nats) with r = relu(W)
    (s, t), counts, expand = _rows(conn, [F.relu, _xlnx])
    s1 = s.clamp_min(torch.finfo(s.dtype).tiny)
    u = s1.reciprocal()  # rows with s_i = 0 have r_ij = 0, so u_i does not matter there
    h = torch.log2(s1).sub_(t * u, alpha=1 / _LN2)  # H_i = log2 s_i - t_i / (s_i ln 2)
    h = torch.where(s > 0, h, 0.0)
    c = conn.cols(F.relu, expand(u))
    return _stats(conn.n_in, conn.n_out, _wsum(h, counts), c)


def _none(conn: Connectivity) -> LayerStats:
    (t,), counts, _ = _rows(conn, [_xlnx])
    ones = torch.ones(conn.n_in, dtype=t.dtype, device=t.device)
    c = conn.cols(_identity, ones)
    return _stats(conn.n_in, conn.n_out, -_wsum(t, counts) / _LN2, c, signed=True)


def _identity(w: Tensor) -> Tensor:
    return w


def _soft_g(w: Tensor) -> Tensor:
    return torch.expm1(w)


def _soft_t(w: Tensor) -> Tensor:
    return w * torch.exp(w) / _LN2


def _soft(conn: Connectivity) -> LayerStats:
    (g, t), counts, expand = _rows(conn, [_soft_g, _soft_t])
    z = g.to(torch.float64) + conn.n_out
    h = torch.log2(z) - t.to(torch.float64) / z
    inv = 1.0 / z
    c = _wsum(inv, counts) + conn.cols(_soft_g, expand(inv.to(g.dtype))).to(torch.float64)
    return _stats(conn.n_in, conn.n_out, _wsum(h, counts), c)


def _sig_g(w: Tensor) -> Tensor:
    return torch.sigmoid(w) - 0.5


def _sig_t(w: Tensor) -> Tensor:
    s = torch.sigmoid(w)
    return s * torch.log2(s) + 0.5


def _sig(conn: Connectivity) -> LayerStats:
    (g, t), counts, expand = _rows(conn, [_sig_g, _sig_t])
    z = g.to(torch.float64) + conn.n_out / 2
    tt = t.to(torch.float64) - conn.n_out / 2
    h = torch.log2(z) - tt / z
    inv = 1.0 / z
    c = 0.5 * _wsum(inv, counts) + conn.cols(_sig_g, expand(inv.to(g.dtype))).to(torch.float64)
    return _stats(conn.n_in, conn.n_out, _wsum(h, counts), c)


def _matrix_free_for(norm: Callable | None) -> Callable[[Connectivity], LayerStats] | None:
    if norm is None:
        return _none
    if norm is lin_norm:
        return _lin
    if norm is soft_norm:
        return _soft
    if norm is sig_norm:
        return _sig
    return None


def _dense(
    layer: EILayer, norm: Callable | None, max_bytes: int, why: str
) -> LayerStats:
    n_in, n_out = layer.n_in, layer.n_out
    need = n_in * n_out * 8
    if need > max_bytes:
        raise ValueError(
            f"layer {layer.name!r} ({layer.type}): {why}, and its dense {n_in} x {n_out} "
            f"connectivity matrix needs about {need / 2**30:.2f} GiB, more than max_dense_bytes="
            f"{max_bytes}. Use a built-in norm (lin_norm, soft_norm, sig_norm or None), which is "
            "computed without the matrix, or raise max_dense_bytes."
        )
    if layer.dense is None:
        raise ValueError(f"layer {layer.name!r} ({layer.type}) has no dense builder: {why}")
    W = layer.dense().to(layer.device)
    if W.dtype not in (torch.float32, torch.float64):
        W = W.float()
    P = norm(W) if norm is not None else W
    return _stats(P.shape[0], P.shape[1], H(P, dim=1).sum(dtype=torch.float64), P.sum(0), True)


def layer_stats(
    layer: EILayer, norm: Callable | None, max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES
) -> LayerStats:
    """Row-entropy sum and column-mass statistics of one layer under ``norm``.

    Non-finite weights make some statistic non-finite; only then are the parameters checked, so
    that the error names the layer and parameter at no cost in the common case.
    """
    if layer.n_in == 0 or layer.n_out == 0:
        # no connections: its inputs (if any) have empty out-weight rows -- entropy 0, counted in
        # the determinism's average like any input without out-weights -- and no column mass
        return LayerStats(layer.n_in, layer.n_out, 0.0, 0.0, 0.0, 0.0, 0.0)
    compute = _matrix_free_for(norm)
    if compute is not None and layer.graph is not None:
        stats = compute(layer.graph)
    else:
        why = layer.why if layer.graph is None else "a custom norm needs the dense matrix"
        stats = _dense(layer, norm, max_dense_bytes, why)
    values = (stats.entropy_sum, stats.pos_mass, stats.pos_xlogx, stats.neg_mass, stats.neg_xlogx)
    if not all(math.isfinite(v) for v in values):
        for pname, p in layer.tensors():
            if p.is_floating_point() and not bool(torch.isfinite(p.detach()).all()):
                raise ValueError(
                    f"layer {layer.name!r} ({layer.type}) has non-finite values (NaN or "
                    f"inf) in its parameter {pname!r}; EI is undefined"
                )
        raise ValueError(
            f"layer {layer.name!r} ({layer.type}): the norm overflowed (weights too large "
            "for soft_norm/sig_norm in this precision?); try float64 weights or lin_norm"
        )
    return stats
