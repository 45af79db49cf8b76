"""BatchSizeWarmup: growth rules, learning-rate rules, measured schedules, the optimizer, and a
run that grows the batch with the tracked noise scale."""

from __future__ import annotations

import math

import pytest
import torch

from foresight.gns import BatchSizeWarmup, GradientNoiseScale, NoiseScale
from foresight.gns.tasks import linear_regression


def test_growth_is_monotone_limited_rounded_and_capped():
    w = BatchSizeWarmup(8, 0.1, max_batch_size=100, multiple_of=4, max_growth=1.5)
    got = [w.update(v) for v in (1000.0, 1000.0, 5.0, math.nan, -3.0, 1000.0, 1000.0, 1000.0)]
    assert got == [12, 16, 16, 16, 16, 24, 36, 52]
    assert all(b % 4 == 0 for b in got)
    assert [w.update(1000.0) for _ in range(3)] == [76, 100, 100]  # 100 caps it (not a multiple)
    assert w.lr == pytest.approx(0.1 * 100 / 8)
    assert [h["batch_size"] for h in w.history][-1] == 100


def test_learning_rate_rules():
    for rule, expected in (("linear", 0.4), ("sqrt", 0.2), ("constant", 0.1)):
        w = BatchSizeWarmup(16, 0.1, max_batch_size=64, lr_rule=rule, max_growth=4)
        w.update(64)
        assert w.lr == pytest.approx(expected)
    w = BatchSizeWarmup(16, 0.1, max_batch_size=64, lr_rule=lambda b: 0.01 * math.log2(b))
    assert w.lr == pytest.approx(0.04)
    w.update(32)
    assert w.lr == pytest.approx(0.05)


def test_noise_scale_estimates_and_lower_bounds():
    resolved = NoiseScale.from_parts(0.5, 40.0, 8, grad_sq_norm_se=0.1)  # b_simple 80
    unresolved = NoiseScale.from_parts(0.0, 40.0, 8, grad_sq_norm_se=0.25)  # lower bound 80
    w = BatchSizeWarmup(8, 0.1, max_batch_size=512, max_growth=100)
    assert w.update(unresolved) == 8  # skipped
    assert w.update(resolved) == 80
    careful = BatchSizeWarmup(8, 0.1, max_batch_size=512, max_growth=100, use_lower_bound=True)
    assert careful.update(unresolved) == 80


def test_apply_accumulation_state_and_errors():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD([{"params": [model.weight], "lr": 0.1},
                           {"params": [model.bias], "lr": 0.01}], lr=0.1)
    w = BatchSizeWarmup(16, 0.1, max_batch_size=128, multiple_of=16)
    w.apply(opt)
    w.update(64)
    w.apply(opt)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 0.02])
    assert w.micro_batches(16) == 2
    other = BatchSizeWarmup(16, 0.1, max_batch_size=128, multiple_of=16)
    other.load_state_dict(w.state_dict())
    assert (other.batch_size, other.lr, other.updates) == (32, w.lr, 1)
    for bad in (dict(batch_size=0), dict(max_batch_size=4), dict(lr=-1.0),
                dict(lr_rule="cubic"), dict(max_growth=1.0), dict(factor=0.0)):
        args = {**dict(batch_size=8, lr=0.1, max_batch_size=64), **bad}
        with pytest.raises(ValueError):
            BatchSizeWarmup(args.pop("batch_size"), args.pop("lr"), **args)
    with pytest.raises(ValueError, match="measurement"):
        BatchSizeWarmup(8, 0.1, max_batch_size=64).update()
    with pytest.raises(ValueError, match="examples"):
        BatchSizeWarmup.from_measurements([(0, 8)], 8, 0.1, max_batch_size=64).update()


def test_from_measurements_follows_the_schedule():
    w = BatchSizeWarmup.from_measurements([(1000, 64), (0, 8), (5000, 512)], 8, 0.1,
                                          max_batch_size=1024, max_growth=100)
    assert [w.update(examples=n) for n in (0, 999, 1000, 4999, 7000)] == [8, 8, 64, 64, 512]
    with pytest.raises(ValueError, match="positive"):
        BatchSizeWarmup.from_measurements([(0, -1.0)], 8, 0.1, max_batch_size=64)


def test_warmup_follows_the_tracked_noise_scale_in_a_training_loop():
    # linear regression: B_simple grows as the loss falls, and the batch grows with it
    task = linear_regression(seed=0)
    torch.manual_seed(0)
    model = task.model_fn()
    warmup = BatchSizeWarmup(16, 0.5, max_batch_size=1024,
                             lr_rule=lambda b: min(0.5 * b / 16, 1.0))  # below 2/lambda_max
    opt = torch.optim.SGD(model.parameters(), lr=warmup.lr)
    gen = torch.Generator().manual_seed(1)
    seen, previous = [], 16
    with GradientNoiseScale(model, beta=0.9) as gns:
        for step in range(1, 3000):
            x, y = task.sample(warmup.batch_size, gen)
            assert len(x) == warmup.batch_size
            task.loss_fn(model(x), y).backward()
            est = gns.step()
            opt.step()
            opt.zero_grad()
            if task.eval_data(model) <= task.target_loss:
                break
            if step % 5 == 0:
                b = warmup.update(est)
                warmup.apply(opt)
                assert opt.param_groups[0]["lr"] == pytest.approx(min(0.5 * b / 16, 1.0))
                if est.resolved:
                    assert b == max(previous, min(int(est.b_simple), 2 * previous, 1024))
                else:
                    assert b == previous
                seen.append(b)
                previous = b
    assert step < 3000 and warmup.batch_size > 32  # it reached the target, the batch grew
    assert seen == sorted(seen)
