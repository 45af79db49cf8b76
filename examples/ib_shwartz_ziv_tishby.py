"""Shwartz-Ziv & Tishby (2017): the information plane of a tanh network, fitting then compression.

The 12-10-7-5-4-3-2 network (tanh hidden units, softmax output) is trained on 85% of the 4096
12-bit patterns (:func:`foresight.data.tishby_patterns`) with Adam (batch 256, cross-entropy), and
every hidden layer's I(X;T), I(T;Y) is estimated on all 4096 patterns by binning each unit into
30 equal bins on [-1, 1], every epoch early and 20 times per decade later. The curves are averaged
over seeds.

Differences from the paper, to keep the run to a few minutes on two CPU cores: 1000 epochs with
learning rate 0.004 (the paper trains about 10^4 epochs with a smaller step), 3 seeds (the paper
averages 50), generated labels (the original file cannot be fetched).

Run: ``python examples/ib_shwartz_ziv_tishby.py [--quick]`` -- writes
``docs/figures/ib_szt_tanh_binning.png`` and prints each layer's fitting and compression.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from foresight.data import tishby_patterns
from foresight.ib import InformationPlaneTracker
from foresight.schedule import log_spaced

WIDTHS = (12, 10, 7, 5, 4, 3, 2)
FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"


def tishby_network(activation: Callable[[], nn.Module]) -> nn.Sequential:
    """12-10-7-5-4-3-2 with ``activation`` after every hidden layer and a softmax output."""
    mods: list[nn.Module] = []
    for a, b in zip(WIDTHS[:-1], WIDTHS[1:]):
        mods += [nn.Linear(a, b), activation()]
    mods[-1] = nn.Softmax(dim=1)
    return nn.Sequential(*mods)


@dataclass
class Run:
    """Seed-averaged information-plane history for each estimator, and the test accuracies."""

    history: dict[str, list[dict]] = field(default_factory=dict)
    accuracy: list[float] = field(default_factory=list)


def train_and_track(
    activation: Callable[[], nn.Module],
    estimators: dict[str, dict],
    seeds: list[int],
    epochs: int,
    lr: float = 0.004,
    batch_size: int = 256,
    per_decade: int = 20,
) -> Run:
    """Train one network per seed and record the information plane with every estimator.

    ``estimators`` maps a label to the options of :func:`foresight.ib.information_plane`
    (``method``, ``bins``/``range``/``bin_size`` or ``noise_var``...).
    """
    torch.set_num_threads(1)  # a tiny network: threads only add overhead
    sums: dict[str, dict[tuple[int, str], list[float]]] = {k: defaultdict(list) for k in estimators}
    run = Run()
    for seed in seeds:
        x, y = tishby_patterns(seed=seed)  # shuffled: the first 85% are the training set
        n_train = int(0.85 * len(x))
        torch.manual_seed(seed)
        net = tishby_network(activation)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        trackers = {
            label: InformationPlaneTracker(
                net, x, y, schedule=log_spaced(dense_until=10, per_decade=per_decade), **opts
            )
            for label, opts in estimators.items()
        }
        for epoch in range(epochs + 1):
            for tracker in trackers.values():
                tracker.update(epoch)
            perm = torch.randperm(n_train)
            for start in range(0, n_train, batch_size):
                idx = perm[start : start + batch_size]
                probs = net(x[idx])
                loss = nn.functional.nll_loss(torch.log(probs.clamp_min(1e-12)), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            run.accuracy.append(float((net(x[n_train:]).argmax(1) == y[n_train:]).float().mean()))
        for label, tracker in trackers.items():
            for epoch, plane in tracker.planes.items():
                for layer in plane:
                    sums[label][(epoch, layer.name)].append((layer.i_xt, layer.i_ty))
    for label, table in sums.items():
        run.history[label] = [
            {
                "epoch": epoch,
                "layer": layer,
                "i_xt": sum(v[0] for v in vals) / len(vals),
                "i_ty": sum(v[1] for v in vals) / len(vals),
            }
            for (epoch, layer), vals in table.items()
        ]
    return run


def phases(history: list[dict]) -> dict[str, dict[str, float]]:
    """Per layer: initial, peak and final I(X;T), the compression (peak - final), the epoch of the
    peak, and the initial and final I(T;Y)."""
    out: dict[str, dict[str, float]] = {}
    layers = dict.fromkeys(r["layer"] for r in history)
    for layer in layers:
        rows = sorted((r for r in history if r["layer"] == layer), key=lambda r: r["epoch"])
        peak = max(rows, key=lambda r: r["i_xt"])
        out[layer] = {
            "i_xt_first": rows[0]["i_xt"],
            "i_xt_peak": peak["i_xt"],
            "peak_epoch": peak["epoch"],
            "i_xt_last": rows[-1]["i_xt"],
            "compression": peak["i_xt"] - rows[-1]["i_xt"],
            "i_ty_first": rows[0]["i_ty"],
            "i_ty_last": rows[-1]["i_ty"],
        }
    return out


def print_phases(label: str, history: list[dict]) -> dict[str, dict[str, float]]:
    table = phases(history)
    print(f"\n{label}")
    print("layer  I(X;T) first  peak (epoch)   last  compression   I(T;Y) first  last")
    for layer, p in table.items():
        print(
            f"{layer:>5}  {p['i_xt_first']:12.2f}  {p['i_xt_peak']:5.2f} ({p['peak_epoch']:>5.0f})"
            f"  {p['i_xt_last']:5.2f}  {p['compression']:11.2f}   {p['i_ty_first']:12.2f}"
            f"  {p['i_ty_last']:4.2f}"
        )
    return table


def save_figure(history: list[dict], title: str, path: Path) -> None:
    """The information plane (left) and I(X;T) against epoch (right), as a small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from foresight.plot.ib import information_plane_plot, mutual_information_curves

    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4), layout="constrained")
    information_plane_plot(history, ax=axes[0], title=None)
    mutual_information_curves(history, quantity="i_xt", ax=axes[1])
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 300 epochs (~30 s)")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--no-figure", action="store_true")
    args = parser.parse_args(argv)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    epochs = args.epochs or (300 if args.quick else 1000)
    label = "tanh, binning (30 bins on [-1, 1])"
    t0 = time.perf_counter()
    run = train_and_track(
        nn.Tanh, {label: {"bins": 30, "range": (-1.0, 1.0)}}, seeds=seeds, epochs=epochs
    )
    print(
        f"{len(seeds)} seed(s), {epochs} epochs, {time.perf_counter() - t0:.0f} s; "
        f"test accuracy {sum(run.accuracy) / len(run.accuracy):.3f}"
    )
    table = print_phases(label, run.history[label])
    if not args.no_figure:
        save_figure(
            run.history[label],
            f"Shwartz-Ziv & Tishby network, {label}, mean of {len(seeds)} seed(s)",
            FIGURES / "ib_szt_tanh_binning.png",
        )
    return table


if __name__ == "__main__":
    main()
