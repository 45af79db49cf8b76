"""GradientNoiseScale under DistributedDataParallel: 2 CPU processes (gloo)."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from foresight.gns import GradientNoiseScale, noise_scale, two_batch

WORLD, LOCAL = 2, 8


def mse(out, y):
    return (out - y).square().mean()


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()


def make_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(WORLD * LOCAL, 5, generator=g, dtype=torch.float64)
    return x, x[:, :2].sin() + 0.2 * torch.randn(WORLD * LOCAL, 2, generator=g, dtype=torch.float64)


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = make_model()
        x, y = make_data()
        xl, yl = x[rank * LOCAL : (rank + 1) * LOCAL], y[rank * LOCAL : (rank + 1) * LOCAL]
        calls = []
        real = dist.all_reduce

        def counting(*args, **kwargs):
            calls.append(args[0].numel())
            return real(*args, **kwargs)

        results = {}
        for per_example in (False, True):
            for accumulate in (1, 2):
                ddp = DDP(copy.deepcopy(model))
                gns = GradientNoiseScale(ddp, beta=0.0, per_example=per_example)
                if accumulate == 1:
                    mse(ddp(xl), yl).backward()
                else:
                    half = LOCAL // 2
                    with ddp.no_sync():
                        (mse(ddp(xl[:half]), yl[:half]) / 2).backward()
                    (mse(ddp(xl[half:]), yl[half:]) / 2).backward()
                calls.clear()
                dist.all_reduce = counting
                try:
                    est = gns.step()
                finally:
                    dist.all_reduce = real
                gns.close()
                results[(per_example, accumulate)] = (
                    est.trace_sigma,
                    est.grad_sq_norm,
                    est.batch_size,
                    list(calls),
                )
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_ddp_matches_single_process_estimators(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    model = make_model()
    x, y = make_data()
    params = list(model.parameters())

    def sq(xb, yb):
        return float(sum(g.square().sum() for g in torch.autograd.grad(mse(model(xb), yb), params)))

    local = [
        sq(x[r * LOCAL : (r + 1) * LOCAL], y[r * LOCAL : (r + 1) * LOCAL]) for r in range(WORLD)
    ]
    two = two_batch(sum(local) / WORLD, sq(x, y), LOCAL, WORLD * LOCAL)
    per = noise_scale(model, mse, x, y)
    for rank in range(WORLD):
        res = torch.load(tmp_path / f"rank{rank}.pt")
        for (per_example, accumulate), (tr, g2, batch, calls) in res.items():
            ref = per if per_example else two
            assert batch == WORLD * LOCAL
            assert tr == pytest.approx(ref.trace_sigma, rel=1e-9), (per_example, accumulate)
            assert g2 == pytest.approx(ref.grad_sq_norm, rel=1e-9), (per_example, accumulate)
            assert len(calls) == 1  # one all-reduce of a few scalars per step
            assert calls[0] <= 4
