"""Benchmark ``foresight.ib`` against straightforward numpy/scikit-learn references.

Prints, in one run (ratios measured in this run, interleaved; the minimum of repeats, which is
least disturbed by other processes on a shared machine, and the ratio of medians):

1. the information plane of the 12-10-7-5-4-3-2 tanh network on the 4096 12-bit patterns with
   binning (30 bins on [-1, 1]) -- reference: ``np.digitize`` + ``np.unique(axis=0)`` per layer;
2. the same with the KDE upper bound (noise_var 0.1) -- reference: a loop over samples ``i`` with
   the distances to all ``j`` vectorised, H(T) and each H(T|Y=y) computed separately;
3. a KSG estimate (k=3) on N=10,000 with d_x = d_y = 5 (joint d = 10) -- reference: scikit-learn
   ``NearestNeighbors``/``KDTree`` with the Chebyshev metric (as ``mutual_info_regression`` does);
   ``benchmarks/bench_ksg.py`` has the N = 2e3 ... 1e5 comparisons in one and four dimensions;
4. peak memory (ru_maxrss growth in a fresh subprocess) of KDE and KSG for two N.

Both sides run single-threaded (``torch.set_num_threads(1)``; numpy is single-threaded here),
because the benchmark machine is shared. Run: ``python benchmarks/bench_ib.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn

from foresight.ib import information_plane, mutual_information

WIDTHS = [12, 10, 7, 5, 4, 3, 2]


def tishby_data() -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from foresight.data import tishby_patterns

        x, y = tishby_patterns(seed=0)
        return x.float(), y.long(), "foresight.data.tishby_patterns"
    except ImportError:  # the data helper may not be installed yet: all 2**12 patterns
        bits = (torch.arange(4096).unsqueeze(1) >> torch.arange(12)) & 1
        y = (bits.sum(1) % 2).long()
        return bits.float(), y, "all 2**12 patterns, parity labels (fallback)"


def tishby_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for a, b in zip(WIDTHS[:-1], WIDTHS[1:]):
        mods += [nn.Linear(a, b), nn.Tanh()]
    mods[-1] = nn.Softmax(dim=1)
    return nn.Sequential(*mods)


def activations(net: nn.Sequential, x: torch.Tensor) -> list[np.ndarray]:
    """The reference's forward pass: each activation module's output, as numpy arrays."""
    out, h = [], x
    with torch.no_grad():
        for m in net:
            h = m(h)
            if not isinstance(m, nn.Linear):
                out.append(h.numpy().astype(np.float64))
    return out


def np_entropy_rows(a: np.ndarray) -> float:
    _, counts = np.unique(a, axis=0, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def ref_binning_plane(net: nn.Sequential, x: torch.Tensor, y: np.ndarray) -> list[tuple]:
    edges = np.linspace(-1.0, 1.0, 31)[1:-1]
    h_y = np_entropy_rows(y[:, None])
    result = []
    for t in activations(net, x):
        d = np.digitize(t, edges)
        h_t = np_entropy_rows(d)
        h_ty = np_entropy_rows(np.column_stack([d, y]))
        result.append((h_t, h_t + h_y - h_ty))
    return result


def ref_kde_entropy(t: np.ndarray, noise_var: float) -> float:
    n, dim = t.shape
    acc = 0.0
    for i in range(n):
        d = ((t - t[i]) ** 2).sum(axis=1)
        acc += np.log(np.mean(np.exp(-d / (2 * noise_var))))
    return (0.5 * dim * math.log(2 * math.pi * math.e * noise_var) - acc / n) / math.log(2)


def ref_kde_plane(net: nn.Sequential, x: torch.Tensor, y: np.ndarray, noise_var: float):
    result = []
    classes, counts = np.unique(y, return_counts=True)
    for t in activations(net, x):
        h_t = ref_kde_entropy(t, noise_var)
        h_t_given_x = 0.5 * t.shape[1] * math.log2(2 * math.pi * math.e * noise_var)
        h_t_given_y = sum(
            c / len(y) * ref_kde_entropy(t[y == k], noise_var) for k, c in zip(classes, counts)
        )
        result.append((h_t - h_t_given_x, h_t - h_t_given_y))
    return result


def ref_ksg(x: np.ndarray, y: np.ndarray, k: int = 3) -> float:
    from scipy.special import digamma
    from sklearn.neighbors import KDTree, NearestNeighbors

    xy = np.hstack([x, y])
    nn_ = NearestNeighbors(metric="chebyshev", n_neighbors=k).fit(xy)
    radius = nn_.kneighbors()[0][:, -1]
    radius = np.nextafter(radius, 0)
    nx = KDTree(x, metric="chebyshev").query_radius(x, radius, count_only=True) - 1
    ny = KDTree(y, metric="chebyshev").query_radius(y, radius, count_only=True) - 1
    n = len(x)
    est = digamma(k) + digamma(n) - np.mean(digamma(nx + 1) + digamma(ny + 1))
    return float(est / math.log(2))


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, value = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return times, value


def compare(name: str, ours, ref, repeats_ours: int, repeats_ref: int) -> tuple[float, ...]:
    """Interleave ours and the reference; return (median ours, median ref, ratio, values)."""
    t_ours: list[float] = []
    t_ref: list[float] = []
    v_ours = v_ref = None
    for r in range(max(repeats_ours, repeats_ref)):
        if r < repeats_ref:
            ts, v_ref = timed(ref, 1)
            t_ref += ts
        if r < repeats_ours:
            ts, v_ours = timed(ours, 1)
            t_ours += ts
    m_ours, m_ref = min(t_ours), min(t_ref)
    med = statistics.median(t_ref) / statistics.median(t_ours)
    print(
        f"{name:<34} ours {m_ours * 1e3:9.1f} ms   reference {m_ref * 1e3:9.1f} ms   "
        f"speed-up {m_ref / m_ours:6.1f}x   (min of {len(t_ours)} / {len(t_ref)} runs; "
        f"ratio of medians {med:.1f}x)"
    )
    return m_ours, m_ref, m_ref / m_ours, v_ours, v_ref


def memory_child(kind: str, n: int) -> None:
    """Run in a subprocess: print the ru_maxrss growth (MiB) of one estimate on N samples."""
    import resource

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    if kind == "kde":
        a, b = torch.randint(0, 10, (n,), generator=g), torch.randn(n, 4, generator=g)
        opts = {"method": "kde", "noise_var": 0.1}
    else:
        a, b = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)
        opts = {"method": "ksg", "k": 3}
    mutual_information(a[:64], b[:64], **opts)  # warm up allocators and kernels
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    mutual_information(a, b, **opts)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mib": (after - before) / 1024, "seconds": seconds}))


def memory_report(kind: str, sizes: list[int]) -> None:
    for n in sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", kind, str(n)],
            capture_output=True,
            text=True,
            check=True,
        )
        res = json.loads(out.stdout.strip().splitlines()[-1])
        dense = n * n * 8 / 2**20
        print(
            f"  {kind:<4} N={n:>6}: peak RSS growth {res['mib']:7.1f} MiB "
            f"in {res['seconds']:5.1f} s"
            f"   (a dense N x N float64 matrix would be {dense:9.0f} MiB)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller KSG/memory")
    parser.add_argument("--memory-child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return
    torch.set_num_threads(1)
    x, y, source = tishby_data()
    y_np = y.numpy()
    net = tishby_net()
    print(f"data: {source}; N = {len(x)}; network 12-10-7-5-4-3-2 tanh (random init)")
    print(f"torch {torch.__version__}, numpy {np.__version__}, threads: 1 (both sides)\n")

    rep = 3 if args.quick else 7
    _, _, r_bin, ours, ref = compare(
        "information plane, binning 30 bins",
        lambda: information_plane(net, x, y, bins=30, range=(-1.0, 1.0)),
        lambda: ref_binning_plane(net, x, y_np),
        rep,
        rep,
    )
    diff = max(
        max(abs(la.i_xt - a), abs(la.i_ty - b)) for la, (a, b) in zip(ours.layers, ref)
    )
    print(f"  max |ours - reference| over layers: {diff:.2e} bits")

    _, _, r_kde, ours, ref = compare(
        "information plane, KDE upper 0.1",
        lambda: information_plane(net, x, y, method="kde", noise_var=0.1),
        lambda: ref_kde_plane(net, x, y_np, 0.1),
        3 if args.quick else 5,
        1 if args.quick else 3,
    )
    diff = max(
        max(abs(la.i_xt - a), abs(la.i_ty - b)) for la, (a, b) in zip(ours.layers, ref)
    )
    print(f"  max |ours - reference| over layers: {diff:.2e} bits")

    n_ksg = 3000 if args.quick else 10_000
    g = torch.Generator().manual_seed(0)
    rho = 0.6
    xk = torch.randn(n_ksg, 5, generator=g, dtype=torch.float64)
    yk = rho * xk + math.sqrt(1 - rho**2) * torch.randn(n_ksg, 5, generator=g, dtype=torch.float64)
    _, _, r_ksg, ours_v, ref_v = compare(
        f"KSG k=3, N={n_ksg}, d_x=d_y=5",
        lambda: mutual_information(xk, yk, method="ksg", k=3),
        lambda: ref_ksg(xk.numpy(), yk.numpy(), 3),
        1 if args.quick else 3,
        1 if args.quick else 3,
    )
    truth = -5 * 0.5 * math.log2(1 - rho**2)
    print(f"  estimates: ours {ours_v:.4f}, reference {ref_v:.4f}, true value {truth:.4f} bits")

    print("\npeak memory as N grows (fresh subprocess each, chunked N x N work):")
    memory_report("kde", [2000, 8000] if args.quick else [5000, 40_000])
    memory_report("ksg", [2000, 8000] if args.quick else [5000, 20_000])

    print(
        f"\nsummary: binning {r_bin:.1f}x (target >= 20x), KDE {r_kde:.1f}x (target >= 10x), "
        f"KSG {r_ksg:.1f}x vs scikit-learn"
    )


if __name__ == "__main__":
    main()
