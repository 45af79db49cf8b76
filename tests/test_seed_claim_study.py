"""examples/seed_claim_study.py: the batched trainer against plain per-seed SGD, the Wilson
interval against its definition, and a short version of the study (2 seeds, 4 runs)."""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys

import pytest
import torch
import torch.nn.functional as F

import foresight.ei as fei

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "seed_claim_study.py"


@pytest.fixture(scope="module")
def study():
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("seed_claim_study", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["seed_claim_study"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("seed_claim_study", None)


@pytest.mark.parametrize("model", ["linear", "hidden"])
def test_batched_sgd_equals_per_seed_autograd_sgd(study, model):
    seeds, steps, lr, n, bs = (0, 1, 2), 15, 0.4, 50, 8
    batched = study.BatchedNets([study.network(model, s) for s in seeds])
    plain = [study.network(model, s) for s in seeds]
    optimizers = [torch.optim.SGD(net.parameters(), lr=lr) for net in plain]
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(len(seeds), n, 64, generator=gen)
    y = torch.randint(0, 10, (len(seeds), n), generator=gen)
    rows = torch.arange(len(seeds))[:, None]
    for _ in range(steps):
        idx = torch.randint(0, n, (len(seeds), bs), generator=gen)
        batched.sgd_step(x[rows, idx], y[rows, idx], lr)
        for s, (net, opt) in enumerate(zip(plain, optimizers)):
            opt.zero_grad()
            F.cross_entropy(net(x[s, idx[s]]), y[s, idx[s]]).backward()
            opt.step()
    batched.sync()
    for got, expected in zip(batched.nets, plain):
        for a, b in zip(got.parameters(), expected.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    logits = batched(x)
    for s, net in enumerate(plain):
        with torch.no_grad():
            torch.testing.assert_close(logits[s], net(x[s]), rtol=1e-5, atol=1e-5)


def test_train_records_what_a_plain_loop_measures(study):
    """The data split, initial weights, batch order and measurements of one seed."""
    from foresight import data

    config = study.Config("linear", n_train=40, lr=0.3, seeds=(4,), steps=24, every=6,
                          batch_size=8)
    (run,) = study.train(config)
    split = data.digits(n_train=40, seed=4)
    net = study.network("linear", 4)
    opt = torch.optim.SGD(net.parameters(), lr=0.3)
    gen = torch.Generator().manual_seed(4)
    order, pos, expected = torch.randperm(40, generator=gen), 0, []
    schedule = study.MeasureSchedule(6)
    for step in range(25):
        if schedule(step) or step == 24:
            with torch.no_grad():
                expected.append({
                    "step": step,
                    "test_loss": float(F.cross_entropy(net(split.x_test), split.y_test)),
                    "train_accuracy": float((net(split.x_train).argmax(1) == split.y_train)
                                            .double().mean()),
                    **{f"ei_{k}": fei.ei(net, split.x_train[:1], norm=f)
                       for k, f in study.NORMS.items()},
                })
        if step == 24:
            break
        if pos + 8 > 40:
            order, pos = torch.randperm(40, generator=gen), 0
        idx = order[pos:pos + 8]
        pos += 8
        opt.zero_grad()
        F.cross_entropy(net(split.x_train[idx]), split.y_train[idx]).backward()
        opt.step()
    got = run["history"]
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for g, e in zip(got, expected):
        for key, value in e.items():
            assert g[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (g["step"], key)


def brute_force_wilson(k: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson interval by definition: every p whose score test does not reject k/n."""
    grid = [i / 200_000 for i in range(200_001)]
    inside = [p for p in grid if (k / n - p) ** 2 <= z * z * p * (1 - p) / n]
    return min(inside), max(inside)


@pytest.mark.parametrize(("k", "n"), [(0, 5), (1, 10), (8, 10), (17, 20), (20, 20), (37, 120)])
def test_wilson_interval_against_its_definition(study, k, n):
    lo, hi = study.wilson(k, n)
    blo, bhi = brute_force_wilson(k, n, study.Z95)
    assert lo == pytest.approx(blo, abs=2e-5) and hi == pytest.approx(bhi, abs=2e-5)
    assert lo <= k / n <= hi
    assert all(math.isnan(v) for v in study.wilson(0, 0))


def test_wilson_interval_known_value(study):
    lo, hi = study.wilson(8, 10)  # the textbook example: 8 of 10 -> [0.490, 0.943]
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)


def test_short_study(study, tmp_path):
    """2 seeds x {64-10, 64-32-10} on 100 digits at lr 0.5: what the full study measures."""
    configs = study.grid(seeds=(0, 1), n_trains=(100,), lrs=(0.5,), points=100)
    runs = study.run_grid(configs, procs=1, verbose=False)
    assert len(runs) == 4
    for run in runs:  # each run overfits: test-loss minimum well before the end, rising after
        hist = run["history"]
        test = [r["test_loss"] for r in hist]
        best = min(range(len(test)), key=test.__getitem__)
        assert hist[best]["step"] < 0.5 * run["steps"]
        assert test[-1] > test[best]
        after = range(best, len(hist))
        assert study.spearman([hist[i]["step"] for i in after], [test[i] for i in after]) > 0.5
        assert hist[-1]["train_loss"] < 0.2 * hist[0]["train_loss"]
    rows = study.analyse(runs)
    assert len(rows) == 4 * len(study.NORMS)
    assert all(r["overfits"] for r in rows)
    for _, _, sel in study.groups(rows):
        s = study.summarise(sel)
        assert s["runs"] == len(sel) == 2
        checks = {
            "phase3": lambda r: r["phase3"],
            "warning": lambda r: r["ei_min_precedes"],
            "steeper_after": lambda r: r["ei_slope_after"] > r["ei_slope_before"],
        }
        for key, test in checks.items():  # the fractions are counted from the runs ...
            f = s[key]
            assert f["k"] == sum(1 for r in sel if test(r)) and f["n"] == 2
            assert f["lo"] <= f["p"] <= f["hi"]  # ... and their intervals hold the estimate
        for r in sel:  # the early-warning lead is the distance of the two minima
            if r["ei_min_precedes"]:
                assert r["lead"] == r["test_loss_min_step"] - r["ei_first_min_step"] > 0
    cells = study.table_cells(rows)
    assert len(cells) == 1 + len(study.MEASURES)
    assert all(len(row) == 1 + len(study.groups(rows)) for row in cells)
    text = study.format_rst(cells, "t")
    assert text.startswith(".. list-table:: t") and text.count("   * - ") == len(cells)
    sens = study.sensitivity(runs, prominences=(0.05,))
    assert len(sens) == 1 + len(study.MODELS)
    lin = next(c for c in cells[0] if c.endswith("lin_norm"))
    column = cells[0].index(lin)
    phase3 = next(row for row in cells if row[0].startswith("phase 3"))
    assert sens[1][2] == phase3[column]  # the same default threshold gives the same fraction
    pytest.importorskip("matplotlib")
    study.figure(rows, tmp_path / "study.png")
    assert (tmp_path / "study.png").stat().st_size > 10_000
