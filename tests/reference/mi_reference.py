"""Independent, deliberately plain numpy references for the ``foresight.ib`` estimators.

Nothing here shares code with ``foresight.ib``: symbols via ``np.unique(axis=0)``, bins via
``np.digitize``, KDE sums via a loop over samples, KSG neighbours via a loop with explicit sorting.
All results in bits.
"""

from __future__ import annotations

import math

import numpy as np


def _rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.reshape(a.shape[0], -1)


def plugin_entropy(a: np.ndarray) -> float:
    """Plug-in entropy (bits) of the distinct rows of ``a``."""
    _, counts = np.unique(_rows(a), axis=0, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def plugin_mi(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in mutual information (bits) between the rows of ``a`` and ``b``."""
    a, b = _rows(a), _rows(b)
    joint = np.concatenate([a.astype(np.float64), b.astype(np.float64)], axis=1)
    return plugin_entropy(a) + plugin_entropy(b) - plugin_entropy(joint)


def digitize(t: np.ndarray, bins=None, bin_size=None, range=None) -> np.ndarray:  # noqa: A002
    """Bin indices with ``np.digitize`` on explicit edges (or ``np.floor`` for ``bin_size``)."""
    t = np.asarray(t)
    if bin_size is not None:
        return np.floor(t / np.asarray(bin_size, dtype=t.dtype)).astype(np.int64)
    bins = 30 if bins is None else bins
    lo, hi = range if range is not None else (t.min(), t.max())
    if lo == hi:
        return np.zeros(t.shape, dtype=np.int64)
    edges = np.linspace(lo, hi, bins + 1)
    return np.digitize(t, edges[1:-1]).astype(np.int64)


def binned_mi(x: np.ndarray, y: np.ndarray, **options) -> float:
    """Binning estimate: float arrays are digitised, integer arrays kept as symbols."""
    xs = digitize(x, **options) if np.issubdtype(np.asarray(x).dtype, np.floating) else x
    ys = digitize(y, **options) if np.issubdtype(np.asarray(y).dtype, np.floating) else y
    return plugin_mi(xs, ys)


def kde_mi_loop(t: np.ndarray, labels: np.ndarray, noise_var: float, bound: str) -> float:
    """Kolchinsky-Tracey pairwise bound on I(S;T), one sample at a time (bits)."""
    t = _rows(t).astype(np.float64)
    labels = np.asarray(labels).reshape(-1)
    c = (2.0 if bound == "upper" else 8.0) * noise_var
    n = t.shape[0]
    total = 0.0
    for i in range(n):
        d = ((t - t[i]) ** 2).sum(axis=1)
        same = labels == labels[i]
        log_all = np.log(np.mean(np.exp(-d / c)))
        log_same = np.log(np.mean(np.exp(-d[same] / c)))
        total += log_same - log_all
    return total / n / math.log(2)


def kde_entropy_loop(t: np.ndarray, noise_var: float, bound: str) -> float:
    """Pairwise bound on the differential entropy (bits) of ``t`` plus Gaussian noise."""
    t = _rows(t).astype(np.float64)
    n, d = t.shape
    c = (2.0 if bound == "upper" else 8.0) * noise_var
    acc = 0.0
    for i in range(n):
        acc += np.log(np.mean(np.exp(-((t - t[i]) ** 2).sum(axis=1) / c)))
    h = 0.5 * d * math.log(2 * math.pi * math.e * noise_var) - acc / n
    return h / math.log(2)


def _digamma(n: float) -> float:
    from scipy.special import digamma

    return float(digamma(n))


def ksg_brute(x: np.ndarray, y: np.ndarray, k: int = 3) -> float:
    """KSG algorithm 1 by brute force (bits): sort every sample's joint max-norm distances."""
    x, y = _rows(x).astype(np.float64), _rows(y).astype(np.float64)
    n = x.shape[0]
    acc = 0.0
    for i in range(n):
        dx = np.abs(x - x[i]).max(axis=1)
        dy = np.abs(y - y[i]).max(axis=1)
        dz = np.maximum(dx, dy)
        others = np.arange(n) != i
        eps = np.sort(dz[others])[k - 1]
        nx = int((dx[others] < eps).sum())
        ny = int((dy[others] < eps).sum())
        acc += _digamma(nx + 1) + _digamma(ny + 1)
    return (_digamma(k) + _digamma(n) - acc / n) / math.log(2)
