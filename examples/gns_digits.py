"""Track the gradient noise scale while training an MLP on scikit-learn's digits.

Prints B_simple every 50 steps with the suggested batch size, compares the tracker with the
one-shot estimator and B_noise at the end, and saves ``gns_digits.png``.

Run: ``python examples/gns_digits.py`` (about 30 s of CPU time).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from foresight.gns import GradientNoiseScale, b_noise, noise_scale, suggested_batch_size
from foresight.plot.gns import noise_scale_over_training


def main() -> None:
    torch.manual_seed(0)
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps, estimates = [], []
    with GradientNoiseScale(model, beta=0.99) as gns:
        for step in range(400):
            idx = torch.randint(0, len(x), (32,))
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            est = gns.step()  # after backward, before clipping / zero_grad
            opt.step()
            opt.zero_grad()
            steps.append(step)
            estimates.append(est)
            if step % 50 == 49:
                print(
                    f"step {step + 1:4d}  B_simple {est.b_simple:8.1f}  "
                    f"suggested batch {suggested_batch_size(est, multiple_of=8)}"
                )
    idx = torch.randperm(len(x))[:512]
    once = noise_scale(model, F.cross_entropy, x[idx], y[idx])
    bn = b_noise(model, F.cross_entropy, x[idx], y[idx], probes=128)
    print(f"one-shot on 512 examples: B_simple {once.b_simple:.1f}, B_noise {bn:.1f}")
    noise_scale_over_training(steps, estimates, multiple_of=8).savefig("gns_digits.png", dpi=120)
    print("saved gns_digits.png")


if __name__ == "__main__":
    main()
