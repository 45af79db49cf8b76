"""Benchmark of ``foresight.ei``: time against one forward pass, against the 2020 dense
construction, and peak memory.

Run:  .venv/bin/python benchmarks/bench_ei.py [--repeats 5] [--quick]

Prints one table. Every time is the median of ``--repeats`` interleaved runs; every number is a
ratio against a baseline measured in the same run (the machine is shared and noisy):

* EI time / forward time, for a ResNet-50-shaped and a VGG-16-shaped network at 224x224 and a small
  CNN (batch-1 forward under ``torch.no_grad()`` in eval mode). ``ei(input)`` includes the forward
  pass that finds the layers' shapes; ``ei(shapes)`` reuses ``get_shapes`` (as in a training loop).
* dense time / EI time on a 16-channel CNN at 16x16 (two baselines: a straightforward
  reimplementation of the 2020 approach -- Python loops filling a dense matrix per layer, then the
  norm and the entropies, the matrices built twice as the 2020 ``ei`` did -- and this package's
  vectorised dense path, ``norm=`` a custom callable).
* peak resident memory (``VmHWM`` from ``/proc/self/status``; ``ru_maxrss`` elsewhere) of fresh
  subprocesses that build the network and run either one forward pass or one ``ei`` call: total,
  and the increase over a subprocess that only builds the network (weights + interpreter).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import foresight.ei as fei

# --------------------------------------------------------------------------- networks


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = 4 * width
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


def resnet50(classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    c = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(blocks):
            layers.append(Bottleneck(c, width, stride if b == 0 else 1))
            c = 4 * width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    return nn.Sequential(*layers)


def vgg16(classes: int = 1000) -> nn.Module:
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers: list[nn.Module] = []
    c = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU()]
            c = int(v)
    layers += [
        nn.AdaptiveAvgPool2d(7),
        nn.Flatten(),
        nn.Linear(512 * 49, 4096),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(4096, classes),
    ]
    return nn.Sequential(*layers)


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )


def cnn16() -> nn.Module:
    """The dense-comparison network: 16 channels at 16x16 (every layer's matrix fits in memory)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 16 * 16, 10),
    )


NETWORKS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "resnet50@224": (resnet50, (1, 3, 224, 224)),
    "vgg16@224": (vgg16, (1, 3, 224, 224)),
    "small-cnn@28": (small_cnn, (1, 1, 28, 28)),
    "cnn16@16": (cnn16, (1, 3, 16, 16)),
}

# --------------------------------------------------------------------------- 2020-style dense EI


def _loop_linear(m: nn.Linear) -> torch.Tensor:
    return m.weight.detach().t()


def _loop_conv2d(m: nn.Conv2d, in_shape, out_shape) -> torch.Tensor:
    """Python loops over output neurons filling a (padded-input) dense matrix, as in 2020."""
    _, c_in, h_in, w_in = in_shape
    _, c_out, h_out, w_out = out_shape
    ph, pw = m.padding
    sh, sw = m.stride
    kh, kw = m.kernel_size
    full = torch.zeros(c_out, h_out, w_out, c_in, h_in + 2 * ph, w_in + 2 * pw)
    weight = m.weight.detach()
    for co in range(c_out):
        for y in range(h_out):
            for x in range(w_out):
                full[co, y, x, :, y * sh : y * sh + kh, x * sw : x * sw + kw] = weight[co]
    full = full[:, :, :, :, ph : ph + h_in, pw : pw + w_in]
    return full.reshape(c_out * h_out * w_out, c_in * h_in * w_in).t()


def _loop_matrices(net: nn.Module, shapes) -> list[torch.Tensor]:
    out = []
    for m, (i, o) in shapes.items():
        out.append(_loop_linear(m) if isinstance(m, nn.Linear) else _loop_conv2d(m, i, o))
    return out


def dense_2020_ei(net: nn.Module, x: torch.Tensor) -> float:
    """2020 approach: shapes, then determinism and degeneracy each building every matrix."""
    with torch.no_grad():
        shapes = fei.get_shapes(net, x)
        h_sum, n = 0.0, 0
        for W in _loop_matrices(net, shapes):
            P = fei.lin_norm(W)
            h_sum += float(fei.H(P, dim=1).sum())
            n += P.shape[0]
        cols, total = [], 0.0
        for W in _loop_matrices(net, shapes):
            P = fei.lin_norm(W)
            cols.append(P.sum(0))
            total += float(P.sum())
        deg = float(fei.H(torch.cat(cols) / total))
    return deg - h_sum / n


# --------------------------------------------------------------------------- timing


CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
_clock = time.process_time


def _timed(fn: Callable[[], object]) -> float:
    t = _clock()
    fn()
    return _clock() - t


def median_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    for fn in fns.values():  # warm-up
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():  # interleaved
            samples[k].append(_timed(fn))
    return {k: statistics.median(v) for k, v in samples.items()}


def time_vs_forward(name: str, repeats: int) -> dict[str, float]:
    make, shape = NETWORKS[name]
    torch.manual_seed(0)
    net = make().eval()
    x = torch.randn(shape)
    shapes = fei.get_shapes(net, x)

    def forward() -> None:
        with torch.no_grad():
            net(x)

    t = median_times(
        {
            "forward": forward,
            "ei(input)": lambda: fei.ei(net, x),
            "ei(shapes)": lambda: fei.ei(net, shapes=shapes),
        },
        repeats,
    )
    return t


def time_vs_dense(repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    make, shape = NETWORKS["cnn16@16"]
    torch.manual_seed(0)
    net = make().eval()
    x = torch.randn(shape)
    custom = lambda W: fei.lin_norm(W)  # noqa: E731 - any callable takes the dense path
    values = {
        "ei": fei.ei(net, x),
        "dense-2020": dense_2020_ei(net, x),
        "dense-vectorised": fei.ei(net, x, norm=custom),
    }
    dense_repeats = max(1, min(3, repeats))
    t = median_times({"ei": lambda: fei.ei(net, x)}, max(repeats, 5))
    t.update(median_times({"dense-2020": lambda: dense_2020_ei(net, x)}, dense_repeats))
    t.update(median_times({"dense-vectorised": lambda: fei.ei(net, x, norm=custom)}, repeats))
    return t, values


# --------------------------------------------------------------------------- memory

_CHILD = r"""
import json, resource, sys, torch
torch.set_num_threads({threads})
sys.path.insert(0, {root!r})
from bench_ei import NETWORKS
import foresight.ei as fei
torch.manual_seed(0)
make, shape = NETWORKS[{name!r}]
net = make().eval()
x = torch.randn(shape)
what = {what!r}
if what == "forward":
    with torch.no_grad():
        net(x)
elif what == "ei":
    fei.ei(net, x)
peak = None
try:
    with open("/proc/self/status") as fh:  # VmHWM: peak RSS of this process image (KiB)
        peak = next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:"))
except OSError:
    pass
if peak is None:  # (ru_maxrss also counts the parent's RSS inherited at fork on Linux)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(peak))
"""


def peak_kib(name: str, what: str) -> int:
    import pathlib

    root = str(pathlib.Path(__file__).resolve().parent)
    code = _CHILD.format(root=root, name=name, what=what, threads=torch.get_num_threads())
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return int(json.loads(out.strip().splitlines()[-1]))


def memory(name: str, repeats: int) -> dict[str, float]:
    res = {}
    for what in ("build", "forward", "ei"):
        res[what] = statistics.median(peak_kib(name, what) for _ in range(repeats)) / 1024.0
    return res


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small networks only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--clock", choices=sorted(CLOCK), default="cpu",
        help="cpu: process CPU time (robust on a shared machine, with --threads 1); wall",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    args = parser.parse_args(argv)
    global _clock
    _clock = CLOCK[args.clock]
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.clock} clock, "
          f"median of {args.repeats} interleaved runs\n")

    names = ["small-cnn@28"] if args.quick else ["resnet50@224", "vgg16@224", "small-cnn@28"]
    print(f"{'network':14s} {'forward s':>10s} {'ei(input) s':>12s} {'ratio':>6s} "
          f"{'ei(shapes) s':>13s} {'ratio':>6s}")
    for name in names:
        t = time_vs_forward(name, args.repeats)
        print(f"{name:14s} {t['forward']:10.4f} {t['ei(input)']:12.4f} "
              f"{t['ei(input)'] / t['forward']:6.2f} {t['ei(shapes)']:13.4f} "
              f"{t['ei(shapes)'] / t['forward']:6.2f}")

    t, values = time_vs_dense(args.repeats)
    print("\ncnn16@16 (lin_norm)      time s    dense/ei     EI (bits)")
    for k in ("ei", "dense-vectorised", "dense-2020"):
        print(f"  {k:20s} {t[k]:9.4f} {t[k] / t['ei']:10.0f}x   {values[k]:.9f}")

    if args.no_memory:
        return
    print("\npeak RSS (MiB, VmHWM of fresh processes; median of "
          f"{max(1, args.repeats // 2)})")
    print(f"{'network':14s} {'build':>8s} {'forward':>8s} {'ei':>8s} {'ei/fwd':>7s} "
          f"{'(ei-build)/(fwd-build)':>23s}")
    for name in names:
        m = memory(name, max(1, args.repeats // 2))
        extra = (m["ei"] - m["build"]) / max(m["forward"] - m["build"], 1e-9)
        print(f"{name:14s} {m['build']:8.0f} {m['forward']:8.0f} {m['ei']:8.0f} "
              f"{m['ei'] / m['forward']:7.2f} {extra:23.2f}")


if __name__ == "__main__":
    main()
