"""Benchmark ``foresight.causal.report`` against a straightforward per-pair numpy reference.

Prints, in one run: the time of a full report (EI, EI_parts, sensitivity, degeneracy of every
layer) of the 25-6-6-6-5 sigmoid network of Mattsson/Marrow et al. (2020), 64 bins, 10^5 samples
per measurement, and of the reference (``tests/reference/causal_reference.py``: a Python loop
over (input, output) pairs with one ``np.histogram2d`` each, joint states by
``np.unique(axis=0)``), on the same noise; the ratio of the minima over interleaved repeats (least
disturbed by other processes on a shared machine) and of the medians; the largest difference
between the two (bits).

Both sides run single-threaded (``torch.set_num_threads(1)``; numpy is single-threaded here).
Run: ``python benchmarks/bench_causal.py [--repeats 3] [--samples 100000]``.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import torch
from torch import nn

import foresight.causal as fc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tests.reference import causal_reference as ref  # noqa: E402

WIDTHS = [25, 6, 6, 6, 5]
KEYS = ("ei", "ei_parts", "sensitivity", "degeneracy")


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
            rows.append(ref.measures(layer, seed=seed, samples=samples, bins=64,
                                     in_range=(0.0, 1.0), out_range=(0.0, 1.0),
                                     activation=torch.sigmoid))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=100_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = network()
    ours, theirs = [], []
    result = expected = None
    for _ in range(args.repeats):
        t = time.perf_counter()
        result = fc.report(model, samples=args.samples, seed=0)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        expected = reference_report(model, args.samples, seed=0)
        theirs.append(time.perf_counter() - t)
    assert result is not None and expected is not None
    diff = max(abs(getattr(row, k) - exp[k]) for row, exp in zip(result.layers, expected)
               for k in KEYS)
    print(f"foresight.causal.report, 25-6-6-6-5 sigmoid, 64 bins, {args.samples} samples per "
          f"measurement, {args.repeats} interleaved repeats, 1 thread")
    print(f"{'layer':>6} {'EI':>8} {'EI_parts':>9} {'sens':>8} {'degen':>8}")
    for row in result.layers:
        print(f"{row.name:>6} {row.ei:8.3f} {row.ei_parts:9.3f} {row.sensitivity:8.3f} "
              f"{row.degeneracy:8.3f}")
    print(f"foresight: min {min(ours):.3f} s, median {statistics.median(ours):.3f} s")
    print(f"reference (per-pair numpy): min {min(theirs):.3f} s, "
          f"median {statistics.median(theirs):.3f} s")
    print(f"speed-up: {min(theirs) / min(ours):.1f}x (minima), "
          f"{statistics.median(theirs) / statistics.median(ours):.1f}x (medians); target >= 20x")
    print(f"largest difference from the reference: {diff:.2e} bits")


if __name__ == "__main__":
    main()
