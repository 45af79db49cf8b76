"""GradientNoiseScale: agreement with the one-shot estimators, accumulation, loss scaling,
bit-identical training, state, hooks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from foresight.gns import GradientNoiseScale, noise_scale, two_batch
from tests.reference.model_state import assert_unchanged, snapshot


def mse(out, y):
    return (out - y).square().mean()


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.LayerNorm(16), nn.Linear(16, 2)).double()


def data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = x[:, :2].sin() + 0.3 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, y


def close(a, b, rel=1e-9):
    return b == pytest.approx(a, rel=rel, abs=1e-12)


def test_one_step_equals_noise_scale_per_layer():
    model = mlp()
    x, y = data(32)
    ref = noise_scale(model, mse, x, y)
    with GradientNoiseScale(model, beta=0.0) as gns:
        mse(model(x), y).backward()
        est = gns.step()
    assert close(ref.trace_sigma, est.trace_sigma)
    assert close(ref.grad_sq_norm, est.grad_sq_norm)
    assert est.batch_size == 32
    by_name = {lay.name: lay for lay in est.layers}
    for lay in ref.layers:
        assert close(lay.trace_sigma, by_name[lay.name].trace_sigma)


@pytest.mark.parametrize("per_example", [True, False])
def test_accumulation_equals_one_big_batch(per_example):
    x, y = data(32, seed=1)
    model = mlp()
    with GradientNoiseScale(model, beta=0.0, per_example=per_example) as gns:
        for k in range(4):
            sl = slice(8 * k, 8 * k + 8)
            (mse(model(x[sl]), y[sl]) / 4).backward()
        acc = gns.step()
    if per_example:  # identical to the single big batch of 32
        ref = noise_scale(model, mse, x, y)
    else:  # the two-batch estimator with b = micro-batch, B = accumulated batch
        params = list(model.parameters())
        small = torch.stack(
            [
                sum(
                    g.square().sum()
                    for g in torch.autograd.grad(
                        mse(model(x[8 * k : 8 * k + 8]), y[8 * k : 8 * k + 8]), params
                    )
                )
                for k in range(4)
            ]
        ).mean()
        big = sum(g.square().sum() for g in torch.autograd.grad(mse(model(x), y), params))
        ref = two_batch(float(small), float(big), 8, 32)
    assert acc.batch_size == 32
    assert close(ref.trace_sigma, acc.trace_sigma)
    assert close(ref.grad_sq_norm, acc.grad_sq_norm)


def test_sum_reduction_and_loss_scale():
    x, y = data(16, seed=2)
    model = mlp()
    ref = noise_scale(model, mse, x, y)
    with GradientNoiseScale(model, beta=0.0, loss_reduction="sum") as gns:
        ((model(x) - y).square().mean(1).sum() * 1024.0).backward()
        est = gns.step(loss_scale=1024.0)
    assert close(ref.trace_sigma, est.trace_sigma)
    assert close(ref.grad_sq_norm, est.grad_sq_norm)


def test_nonfinite_steps_are_skipped():
    x, y = data(16, seed=3)
    model = mlp()
    gns = GradientNoiseScale(model, beta=0.5)
    mse(model(x), y).backward()
    first = gns.step()
    model.zero_grad()
    (mse(model(x), y) * float("inf")).backward()
    second = gns.step(loss_scale=1.0)
    assert gns.skipped == 1 and gns.steps == 1
    assert second.trace_sigma == first.trace_sigma
    gns.close()


def test_smoothing_is_ema_of_parts_with_bias_correction_and_keeps_negatives():
    model = mlp()
    gns = GradientNoiseScale(model, beta=0.9)
    raws = []
    for s in range(5):
        x, y = data(4, seed=10 + s)
        model.zero_grad()
        mse(model(x), y).backward()
        est = gns.step()
        raws.append(gns.last_raw)
    num = sum(0.9 ** (4 - i) * 0.1 * r.trace_sigma for i, r in enumerate(raws))
    den = sum(0.9 ** (4 - i) * 0.1 * r.grad_sq_norm for i, r in enumerate(raws))
    corr = 1 - 0.9**5
    assert close(num / corr, est.trace_sigma)
    assert close(den / corr, est.grad_sq_norm)
    if est.resolved:
        assert close(num / den, est.b_simple)
    else:  # never a negative batch size: nan with the reason
        assert est.b_simple != est.b_simple and "resolved" in est.reason
    assert any(r.grad_sq_norm < 0 for r in raws)  # tiny batches: negative raw |G|^2 estimates
    gns.close()


def test_converges_on_a_fixed_model():
    # linear regression, x ~ N(0, I_d): |G|^2 = Delta^2, tr(Sigma) = d (Delta^2 + s^2) + Delta^2
    d, sigma = 4, 0.5
    model = nn.Linear(d, 1, bias=False).double()
    w_star = torch.zeros(1, d, dtype=torch.float64)
    delta = torch.tensor([[0.6, -0.4, 0.2, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(w_star + delta)
    gen = torch.Generator().manual_seed(0)
    delta2 = float(delta.square().sum())
    with GradientNoiseScale(model, beta=0.99) as gns:
        for _ in range(400):
            x = torch.randn(32, d, generator=gen, dtype=torch.float64)
            y = x @ w_star.T + sigma * torch.randn(32, 1, generator=gen, dtype=torch.float64)
            model.zero_grad()
            (0.5 * (model(x) - y).square().mean()).backward()
            est = gns.step()
    assert est.grad_sq_norm == pytest.approx(delta2, rel=0.1)
    assert est.trace_sigma == pytest.approx(d * (delta2 + sigma**2) + delta2, rel=0.1)


def train(model, steps, tracker=False, accumulate=1):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(5)
    gns = GradientNoiseScale(model) if tracker else None
    for _ in range(steps):
        for _ in range(accumulate):
            x = torch.randn(8, 5, generator=gen)
            y = x[:, :2].sin()
            (mse(model(x), y) / accumulate).backward()
        if gns is not None:
            gns.step()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
    if gns is not None:
        gns.close()
    return model


@pytest.mark.parametrize("accumulate", [1, 2])
def test_training_is_bit_identical_with_and_without_tracker(accumulate):
    torch.manual_seed(1)
    base = nn.Sequential(
        nn.Linear(5, 16), nn.ReLU(inplace=True), nn.LayerNorm(16), nn.Linear(16, 2)
    )
    a = train(copy.deepcopy(base), 15, tracker=False, accumulate=accumulate)
    b = train(copy.deepcopy(base), 15, tracker=True, accumulate=accumulate)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_state_dict_round_trip():
    model = mlp()
    gns = GradientNoiseScale(model, beta=0.8)
    for s in range(3):
        x, y = data(8, seed=20 + s)
        model.zero_grad()
        mse(model(x), y).backward()
        gns.step()
    state = gns.state_dict()
    other = GradientNoiseScale(model, beta=0.5)
    other.load_state_dict(state)
    assert other.estimate().trace_sigma == gns.estimate().trace_sigma
    assert other.steps == 3 and other.beta == 0.8
    gns.close()
    other.close()
    with pytest.raises(ValueError, match="groups"):
        GradientNoiseScale(nn.Linear(2, 2)).load_state_dict(state)


def test_close_removes_every_hook():
    model = mlp()
    model[0].register_forward_hook(lambda *a: None)
    before = snapshot(model)
    gns = GradientNoiseScale(model)
    gns.close()
    assert_unchanged(model, before)
    assert all(not p._backward_hooks for p in model.parameters())
    with pytest.raises(RuntimeError, match="closed"):
        gns.step()


class _ScaleFn(torch.autograd.Function):
    """``x * s`` with its own backward: invisible to the layer core."""

    @staticmethod
    def forward(ctx, x, s):
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensors
        return g * s, (g * x).sum(0)


class Scale(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.s = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return _ScaleFn.apply(x, self.s)


def test_invisible_parameters_use_micro_batches_or_warn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), Scale(4), nn.Linear(4, 2)).double()
    x, y = data(16, seed=4)
    with GradientNoiseScale(model, beta=0.0) as gns, pytest.warns(UserWarning, match="'1'"):
        mse(model(x), y).backward()
        est = gns.step()
    assert [lay.name for lay in est.layers] == ["0", "2"]
    model.zero_grad()
    with GradientNoiseScale(model, beta=0.0) as gns:
        for k in range(2):
            (mse(model(x[8 * k : 8 * k + 8]), y[8 * k : 8 * k + 8]) / 2).backward()
        est = gns.step()
    assert [lay.name for lay in est.layers] == ["0", "1", "2"]
    params = [model[1].s]
    small = (
        sum(
            float(
                torch.autograd.grad(mse(model(x[8 * k : 8 * k + 8]), y[8 * k : 8 * k + 8]), params)[
                    0
                ]
                .square()
                .sum()
            )
            for k in range(2)
        )
        / 2
    )
    big = float(torch.autograd.grad(mse(model(x), y), params)[0].square().sum())
    ref = two_batch(small, big, 8, 16)
    assert close(ref.trace_sigma, est.layers[1].trace_sigma)


def test_tied_weights_go_through_micro_batches():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(torch.tanh(self.a(x)))

    model = Tied().double()
    x = torch.randn(16, 4, dtype=torch.float64)
    with GradientNoiseScale(model, beta=0.0) as gns:
        for k in range(2):
            (mse(model(x[8 * k : 8 * k + 8]), x[8 * k : 8 * k + 8]) / 2).backward()
        est = gns.step()
    assert est.trace_sigma > 0 and est.batch_size == 16


def test_train_mode_batchnorm_needs_two_batch_mode():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    with GradientNoiseScale(model) as gns:
        mse(model(x), y).backward()
        with pytest.raises(ValueError, match="per_example=False"):
            gns.step()
    model.zero_grad()
    with GradientNoiseScale(model, per_example=False, beta=0.0) as gns:
        for k in range(2):
            (mse(model(x[8 * k : 8 * k + 8]), y[8 * k : 8 * k + 8]) / 2).backward()
        assert gns.step().batch_size == 16


def test_parameter_groups_from_optimizer():
    model = mlp()
    opt = torch.optim.SGD(
        [
            {"params": model[0].parameters()},
            {"params": [*model[2].parameters(), *model[3].parameters()]},
        ],
        lr=0.1,
    )
    groups = {f"group{i}": g["params"] for i, g in enumerate(opt.param_groups)}
    x, y = data(16)
    with GradientNoiseScale(model, groups=groups, beta=0.0) as gns:
        mse(model(x), y).backward()
        est = gns.step()
    assert [lay.name for lay in est.layers] == ["group0", "group1"]
    ref = noise_scale(model, mse, x, y)
    assert close(ref.trace_sigma, est.trace_sigma)


def test_bad_arguments():
    with pytest.raises(ValueError, match="beta"):
        GradientNoiseScale(nn.Linear(2, 2), beta=1.0)
    with pytest.raises(ValueError, match="loss_reduction"):
        GradientNoiseScale(nn.Linear(2, 2), loss_reduction="none")
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="trainable"):
        GradientNoiseScale(frozen)
    _ = F


def test_plot_noise_scale_over_training():
    pytest.importorskip("matplotlib")
    from foresight.plot.gns import noise_scale_over_training

    model = mlp()
    ests = []
    with GradientNoiseScale(model, beta=0.5) as gns:
        for s in range(4):
            x, y = data(16, seed=30 + s)
            model.zero_grad()
            mse(model(x), y).backward()
            ests.append(gns.step())
    fig = noise_scale_over_training(range(4), ests, multiple_of=8)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("suggested" in t for t in labels)
    with pytest.raises(ValueError, match="steps"):
        noise_scale_over_training(range(3), ests)


def test_measurements_inside_a_step_do_not_disturb_the_tracker():
    x, y = data(32, seed=7)
    model = mlp()
    ref = noise_scale(model, mse, x, y)
    with GradientNoiseScale(model, beta=0.0) as gns:
        noise_scale(model, mse, x[:8], y[:8])  # e.g. a Monitor measuring between steps
        mse(model(x), y).backward()
        noise_scale(model, mse, x[:8], y[:8])
        est = gns.step()
    assert est.batch_size == 32
    assert close(ref.trace_sigma, est.trace_sigma)


def test_with_torch_grad_scaler():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    try:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    except (AttributeError, RuntimeError, TypeError):  # pragma: no cover - old torch
        pytest.skip("no CPU GradScaler")
    x, y = (t.float() for t in data(16, seed=8))
    ref = noise_scale(model, mse, x, y)
    with GradientNoiseScale(model, beta=0.0) as gns:
        scaler.scale(mse(model(x), y)).backward()
        est = gns.step(loss_scale=scaler.get_scale())
        scaler.step(opt)
        scaler.update()
    assert est.trace_sigma == pytest.approx(ref.trace_sigma, rel=1e-4)
    assert est.grad_sq_norm == pytest.approx(ref.grad_sq_norm, rel=1e-3)
