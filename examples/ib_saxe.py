"""Saxe et al. (2018): with ReLU units the same network shows no compression.

The network, data and training of ``ib_shwartz_ziv_tishby.py`` with ReLU hidden units instead of
tanh. The information plane is estimated two ways on all 4096 patterns: binning with bin size
0.07 (unbounded bins, ``floor(t / 0.07)``, safe for ReLU) and the Kolchinsky-Tracey KDE upper
bound with noise variance 0.1. Neither shows the compression phase the tanh network has: I(X;T)
of the hidden layers rises and stays, because ReLU units do not saturate.

Differences from the paper: 1000 epochs at learning rate 0.004, 2 seeds, generated labels (see
``ib_shwartz_ziv_tishby.py``); measured every epoch up to 10, then 5 times per decade (the KDE
bound costs O(N^2) per layer and measurement).

Run: ``python examples/ib_saxe.py [--quick]`` -- writes ``docs/figures/ib_saxe_relu_binning.png``
and ``docs/figures/ib_saxe_relu_kde.png`` and prints each layer's compression.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ib_shwartz_ziv_tishby import FIGURES, print_phases, save_figure, train_and_track  # noqa: E402

BINNING = "ReLU, binning (bin size 0.07)"
KDE = "ReLU, KDE upper bound (noise variance 0.1)"
ESTIMATORS = {
    BINNING: {"bin_size": 0.07},
    KDE: {"method": "kde", "noise_var": 0.1, "bound": "upper"},
}
FILES = {BINNING: "ib_saxe_relu_binning.png", KDE: "ib_saxe_relu_kde.png"}


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 300 epochs")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--no-figure", action="store_true")
    args = parser.parse_args(argv)
    seeds = list(range(args.seeds or (1 if args.quick else 2)))
    epochs = args.epochs or (300 if args.quick else 1000)
    t0 = time.perf_counter()
    run = train_and_track(nn.ReLU, ESTIMATORS, seeds=seeds, epochs=epochs, per_decade=5)
    print(
        f"{len(seeds)} seed(s), {epochs} epochs, {time.perf_counter() - t0:.0f} s; "
        f"test accuracy {sum(run.accuracy) / len(run.accuracy):.3f}"
    )
    tables = {}
    for label in ESTIMATORS:
        tables[label] = print_phases(label, run.history[label])
        if not args.no_figure:
            save_figure(
                run.history[label],
                f"Saxe et al.: 12-10-7-5-4-3-2 network, {label}, mean of {len(seeds)} seed(s)",
                FIGURES / FILES[label],
            )
    return tables


if __name__ == "__main__":
    main()
