"""The metrics under DDP and FSDP2 (``fully_shard``), end to end: two gloo processes on CPU.

Process start-up dominates, so ONE spawn of two workers runs every check (gradient noise scale
under DDP and FSDP2, accumulation, uneven batches, HSDP and no_sync errors, EI / report / causal /
information plane of a sharded model, the Monitor's CSV, Lightning with ``strategy="ddp"``) and
saves what it saw; the tests below compare that with single-process references computed here,
independently, from the same data. The spawn has a watchdog: a hang fails instead of blocking.
"""

from __future__ import annotations

import csv
import math
import os
import socket
import time
import traceback
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

pytestmark = pytest.mark.distributed

WORLD, LOCAL = 2, 8
TIMEOUT_S = 240
UNEVEN = (8, 6)  # examples per rank in the uneven-batch check
COLLECTIVES = ("all_reduce", "all_gather_single", "reduce_scatter_single", "all_gather_object",
               "broadcast_object_list", "all_gather_into_tensor", "reduce_scatter_tensor",
               "broadcast", "barrier", "all_gather")


def mse(out, y):
    return (out - y).square().mean()


def make_model():
    """Linear -> LayerNorm -> Tanh -> Linear (3 outputs: shards of uneven size on 2 ranks)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3)).double()


def make_data(n=WORLD * LOCAL):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    return x, x[:, :3].sin() + 0.2 * torch.randn(n, 3, generator=g, dtype=torch.float64)


def labels_of(x):
    return (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def shard(model, mesh=None):
    from torch.distributed.fsdp import fully_shard

    kw = {} if mesh is None else {"mesh": mesh}
    for layer in (model[0], model[3]):
        fully_shard(layer, **kw)
    fully_shard(model, **kw)  # the root group holds the LayerNorm
    return model


class Counting:
    """Count the calls of torch.distributed's collectives (name, and numel of a tensor arg)."""

    def __init__(self):
        self.calls = []

    def __enter__(self):
        self.saved = {}
        for name in COLLECTIVES:
            real = getattr(dist, name, None)
            if real is None:
                continue
            self.saved[name] = real

            def wrap(*args, _real=real, _name=name, **kwargs):
                first = args[0] if args else None
                self.calls.append((_name, first.numel() if torch.is_tensor(first) else None))
                return _real(*args, **kwargs)

            setattr(dist, name, wrap)
        return self

    def __exit__(self, *exc):
        for name, real in self.saved.items():
            setattr(dist, name, real)

    def names(self):
        return [n for n, _ in self.calls]


# ------------------------------------------------------------------ worker sections


def _slice(t, rank, sizes=(LOCAL,) * WORLD):
    start = sum(sizes[:rank])
    return t[start : start + sizes[rank]]


def _train_step(model, xl, yl, accumulate, sync_off, sync_on):
    if accumulate == 1:
        mse(model(xl), yl).backward()
        return
    half = xl.shape[0] // 2
    sync_off()
    (mse(model(xl[:half]), yl[:half]) / 2).backward()
    sync_on()
    (mse(model(xl[half:]), yl[half:]) / 2).backward()


def _gns_runs(rank, wrap, out, tag):
    """Tracker estimates (beta=0: the raw estimate) for per_example x accumulation."""
    from foresight.gns import GradientNoiseScale

    x, y = make_data()
    xl, yl = _slice(x, rank), _slice(y, rank)
    for per_example in (False, True):
        for accumulate in (1, 2):
            model, off, on = wrap(make_model())
            gns = GradientNoiseScale(model, beta=0.0, per_example=per_example)
            steps = []
            for _ in range(2):  # the second step runs on the planned/hooked model
                with Counting() as fb:
                    _train_step(model, xl, yl, accumulate, off, on)
                with Counting() as st:
                    est = gns.step()
                steps.append((est.trace_sigma, est.grad_sq_norm, est.batch_size, st.calls,
                              fb.names()))
                for p in model.parameters():
                    p.grad = None
            out[(tag, per_example, accumulate)] = dict(steps=steps, coverage=gns.coverage())
            gns.close()


def _ddp(model):
    from torch.nn.parallel import DistributedDataParallel as DDP

    ddp = DDP(model)
    state = {}

    def off():
        state["ctx"] = ddp.no_sync()
        state["ctx"].__enter__()

    def on():
        state.pop("ctx").__exit__(None, None, None)

    return ddp, off, on


def _fsdp(model):
    m = shard(model)
    return m, (lambda: m.set_requires_gradient_sync(False)), (
        lambda: m.set_requires_gradient_sync(True))


def section_gns(rank, out):
    _gns_runs(rank, _ddp, out, "ddp")
    _gns_runs(rank, _fsdp, out, "fsdp")


def section_fsdp_untouched(rank, out):
    """FSDP's own communication and the gradients are the same with and without the tracker."""
    from foresight.gns import GradientNoiseScale

    x, y = make_data()
    xl, yl = _slice(x, rank), _slice(y, rank)
    seen = {}
    for tracked in (False, True):
        model = shard(make_model())
        gns = GradientNoiseScale(model, per_example=True) if tracked else None
        for _ in range(2):
            with Counting() as c:
                mse(model(xl), yl).backward()
            grads = [p.grad.to_local().clone() for p in model.parameters()]
            if gns is not None:
                gns.step()
            for p in model.parameters():
                p.grad = None
        seen[tracked] = (c.names(), grads)  # the second step's
        if gns is not None:
            gns.close()
            unsharded = [fp._unsharded_param for fp in _fsdp_params(model)]
            out["hooks_left"] = sum(len(getattr(u, "_backward_hooks", None) or {})
                                    for u in unsharded)
    out["fsdp_comms"] = (seen[False][0], seen[True][0])
    out["fsdp_grads_equal"] = all(torch.equal(a, b) for a, b in zip(seen[False][1],
                                                                     seen[True][1]))


def _fsdp_params(model):
    from foresight import distributed

    return [m.fsdp_param for m in distributed.detect(model)._managed.values()]


def section_uneven(rank, out):
    from foresight.gns import GradientNoiseScale

    x, y = make_data(sum(UNEVEN))
    xl, yl = _slice(x, rank, UNEVEN), _slice(y, rank, UNEVEN)
    for tag, wrap in (("ddp", _ddp), ("fsdp", _fsdp)):
        for per_example in (False, True):
            model, _, _ = wrap(make_model())
            gns = GradientNoiseScale(model, beta=0.0, per_example=per_example)
            mse(model(xl), yl).backward()
            est = gns.step()
            gns.close()
            out[("uneven", tag, per_example)] = (est.trace_sigma, est.grad_sq_norm,
                                                 est.batch_size)


def section_errors(rank, out):
    """no_sync misuse, HSDP, and a step that one rank cannot measure."""
    from torch.distributed.device_mesh import init_device_mesh

    from foresight import distributed
    from foresight.gns import GradientNoiseScale

    x, y = make_data()
    xl, yl = _slice(x, rank), _slice(y, rank)
    for tag, wrap in (("ddp", _ddp), ("fsdp", _fsdp)):
        model, off, on = wrap(make_model())
        gns = GradientNoiseScale(model, per_example=False)
        off()
        mse(model(xl), yl).backward()
        try:
            gns.step()
            out[("nosync", tag)] = "no error"
        except RuntimeError as exc:
            out[("nosync", tag)] = str(exc)
        on()
        gns.close()
    mesh = init_device_mesh("cpu", (1, WORLD), mesh_dim_names=("replicate", "shard"))
    hsdp = shard(make_model(), mesh=mesh)
    try:
        GradientNoiseScale(hsdp)
        out["hsdp"] = "no error"
    except distributed.DistributedError as exc:
        out["hsdp"] = str(exc)
    from foresight import ei as fei

    out["hsdp_ei"] = fei.report(hsdp, x[:1]).ei
    # one rank cannot measure a step: every rank skips it (and nobody waits forever)
    model, _, _ = _ddp(make_model())
    gns = GradientNoiseScale(model, beta=0.0, per_example=True)
    mse(model(xl), yl).backward()
    if rank == 1:
        gns._inexact, gns._step_notes = True, ["a deviation made up by the test"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank 1 warns that it cannot measure the step
        gns.step()
    out["one_rank_skips"] = (gns.skipped, gns.steps, gns.last_raw is None)
    for p in model.parameters():
        p.grad = None
    mse(model(xl), yl).backward()
    est = gns.step()
    out["after_skip"] = (gns.skipped, gns.steps, est.trace_sigma)
    gns.close()
    # a parameter unfrozen during training is measured from then on (hooked on its unsharded
    # tensor); one frozen from the start is left out
    model = shard(make_model())
    model[0].weight.requires_grad_(False)
    gns = GradientNoiseScale(model, per_example=False)
    covered = []
    for _ in range(2):
        mse(model(xl), yl).backward()
        gns.step()
        covered.append(gns.coverage().get("0.weight"))
        for p in model.parameters():
            p.grad = None
        model[0].weight.requires_grad_(True)
    gns.close()
    out["unfrozen"] = covered
    # every=2: the collective runs on the measured steps only
    model = shard(make_model())
    gns = GradientNoiseScale(model, per_example=True, every=2)
    counts = []
    for _ in range(4):
        mse(model(xl), yl).backward()
        with Counting() as c:
            gns.step()
        counts.append(c.names())
        for p in model.parameters():
            p.grad = None
    gns.close()
    out["every2"] = counts


def section_weights(rank, out):
    """EI, report, causal report and information plane of a fully_shard'ed model."""
    from foresight import causal
    from foresight import ei as fei
    from foresight.ib import information_plane

    x, y = make_data()
    lab = labels_of(x)
    model = shard(make_model())  # measured before its first forward pass (lazy init)
    with Counting() as c:
        out["ei_report"] = fei.report(model, x[:1]).to_dict()
    out["ei_comms"] = c.names()
    out["ei"] = fei.ei(model, x[:1])
    out["causal"] = causal.report(model, samples=3000, seed=3).to_dict()
    torch.manual_seed(100 + rank)  # different global generators: the drawn seed must agree
    out["causal_seed_none"] = causal.report(model, samples=1000).to_dict()
    out["ib"] = information_plane(model, x, lab, bins=10, range=(-1, 1)).to_dict()
    out["still_sharded"] = all(type(p).__name__ == "DTensor" for p in model.parameters())
    # training is unchanged by the measurements
    xl, yl = _slice(x, rank), _slice(y, rank)
    fresh = shard(make_model())
    for m in (model, fresh):
        mse(m(xl), yl).backward()
    out["grads_after_measuring"] = all(
        torch.equal(a.grad.to_local(), b.grad.to_local())
        for a, b in zip(model.parameters(), fresh.parameters())
    )


def _monitor_run(rank, model, path):
    from foresight.monitor import EI, Function, GradientNoise, InformationPlane, Monitor
    from foresight.monitor.sinks import CSVSink
    from foresight.schedule import every

    x, y = make_data()
    lab = labels_of(x)
    xl, yl = _slice(x, rank), _slice(y, rank)
    inner = getattr(model, "module", model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = CSVSink(path)
    metrics = [GradientNoise(per_layer=True), EI(input=x[:1], layers=True),
               Function(weight_norm, name="wnorm"),
               InformationPlane(x, lab, bins=8, range=(-1, 1))]
    mon = Monitor(model, metrics, schedule=every(2), unit="step", sinks=[sink])
    assert mon.module is inner
    for _ in range(4):
        loss = mse(model(xl), yl)
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)  # the record keeps rank 0's values: pass the mean
        mon.step(loss=mean_loss / WORLD)
        opt.step()
        opt.zero_grad()
    mon.close()
    return dict(history=list(mon.history), started=sink._started)


def weight_norm(model):
    return float(sum(p.detach().double().square().sum() for p in model.parameters()))


def section_monitor(rank, out, tmp):
    model, _, _ = _ddp(make_model())
    out["monitor_ddp"] = _monitor_run(rank, model, os.path.join(tmp, "ddp.csv"))
    out["monitor_fsdp"] = _monitor_run(rank, shard(make_model()), os.path.join(tmp, "fsdp.csv"))


def section_lightning(rank, out, tmp):
    os.environ["LOCAL_RANK"] = str(rank)  # the processes exist: Lightning launches none
    os.environ["NODE_RANK"] = "0"
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import ModelParallelStrategy

    from foresight.integrations.lightning import ForesightCallback
    from foresight.monitor import Function
    from foresight.monitor.sinks import CSVSink
    from foresight.schedule import every

    for tag, strategy in (("ddp", "ddp"), ("fsdp", ModelParallelStrategy(WORLD, 1))):
        callback = ForesightCallback(
            ["gns", Function(weight_norm, name="wnorm")], unit="step", schedule=every(1),
            sinks=[CSVSink(os.path.join(tmp, f"pl_{tag}.csv"))], log=False)
        model = lightning_fit(pl, callback, devices=WORLD, strategy=strategy, root=tmp,
                              shard=tag == "fsdp")
        final = [distributed_full(p) for p in model.parameters()]
        out["lightning_" + tag] = dict(history=list(callback.history),
                                       started=callback.sinks[0]._started,
                                       world=model.trainer.world_size, final=final)


def distributed_full(p):
    full = getattr(p, "full_tensor", None)
    return (full() if callable(full) else p).detach().clone()


def lightning_fit(pl, callback, devices, strategy, root, shard=False):
    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = make_model()

        def configure_model(self):  # ModelParallelStrategy: FSDP2 on its data-parallel mesh
            if shard:
                from torch.distributed.fsdp import fully_shard

                mesh = self.device_mesh["data_parallel"]
                for layer in (self.net[0], self.net[3]):
                    fully_shard(layer, mesh=mesh)
                fully_shard(self, mesh=mesh)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = mse(self(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x, y = make_data(32)
    data = torch.utils.data.TensorDataset(x, y)
    # rank r reads examples r, r + 2, ... (Lightning's own sampler would shuffle): each step's
    # batches of the two ranks together are the single process's batch of 16
    sampler = (torch.utils.data.DistributedSampler(data, WORLD, dist.get_rank(), shuffle=False)
               if devices > 1 else None)
    loader = torch.utils.data.DataLoader(data, batch_size=16 // devices, sampler=sampler)
    model = Tiny()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=devices, strategy=strategy,
                         callbacks=[callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=root, use_distributed_sampler=False)
    trainer.fit(model, loader)
    return model


SECTIONS = ("gns", "fsdp_untouched", "uneven", "errors", "weights", "monitor", "lightning")


def worker(rank, port, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ["WORLD_SIZE"] = str(WORLD)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    out = {"timing": {}}
    try:
        for name in SECTIONS:
            start = time.perf_counter()
            fn = globals()["section_" + name]
            if name in ("monitor", "lightning"):
                fn(rank, out, out_dir)
            else:
                fn(rank, out)
            out["timing"][name] = time.perf_counter() - start
    except Exception:
        out["error"] = traceback.format_exc()
        raise
    finally:
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_with_watchdog(fn, args, timeout):
    ctx = mp.spawn(fn, args=args, nprocs=WORLD, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(deadline - time.monotonic(), 0.1)):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"the distributed workers did not finish within {timeout} s (a hang?)")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    pytest.importorskip("lightning.pytorch")
    tmp = tmp_path_factory.mktemp("dist")
    spawn_with_watchdog(worker, (free_port(), str(tmp)), TIMEOUT_S)
    res = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r in res:
        assert "error" not in r, r.get("error")
    return res, tmp


# ------------------------------------------------------------------ single-process references


def sq_grad(model, xb, yb):
    params = list(model.parameters())
    return float(sum(g.square().sum() for g in torch.autograd.grad(mse(model(xb), yb), params)))


def references():
    from foresight.gns import noise_scale, two_batch

    model = make_model()
    x, y = make_data()
    local = [sq_grad(model, _slice(x, r), _slice(y, r)) for r in range(WORLD)]
    two = two_batch(sum(local) / WORLD, sq_grad(model, x, y), LOCAL, WORLD * LOCAL)
    per = noise_scale(model, mse, x, y)
    return {False: two, True: per}


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def same_value(a, b, tol=0.0):
    """Equal (within ``tol`` relative for numbers), with nan equal to nan (an unresolved noise
    scale is nan)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and tol:
        return abs(a - b) <= tol * max(abs(b), 1e-12)
    return a == b


def same_records(xs, ys, tol=0.0):
    return len(xs) == len(ys) and all(
        set(x) == set(y) and all(same_value(x[k], y[k], tol) for k in y) for x, y in zip(xs, ys)
    )


def cell(text):
    try:
        return float(text)
    except ValueError:
        return text


# ------------------------------------------------------------------ the tests


@pytest.mark.parametrize("tag", ["ddp", "fsdp"])
def test_tracker_equals_single_process_estimates(ranks, tag):
    res, _ = ranks
    ref = references()
    n_groups = 3  # 0, 1 (LayerNorm), 3
    width = 4 + 2 * n_groups * (2 if tag == "fsdp" else 1)
    for r in res:
        for per_example in (False, True):
            for accumulate in (1, 2):
                run = r[(tag, per_example, accumulate)]
                want = "per-example" if per_example else "micro-batch"
                assert set(run["coverage"].values()) == {want}
                for tr, g2, batch, calls, _ in run["steps"]:
                    assert batch == WORLD * LOCAL
                    assert rel(tr, ref[per_example].trace_sigma) < 1e-9, (per_example, accumulate)
                    assert rel(g2, ref[per_example].grad_sq_norm) < 1e-9, (per_example, accumulate)
                    # ONE all-reduce of a few scalars per measured step, nothing else
                    assert calls == [("all_reduce", width)]
    for key in res[0]:
        if isinstance(key, tuple) and key[0] == tag:
            assert [s[:3] for s in res[0][key]["steps"]] == [s[:3] for s in res[1][key]["steps"]]


def test_fsdp_communication_and_gradients_untouched(ranks):
    res, _ = ranks
    for r in res:
        plain, tracked = r["fsdp_comms"]
        assert plain == tracked and "reduce_scatter_single" in plain
        assert r["fsdp_grads_equal"]
        assert r["hooks_left"] == 0


@pytest.mark.parametrize("tag", ["ddp", "fsdp"])
def test_uneven_batches_across_ranks(ranks, tag):
    """Rank 0 has 8 examples, rank 1 has 6: the unbiased two-batch estimate with the ranks'
    harmonic mean batch (mean losses: .grad is the mean over ranks of the ranks' means)."""
    from foresight.gns.estimators import _unbiased

    res, _ = ranks
    model = make_model()
    x, y = make_data(sum(UNEVEN))
    params = list(model.parameters())
    rank_means = [torch.autograd.grad(mse(model(_slice(x, r, UNEVEN)), _slice(y, r, UNEVEN)),
                                      params) for r in range(WORLD)]
    big = sum(float(((a + b) / 2).square().sum()) for a, b in zip(*rank_means))
    harmonic = WORLD / sum(1 / b for b in UNEVEN)
    small = sum(sum(float(g.square().sum()) for g in gs) for gs in rank_means) / WORLD
    per_ex = sum(sq_grad(model, x[i : i + 1], y[i : i + 1]) for i in range(len(x))) / len(x)
    expect = {False: _unbiased(small, big, harmonic, WORLD * harmonic),
              True: _unbiased(per_ex, big, 1.0, WORLD * harmonic)}
    for r in res:
        for per_example in (False, True):
            tr, g2, batch = r[("uneven", tag, per_example)]
            assert batch == sum(UNEVEN)
            assert rel(g2, expect[per_example][0]) < 1e-6
            assert rel(tr, expect[per_example][1]) < 1e-6


def test_no_sync_misuse_hsdp_and_skipped_steps(ranks):
    res, _ = ranks
    for r in res:
        for tag in ("ddp", "fsdp"):
            assert "did not synchronise" in r[("nosync", tag)]
        assert "2-D device mesh" in r["hsdp"]
        assert r["one_rank_skips"] == (1, 0, True)
        skipped, steps, tr = r["after_skip"]
        assert (skipped, steps) == (1, 1) and math.isfinite(tr)
        assert [c.count("all_reduce") for c in r["every2"]] == [1, 0, 1, 0]
        assert r["unfrozen"] == [None, "micro-batch"]
        assert all(len(c) == c.count("all_reduce") for c in r["every2"])
    from foresight import ei as fei

    x, _ = make_data()
    assert rel(res[0]["hsdp_ei"], fei.report(make_model(), x[:1]).ei) < 1e-12


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # sample-limited values: not the subject
def test_weight_metrics_of_a_sharded_model_equal_the_unsharded_model(ranks):
    from foresight import causal
    from foresight import ei as fei
    from foresight.ib import information_plane

    res, _ = ranks
    x, _ = make_data()
    model = make_model()
    want = {
        "ei_report": fei.report(model, x[:1]).to_dict(),
        "causal": causal.report(model, samples=3000, seed=3).to_dict(),
        "ib": information_plane(model, x, labels_of(x), bins=10, range=(-1, 1)).to_dict(),
    }
    for r in res:
        for key, expected in want.items():
            assert_close(r[key], expected, key)
        assert rel(r["ei"], want["ei_report"]["ei"]) < 1e-6
        assert r["still_sharded"] and r["grads_after_measuring"]
        # one all-gather per sharded group (3: two layers and the root), nothing else
        assert r["ei_comms"] == ["all_gather_single"] * 3
    for key in ("ei_report", "causal", "causal_seed_none", "ib"):
        assert res[0][key] == res[1][key], key  # identical on every rank


def assert_close(got, want, where):
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want)):
            assert_close(a, b, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert (math.isnan(got) and math.isnan(want)) or abs(got - want) <= 1e-6 * max(
            abs(want), 1e-12), (where, got, want)
    else:
        assert got == want, (where, got, want)


def single_process_monitor(path):
    """The same training and Monitor in one process: each step's batch is both ranks' data."""
    from foresight.monitor import EI, Function, GradientNoise, InformationPlane, Monitor
    from foresight.monitor.sinks import CSVSink
    from foresight.schedule import every

    x, y = make_data()
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    metrics = [GradientNoise(per_layer=True), EI(input=x[:1], layers=True),
               Function(weight_norm, name="wnorm"),
               InformationPlane(x, labels_of(x), bins=8, range=(-1, 1))]
    mon = Monitor(model, metrics, schedule=every(2), unit="step", sinks=[CSVSink(path)])
    for _ in range(4):
        loss = mse(model(x), y)
        loss.backward()
        mon.step(loss=loss)
        opt.step()
        opt.zero_grad()
    mon.close()
    return list(mon.history)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # sample-limited values: not the subject
@pytest.mark.parametrize("tag", ["ddp", "fsdp"])
def test_monitor_csv_written_once_by_rank_0_with_single_process_values(ranks, tag, tmp_path):
    res, tmp = ranks
    runs = [r["monitor_" + tag] for r in res]
    assert [run["started"] for run in runs] == [True, False]  # only rank 0 wrote
    assert same_records(runs[0]["history"], runs[1]["history"])  # identical on every rank
    single = single_process_monitor(tmp_path / "single.csv")
    rows, want = read_csv(tmp / f"{tag}.csv"), read_csv(tmp_path / "single.csv")
    assert [r["step"] for r in rows] == ["0", "2"]
    assert list(rows[0]) == list(want[0])  # the same columns (layer names without "module.")
    for got, exp in zip(rows, want):
        for key in exp:
            assert same_value(cell(got[key]), cell(exp[key]), 1e-6), (key, got[key], exp[key])
    assert len(runs[0]["history"]) == len(single) == 2


@pytest.fixture(scope="module")
def lightning_single(tmp_path_factory):
    """The same data in one process (each step's batch is both ranks' batches)."""
    pl = pytest.importorskip("lightning.pytorch")
    from foresight.integrations.lightning import ForesightCallback
    from foresight.monitor import Function

    callback = ForesightCallback(["gns", Function(weight_norm, name="wnorm")], unit="step",
                                 log=False)
    model = lightning_fit(pl, callback, devices=1, strategy="auto",
                          root=tmp_path_factory.mktemp("pl"))
    return list(callback.history), [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("tag", ["ddp", "fsdp"])
def test_lightning_two_processes(ranks, lightning_single, tag):
    """strategy="ddp", and ModelParallelStrategy with fully_shard in configure_model."""
    res, tmp = ranks
    runs = [r["lightning_" + tag] for r in res]
    assert [run["world"] for run in runs] == [WORLD, WORLD]
    assert same_records(runs[0]["history"], runs[1]["history"])
    assert [run["started"] for run in runs] == [True, False]
    rows = read_csv(tmp / f"pl_{tag}.csv")
    assert same_records([{"t": float(r["trace_sigma"])} for r in rows],
                        [{"t": h["trace_sigma"]} for h in runs[0]["history"]])
    single, weights = lightning_single
    assert len(single) == len(runs[0]["history"]) == 2
    for got, exp in zip(runs[0]["history"], single):
        for key in ("b_simple", "trace_sigma", "grad_sq_norm", "wnorm"):
            assert same_value(got[key], exp[key], 1e-6), (key, got, exp)
    for a, b in zip(runs[0]["final"], weights):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_every_section_ran(ranks):
    """Every section ran on every rank; prints where the workers' time went (pytest -s)."""
    res, _ = ranks
    print({k: round(v, 2) for k, v in res[0]["timing"].items()})
    for r in res:
        assert set(r["timing"]) == set(SECTIONS)
