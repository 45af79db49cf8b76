"""Benchmark ``foresight.causal`` against deep-ei 0.7.0 (Marrow, Michaud & Hoel's package).

Part 1, the peer. One thread, 64 bins, sigmoid, ranges (0, 1), ``Linear(30, 30)`` at 10^5 samples
and ``Linear(20, 10)`` at 2 * 10^5. For each of EI (joint states), EI_parts and sensitivity:

* deep-ei's ``ei``, ``ei_parts``, ``sensitivity`` with ``samples=N`` and ``batch_size=N`` (its
  fastest setting; its histograms are fast-histogram's C code);
* foresight with its defaults (``method="auto"``): EI sampled with the same N, EI_parts and
  sensitivity exact (sample-free), and foresight's sampled estimator (``method="sampled"``, same N)
  to show that the numbers agree with deep-ei's within the sampling error and that the exact
  value is their infinite-sample limit (deep-ei minus exact = the plug-in bias).

Timings interleave the two packages, ``--repeats`` times each; the ratio is of the medians (the
minima are printed too). The sampling error of the sampled numbers is the standard deviation of
foresight's sampled estimate over ``--seeds`` seeds.

Part 2 (``--reference``): a full ``report`` of the 25-6-6-6-5 sigmoid network against the
straightforward per-pair numpy reference of the test suite (``tests/reference``), same noise.

deep-ei needs networkx < 3 for its ``topology_of``; this benchmark builds the topology graph
itself (``_topology``, a networkx-3 shim kept here, never in the library). Install the peer with
``pip install fast-histogram`` and ``pip install --no-deps deep-ei`` (``make bench`` does).
Run: ``python benchmarks/bench_causal.py [--repeats 5] [--seeds 3] [--reference] [--no-peer]``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

import foresight.causal as fc  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tests.reference import causal_reference as ref  # noqa: E402

BINS = 64
CASES = [((30, 30), 100_000), ((20, 10), 200_000)]
MEASURES = ("ei", "ei_parts", "sensitivity")
WIDTHS = [25, 6, 6, 6, 5]
KEYS = ("ei", "ei_parts", "sensitivity", "degeneracy")


def _topology(layer: nn.Linear, activation: nn.Module):
    """deep-ei's topology graph for one layer, built directly (its ``topology_of`` adds a
    ``None`` node, which networkx 3 refuses)."""
    import networkx as nx

    g = nx.DiGraph()
    g.add_node(layer, input={"activation": None, "shape": (1, layer.in_features)},
               output={"activation": activation, "shape": (1, layer.out_features)})
    return g


def _deep_ei(measure: str, layer: nn.Linear, act: nn.Module, samples: int) -> float:
    import deep_ei

    fn = {"ei": deep_ei.ei, "ei_parts": deep_ei.ei_parts, "sensitivity": deep_ei.sensitivity}
    return float(fn[measure](layer, _topology(layer, act), samples=samples, batch_size=samples,
                             in_range=(0, 1), out_range=(0, 1), in_bins=BINS, out_bins=BINS,
                             activation=act))


def _ours(measure: str, layer: nn.Linear, act: nn.Module, samples: int, seed: int,
          method: str = "auto") -> fc.CausalValue:
    kw = {"activation": act, "bins": BINS, "samples": samples, "seed": seed,
          "out_range": (0, 1), "progress": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # EI of 30 inputs is sample-limited
        if measure == "ei":
            return fc.layer_ei(layer, **kw)
        return getattr(fc, measure)(layer, method=method, **kw)


def _timed(fn):
    t = time.perf_counter()
    value = fn()
    return time.perf_counter() - t, value


def peer(repeats: int, seeds: int) -> None:
    if importlib.util.find_spec("deep_ei") is None or importlib.util.find_spec(
            "fast_histogram") is None:
        print("deep-ei / fast-histogram not installed: pip install fast-histogram; "
              "pip install --no-deps deep-ei")
        return
    print(f"foresight.causal vs deep-ei 0.7.0: {BINS} bins, sigmoid, ranges (0, 1), 1 thread; "
          f"medians of {repeats} interleaved runs (min in brackets)")
    act = nn.Sigmoid()
    for (n_in, n_out), samples in CASES:
        torch.manual_seed(0)
        layer = nn.Linear(n_in, n_out)
        print(f"\nLinear({n_in}, {n_out}), {samples:,} samples")
        print(f"{'measure':<12} {'deep-ei s':>10} {'ours s':>9} {'ratio':>7}   "
              f"{'deep-ei':>9} {'ours':>10} {'method':>8} {'ours sampled':>13} {'+-sd':>7}")
        for measure in MEASURES:
            t_peer, t_ours = [], []
            v_peer = v_ours = None
            for r in range(repeats):
                dt, v_peer = _timed(lambda m=measure, lay=layer, n=samples: _deep_ei(
                    m, lay, act, n))
                t_peer.append(dt)
                dt, v_ours = _timed(lambda m=measure, lay=layer, n=samples, r=r: _ours(
                    m, lay, act, n, r))
                t_ours.append(dt)
            sampled, t_sampled = [], []
            for s in range(seeds):
                dt, v = _timed(lambda m=measure, lay=layer, n=samples, s=s: _ours(
                    m, lay, act, n, 100 + s, "sampled"))
                sampled.append(v.value)
                t_sampled.append(dt)
            mean = statistics.fmean(sampled)
            sd = statistics.stdev(sampled) if len(sampled) > 1 else float("nan")
            ratio = statistics.median(t_peer) / statistics.median(t_ours)
            print(f"{measure:<12} {statistics.median(t_peer):10.3f} "
                  f"{statistics.median(t_ours):9.4f} {ratio:6.1f}x   {v_peer:9.4f} "
                  f"{v_ours.value:10.4f} {v_ours.method:>8} {mean:13.4f} {sd:7.4f}   "
                  f"[min {min(t_peer):.3f} / {min(t_ours):.4f} s: "
                  f"{min(t_peer) / min(t_ours):.1f}x]")
            if measure != "ei":
                print(f"{'':<12} ours sampled ({samples:,} samples like deep-ei): median "
                      f"{statistics.median(t_sampled):.3f} s, "
                      f"{statistics.median(t_peer) / statistics.median(t_sampled):.1f}x deep-ei")
            if v_ours.method == "exact":
                print(f"{'':<12} deep-ei - exact = {v_peer - v_ours.value:+.4f} bits (its plug-in "
                      f"bias); ours sampled - exact = {mean - v_ours.value:+.4f}; deep-ei - ours "
                      f"sampled = {v_peer - mean:+.4f} ({abs(v_peer - mean) / sd:.1f} sd)")
            else:
                spread = (f"{abs(v_peer - mean) / sd:.1f} sd of ours sampled" if sd > 1e-9 else
                          "ours sampled does not vary: every sample its own joint state")
                print(f"{'':<12} deep-ei - ours = {v_peer - v_ours.value:+.4f} bits ({spread}); "
                      f"ours: converged={v_ours.converged}, limited_by={v_ours.limited_by}")


def network(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(WIDTHS[:-1], WIDTHS[1:]):
        layers += [nn.Linear(a, b), nn.Sigmoid()]
    return nn.Sequential(*layers)


def reference_report(model: nn.Sequential, samples: int, seed: int) -> list[dict]:
    rows = []
    for layer in model:
        if isinstance(layer, nn.Linear):
            rows.append(ref.measures(layer, seed=seed, samples=samples, bins=BINS,
                                     in_range=(0.0, 1.0), out_range=(0.0, 1.0),
                                     activation=torch.sigmoid))
    return rows


def reference(repeats: int, samples: int) -> None:
    model = network()
    ours, sampled, theirs = [], [], []
    result = result_s = expected = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(repeats):
            dt, result = _timed(lambda: fc.report(model, samples=samples, seed=0, progress=False))
            ours.append(dt)
            dt, result_s = _timed(lambda: fc.report(model, samples=samples, seed=0,
                                                    method="sampled", progress=False))
            sampled.append(dt)
            dt, expected = _timed(lambda: reference_report(model, samples, seed=0))
            theirs.append(dt)
    diff = max(abs(getattr(row, k) - exp[k]) for row, exp in zip(result_s.layers, expected)
               for k in KEYS)
    print(f"\nforesight.causal.report, 25-6-6-6-5 sigmoid, {BINS} bins, {samples} samples per "
          f"measurement, {repeats} interleaved repeats, 1 thread")
    print(f"{'layer':>6} {'EI':>8} {'EI_parts':>9} {'sens':>8} {'degen':>8}   (exact pairwise)")
    for row in result.layers:
        print(f"{row.name:>6} {row.ei:8.3f} {row.ei_parts:9.3f} {row.sensitivity:8.3f} "
              f"{row.degeneracy:8.3f}")
    med = statistics.median
    print(f"foresight (auto: exact pairwise): median {med(ours):.3f} s, "
          f"{med(theirs) / med(ours):.1f}x the reference")
    print(f"foresight (sampled): median {med(sampled):.3f} s, "
          f"{med(theirs) / med(sampled):.1f}x the reference; largest difference from it "
          f"{diff:.2e} bits")
    print(f"reference (per-pair numpy): median {med(theirs):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reference", action="store_true",
                        help="also compare a report with the per-pair numpy reference")
    parser.add_argument("--samples", type=int, default=100_000,
                        help="samples per measurement of the reference comparison")
    parser.add_argument("--no-peer", action="store_true", help="skip the deep-ei comparison")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.no_peer:
        peer(args.repeats, args.seeds)
    if args.reference:
        reference(max(1, args.repeats // 2), args.samples)


if __name__ == "__main__":
    main()
