"""Causal structure of a small Iris classifier during training (Mattsson/Marrow et al. 2020).

The paper's setting: a 4-5-5-3 network with sigmoid after every layer, no biases, weights drawn
uniformly from :math:`\\pm 1/\\sqrt{\\text{fan-in}}`, trained with plain SGD (lr 0.01, batches of
10) on the summed squared error against one-hot labels, 100 training and 50 test flowers. At
log-spaced epochs every layer's EI, EI_parts, sensitivity and degeneracy are measured with
8 bins over (0, 1) (the paper's Iris binning) and a fixed number of noise samples. Data:
:func:`foresight.data.iris` (features min-max scaled to [0, 1]).

Run: ``python examples/causal_iris.py [--epochs 4000] [--samples 200000] [--out PATH]``
(a minute or two, single-threaded). Writes ``docs/figures/causal_iris.png`` by default and
prints the first layer's EI_parts next to the training loss.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import time

import torch
from torch import nn

import foresight.causal as fc
from foresight.data import iris
from foresight.schedule import log_spaced

ROOT = pathlib.Path(__file__).resolve().parents[1]
WIDTHS = (4, 5, 5, 3)


def network(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(WIDTHS[:-1], WIDTHS[1:]):
        layer = nn.Linear(a, b, bias=False)
        nn.init.uniform_(layer.weight, -1 / math.sqrt(a), 1 / math.sqrt(a))
        layers += [layer, nn.Sigmoid()]
    return nn.Sequential(*layers)


def run(
    epochs: int = 4000, samples: int = 200_000, seed: int = 0, per_decade: int = 8
) -> list[dict[str, float]]:
    """Train and measure; one record per measured epoch (losses are per flower).

    Runs single-threaded: the tensors are tiny, and on a shared machine extra threads only wait.
    """
    torch.set_num_threads(1)
    x, y = iris()
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    x, y = x[order], y[order]
    target = torch.nn.functional.one_hot(y, 3).float()
    x_train, t_train, x_test, t_test = x[:100], target[:100], x[100:], target[100:]
    net = network(seed)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loss_fn = nn.MSELoss(reduction="sum")
    tracker = fc.CausalTracker(net, log_spaced(dense_until=3, per_decade=per_decade),
                               bins=8, samples=samples, seed=seed)

    def losses() -> dict[str, float]:
        with torch.no_grad():
            return {
                "train_loss": float(loss_fn(net(x_train), t_train)) / len(x_train),
                "test_loss": float(loss_fn(net(x_test), t_test)) / len(x_test),
                "test_accuracy": float((net(x_test).argmax(1) == t_test.argmax(1)).float().mean()),
            }

    for epoch in range(epochs + 1):
        tracker.update(epoch, **losses())
        if epoch == epochs:
            break
        perm = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(x_train), 10):
            idx = perm[i : i + 10]
            opt.zero_grad()
            loss_fn(net(x_train[idx]), t_train[idx]).backward()
            opt.step()
    return tracker.history


def figure(history: list[dict[str, float]], path: pathlib.Path) -> None:
    from foresight._optional import require
    from foresight.plot.causal import causal_plane, layer_ei_training

    plt = require("matplotlib.pyplot", "the figure")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
    ep = [r["epoch"] for r in history]
    axes[0].plot(ep, [r["train_loss"] for r in history], color="tab:gray", label="train")
    axes[0].plot(ep, [r["test_loss"] for r in history], color="tab:red", label="test")
    axes[0].set_xscale("symlog", linthresh=1)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("squared error per flower")
    axes[0].set_title("Loss (4-5-5-3 sigmoid, SGD lr 0.01)")
    axes[0].legend()
    layer_ei_training(history, measure="ei_parts", ax=axes[1],
                      title=r"EI$_\mathrm{parts}$ of each layer (8 bins)")
    causal_plane(history, ax=axes[2])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4000)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "docs/figures/causal_iris.png")
    args = parser.parse_args()
    t0 = time.perf_counter()
    history = run(args.epochs, args.samples, args.seed)
    print(f"{'epoch':>6} {'train loss':>10} {'test acc':>8} {'EI_parts L1':>11} "
          f"{'L2':>6} {'L3':>6}")
    for r in history:
        print(f"{r['epoch']:6d} {r['train_loss']:10.4f} {r['test_accuracy']:8.2f} "
              f"{r['ei_parts/0']:11.3f} {r['ei_parts/2']:6.3f} {r['ei_parts/4']:6.3f}")
    figure(history, args.out)
    print(f"wrote {args.out} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
