"""A deliberately plain numpy reference for :mod:`foresight.causal` (per-pair loops).

Written independently of the library: outputs from the layer's weight matrix in float64 numpy,
bins via ``np.histogram2d`` (values first clipped into the range, the library's convention), the
plug-in MI of each pair from its contingency table by the definition
:math:`\\sum p_{xy} \\log_2 p_{xy} / (p_x p_y)`, joint states via ``np.unique(axis=0)``.

Only the noise is drawn with torch, in the library's documented protocol, so both see the same
samples: blocks of at most 65536 rows of ``torch.rand((rows, n_in), generator, dtype)`` from
``torch.Generator().manual_seed(seed)``, scaled to ``in_range``.
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK = 1 << 16


def draw(seed: int, samples: int, n_in: int, in_range, dtype=torch.float64) -> np.ndarray:
    """The library's noise for ``(seed, samples)``: ``[samples, n_in]`` float64."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = in_range
    parts, left = [], samples
    while left > 0:
        m = min(left, BLOCK)
        u = torch.rand((m, n_in), generator=gen, dtype=dtype)
        parts.append((lo + (hi - lo) * u).double().numpy())
        left -= m
    return np.concatenate(parts)


def weights(layer: torch.nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    """``(W [n_out, n_in], b [n_out])`` of a Linear layer, float64."""
    w = layer.weight.detach().double().numpy()
    b = (np.zeros(w.shape[0]) if layer.bias is None else layer.bias.detach().double().numpy())
    return w, b


def _digitize(v: np.ndarray, rng, bins: int) -> np.ndarray:
    lo, hi = rng
    edges = np.linspace(lo, hi, bins + 1)
    idx = np.searchsorted(edges, np.clip(v, lo, hi), side="right") - 1
    return np.clip(idx, 0, bins - 1)


def mi_pair(x: np.ndarray, y: np.ndarray, in_range, out_range, bins: int) -> float:
    """Plug-in MI (bits) of two samples binned over their ranges (clipped)."""
    x = np.clip(x, *in_range)
    y = np.clip(y, *out_range)
    table, _, _ = np.histogram2d(x, y, bins=bins, range=[list(in_range), list(out_range)])
    p = table / table.sum()
    px = p.sum(axis=1, keepdims=True)
    py = p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float(max(0.0, (p[nz] * np.log2(p[nz] / (px @ py)[nz])).sum()))


def mi_joint(x: np.ndarray, y: np.ndarray, in_range, out_range, bins: int) -> float:
    """Plug-in MI (bits) of the joint binned rows of ``x`` and ``y``."""
    xs = _digitize(x, in_range, bins)
    ys = _digitize(y, out_range, bins)
    _, a = np.unique(xs, axis=0, return_inverse=True)
    _, b = np.unique(ys, axis=0, return_inverse=True)
    a, b = a.ravel(), b.ravel()
    n = len(a)
    total = 0.0
    joint = {}
    for i, j in zip(a.tolist(), b.tolist()):
        joint[(i, j)] = joint.get((i, j), 0) + 1
    ca = np.bincount(a)
    cb = np.bincount(b)
    for (i, j), c in joint.items():
        total += c / n * np.log2(c * n / (ca[i] * cb[j]))
    return float(max(0.0, total))


def _act(activation, v: np.ndarray) -> np.ndarray:
    if activation is None:
        return v
    return activation(torch.from_numpy(v)).double().numpy()


def measures(layer, *, seed, samples, bins, in_range, out_range, activation=None) -> dict:
    """EI, EI_parts, sensitivity, degeneracy of a Linear ``layer`` by per-pair loops."""
    w, b = weights(layer)
    n_out, n_in = w.shape
    x = draw(seed, samples, n_in, in_range, layer.weight.dtype)
    y = _act(activation, x @ w.T + b)
    ei = mi_joint(x, y, in_range, out_range, bins)
    parts = 0.0
    for a in range(n_in):
        for j in range(n_out):
            parts += mi_pair(x[:, a], y[:, j], in_range, out_range, bins)
    sens = 0.0
    for a in range(n_in):
        single = np.zeros_like(x)
        single[:, a] = x[:, a]
        ys = _act(activation, single @ w.T + b)
        for j in range(n_out):
            sens += mi_pair(x[:, a], ys[:, j], in_range, out_range, bins)
    return {"ei": ei, "ei_parts": parts, "sensitivity": sens, "degeneracy": sens - parts}
