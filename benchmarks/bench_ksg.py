"""Benchmark the KSG estimator (``mutual_information(method="ksg")``) at N = 2e3 ... 1e5.

Two comparisons, one thread, k = 3, correlated Gaussians (rho = 0.6 per coordinate):

* one-dimensional x and y: foresight against scikit-learn's Kraskov estimator
  ``mutual_info_regression(x, y, n_neighbors=3)`` (the public call, which also rescales and
  jitters its input) -- and, for the value, scikit-learn's own counting routine on exactly our
  data (``_compute_mi_cc``, private; skipped if it moved);
* d = 4 (d_x = d_y = 2): foresight against an independent reference written here from the
  algorithm with scipy's ``cKDTree``: the k-th neighbour distance in the joint space, then the
  number of points strictly closer in each marginal (``query_ball_point`` just below it).

foresight's brute-force torch path (the one GPU tensors take) is timed up to N = 10^4. Timings
interleave the contenders, ``--repeats`` times each, and the ratio is of the medians (minima in
brackets). Run: ``python benchmarks/bench_ksg.py [--repeats 5] [--sizes 2000 10000 100000]``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from foresight.ib import mutual_information  # noqa: E402

RHO = 0.6


def ckdtree_reference(x: np.ndarray, y: np.ndarray, k: int = 3) -> float:
    """KSG algorithm 1 (bits), written directly on scipy's cKDTree."""
    from scipy.spatial import cKDTree
    from scipy.special import digamma

    z = np.hstack([x, y])
    eps = cKDTree(z).query(z, k=k + 1, p=np.inf)[0][:, -1]
    r = np.nextafter(eps, 0)
    nx = cKDTree(x).query_ball_point(x, r, p=np.inf, return_length=True) - 1
    ny = cKDTree(y).query_ball_point(y, r, p=np.inf, return_length=True) - 1
    n = len(x)
    return float((digamma(k) + digamma(n) - np.mean(digamma(nx + 1) + digamma(ny + 1)))
                 / math.log(2))


def data(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = RHO * x + math.sqrt(1 - RHO**2) * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, y


def timed(contenders: dict, repeats: int) -> tuple[dict, dict]:
    times: dict[str, list[float]] = {name: [] for name in contenders}
    values: dict[str, float] = {}
    for _ in range(repeats):
        for name, fn in contenders.items():
            t = time.perf_counter()
            values[name] = fn()
            times[name].append(time.perf_counter() - t)
    return times, values


def line(label: str, times: dict, base: str) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}
    parts = [f"{k} {med[k] * 1e3:9.1f} ms" for k in times]
    ratios = [f"{k}/{base} {med[k] / med[base]:.2f}x [min {min(times[k]) / min(times[base]):.2f}x]"
              for k in times if k != base]
    print(f"{label:<22} " + "   ".join(parts) + "   " + "  ".join(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10_000, 100_000])
    args = parser.parse_args()
    torch.set_num_threads(1)
    from sklearn.feature_selection import mutual_info_regression

    try:
        from sklearn.feature_selection._mutual_info import _compute_mi_cc
    except ImportError:  # private: may move
        _compute_mi_cc = None
    print(f"KSG, k = 3, rho = {RHO}, one thread; medians of {args.repeats} interleaved runs; "
          "ratio > 1: foresight is faster")
    for n in args.sizes:
        x, y = data(n, 1)
        xn, yn = x.numpy(), y.numpy()
        contenders = {
            "foresight": lambda x=x, y=y: mutual_information(x, y, method="ksg", k=3),
            "sklearn": lambda xn=xn, yn=yn: float(mutual_info_regression(
                xn, yn[:, 0], n_neighbors=3, random_state=0)[0]) / math.log(2),
        }
        if n <= 10_000:
            contenders["brute"] = lambda x=x, y=y: mutual_information(
                x, y, method="ksg", k=3, algorithm="brute", progress=False)
        times, values = timed(contenders, args.repeats)
        line(f"1-D, N = {n:,}", times, "foresight")
        same = ""
        if _compute_mi_cc is not None:
            theirs = float(_compute_mi_cc(xn[:, 0], yn[:, 0], 3)) / math.log(2)
            same = f"; sklearn's counting on the same data {theirs:.6f} " \
                   f"(|diff| {abs(theirs - values['foresight']):.1e})"
        truth = -0.5 * math.log2(1 - RHO**2)
        print(f"{'':<22} foresight {values['foresight']:.6f} bits, sklearn (rescaled, jittered) "
              f"{values['sklearn']:.6f}{same}; true {truth:.6f}")
    for n in args.sizes:
        x, y = data(n, 2)
        xn, yn = x.numpy(), y.numpy()
        contenders = {
            "foresight": lambda x=x, y=y: mutual_information(x, y, method="ksg", k=3),
            "cKDTree ref": lambda xn=xn, yn=yn: ckdtree_reference(xn, yn, 3),
        }
        if n <= 10_000:
            contenders["brute"] = lambda x=x, y=y: mutual_information(
                x, y, method="ksg", k=3, algorithm="brute", progress=False)
        times, values = timed(contenders, args.repeats)
        line(f"d = 4, N = {n:,}", times, "foresight")
        print(f"{'':<22} foresight {values['foresight']:.9f}, reference "
              f"{values['cKDTree ref']:.9f} bits (|diff| "
              f"{abs(values['foresight'] - values['cKDTree ref']):.1e}); true "
              f"{-math.log2(1 - RHO**2):.6f}")


if __name__ == "__main__":
    main()
