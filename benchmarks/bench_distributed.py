"""The gradient noise scale tracker and EI under DDP and FSDP2: cost relative to the same step
without foresight, measured in the same run.

Two gloo worker processes on CPU (one thread each) train an MLP 784-512-512-10 (batch ``--batch``
per rank). For DDP and for FSDP2 (``fully_shard`` on every Linear and the root) the script times,
interleaved over ``--reps`` repetitions (medians over ranks' maxima), one training step --
forward, backward, optimizer step -- without a tracker (the baseline), with
``GradientNoiseScale(per_example=True)`` and with ``per_example=False``, and prints each as a
ratio to its own baseline. It also times ``foresight.ei.report`` of the sharded model (gather,
measure, reshard) as a ratio to ``ei.report`` of the same model unsharded in the same process.

Run: ``python benchmarks/bench_distributed.py [--reps N] [--batch B]``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

WORLD = 2


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 10))


def wrap(kind: str, model: nn.Module) -> nn.Module:
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    for layer in (model[0], model[2], model[4]):
        fully_shard(layer)
    fully_shard(model)
    return model


def step_time(model, opt, gns, x, y) -> float:
    start = time.perf_counter()
    F.cross_entropy(model(x), y).backward()
    if gns is not None:
        gns.step()
    opt.step()
    opt.zero_grad()
    return time.perf_counter() - start


def worker(rank: int, port: int, reps: int, batch: int, out: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from foresight import ei as fei
    from foresight.gns import GradientNoiseScale

    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(batch, 784, generator=g), torch.randint(0, 10, (batch,), generator=g)
    configs = {}
    for kind in ("ddp", "fsdp"):
        for mode in ("plain", "per-example", "micro-batch"):
            model = wrap(kind, mlp())
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            gns = None if mode == "plain" else GradientNoiseScale(
                model, per_example=mode == "per-example")
            for _ in range(3):  # warm-up (planning, FSDP's lazy init)
                step_time(model, opt, gns, x, y)
            configs[(kind, mode)] = (model, opt, gns)
    times: dict = {key: [] for key in configs}
    times["ei sharded"], times["ei plain"] = [], []
    plain = mlp()
    sharded = configs[("fsdp", "plain")][0]
    for _ in range(reps):
        for key, (model, opt, gns) in configs.items():
            dist.barrier()
            times[key].append(step_time(model, opt, gns, x, y))
        dist.barrier()
        start = time.perf_counter()
        fei.report(sharded, x[:1])
        times["ei sharded"].append(time.perf_counter() - start)
        start = time.perf_counter()
        fei.report(plain, x[:1])
        times["ei plain"].append(time.perf_counter() - start)
    torch.save(times, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(free_port(), args.reps, args.batch, out), nprocs=WORLD,
                 join=True)
        ranks = [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(WORLD)]
    # a step takes as long as its slowest rank
    med = {key: statistics.median(max(r[key][i] for r in ranks) for i in range(args.reps))
           for key in ranks[0]}
    print(f"MLP 784-512-512-10, batch {args.batch} per rank, {WORLD} gloo ranks, 1 thread each, "
          f"{args.reps} interleaved repetitions (medians)")
    print(f"{'wrapper':8} {'tracker':12} {'step ms':>8} {'vs no tracker':>14}")
    for kind in ("ddp", "fsdp"):
        base = med[(kind, "plain")]
        for mode in ("plain", "per-example", "micro-batch"):
            t = med[(kind, mode)]
            print(f"{kind:8} {mode:12} {1e3 * t:8.2f} {t / base:13.2f}x")
    ratio = med["ei sharded"] / med["ei plain"]
    print(f"ei.report: sharded {1e3 * med['ei sharded']:.2f} ms, unsharded "
          f"{1e3 * med['ei plain']:.2f} ms ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
