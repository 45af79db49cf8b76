"""The tracker on changing models: frozen and unfrozen layers, parameters used late, uneven
micro-batches, forward passes that raise, measuring every k-th step, compiled models, bf16."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from foresight.gns import GradientNoiseScale, noise_scale


def half_mse(out, y):
    return 0.5 * (out - y).square().sum(1).mean()


def regression(d: int, n: int, w_true: torch.Tensor, sigma: float, gen: torch.Generator):
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = x @ w_true + sigma * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    return x, y


def linear_model(d: int, w0: torch.Tensor) -> nn.Linear:
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w0.t())
    return model


@pytest.mark.parametrize("per_example", [True, False])
def test_uneven_micro_batches_are_unbiased(per_example):
    """Micro-batches of 8, 8 and 5 examples: the mean of the raw estimates over many steps is the
    closed form of linear regression (SCIENCE.md section 2): |G|^2 = D^2,
    tr = d(D^2 + s^2) + D^2."""
    d, sigma = 4, 0.7
    gen = torch.Generator().manual_seed(0)
    w_true = torch.randn(d, 1, generator=gen, dtype=torch.float64)
    delta = torch.randn(d, 1, generator=gen, dtype=torch.float64) * 0.6
    model = linear_model(d, w_true + delta)
    sizes = (8, 8, 5)
    total = sum(sizes)
    trs, g2s = [], []
    with GradientNoiseScale(model, beta=0.0, per_example=per_example) as gns:
        for _ in range(600):
            for b in sizes:
                x, y = regression(d, b, w_true, sigma, gen)
                (half_mse(model(x), y) * (b / total)).backward()
            est = gns.step()
            trs.append(est.trace_sigma)
            g2s.append(est.grad_sq_norm)
            model.zero_grad()
    d2 = float(delta.square().sum())
    tr_true, g2_true = d * (d2 + sigma**2) + d2, d2
    tr_mean = sum(trs) / len(trs)
    tr_se = (sum((t - tr_mean) ** 2 for t in trs) / (len(trs) - 1) / len(trs)) ** 0.5
    g2_mean = sum(g2s) / len(g2s)
    g2_se = (sum((t - g2_mean) ** 2 for t in g2s) / (len(g2s) - 1) / len(g2s)) ** 0.5
    assert abs(tr_mean - tr_true) < 4 * tr_se, (tr_mean, tr_true, tr_se)
    assert abs(g2_mean - g2_true) < 4 * g2_se, (g2_mean, g2_true, g2_se)


def test_uneven_micro_batches_without_noise_give_zero_variance():
    """Every example has the same gradient: tr(Sigma) is 0 whatever the micro-batch sizes."""
    model = nn.Linear(3, 1).double()
    x1 = torch.randn(1, 3, dtype=torch.float64)
    y1 = torch.randn(1, 1, dtype=torch.float64)
    with GradientNoiseScale(model, beta=0.0, per_example=False) as gns:
        for b in (8, 8, 5):
            (half_mse(model(x1.expand(b, 3)), y1.expand(b, 1)) * (b / 21)).backward()
        est = gns.step()
    assert abs(est.trace_sigma) < 1e-12 * max(1.0, est.grad_sq_norm)
    assert est.grad_sq_norm > 0


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3), nn.Tanh(),
                         nn.Linear(3, 1)).double()


def batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4, generator=g, dtype=torch.float64),
            torch.randn(n, 1, generator=g, dtype=torch.float64))


def one_step(gns, model, x, y):
    F.mse_loss(model(x), y).backward()
    est = gns.step()
    model.zero_grad()
    return est


def test_a_layer_frozen_mid_training_leaves_the_totals():
    model = mlp()
    x, y = batch()
    with GradientNoiseScale(model, beta=0.0) as gns:
        est = one_step(gns, model, x, y)
        assert [lay.name for lay in est.layers] == ["0", "2", "4"]
        model[2].requires_grad_(False)
        est = one_step(gns, model, x, y)
        assert [lay.name for lay in est.layers] == ["0", "4"]
        assert "2.weight" not in gns.coverage()
    ref = noise_scale(model, F.mse_loss, x, y)
    assert est.trace_sigma == pytest.approx(ref.trace_sigma, rel=1e-10)


def test_a_parameter_unfrozen_later_is_counted():
    model = mlp()
    model[0].requires_grad_(False)
    x, y = batch()
    with GradientNoiseScale(model, beta=0.0) as gns:
        est = one_step(gns, model, x, y)
        assert [lay.name for lay in est.layers] == ["2", "4"]
        model[0].requires_grad_(True)
        est = one_step(gns, model, x, y)
        assert [lay.name for lay in est.layers] == ["0", "2", "4"]
        assert gns.coverage()["0.weight"] == "per-example"
    ref = noise_scale(model, F.mse_loss, x, y)
    assert est.trace_sigma == pytest.approx(ref.trace_sigma, rel=1e-10)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.extra = nn.Linear(3, 3)
        self.out = nn.Linear(3, 1)

    def forward(self, x, use_extra=False):
        h = torch.tanh(self.a(x))
        if use_extra:
            h = torch.tanh(self.extra(h))
        return self.out(h)


def test_a_parameter_first_used_at_step_two_is_counted():
    model = Branchy().double()
    x, y = batch()
    with GradientNoiseScale(model, beta=0.0) as gns:
        F.mse_loss(model(x), y).backward()
        est = gns.step()
        model.zero_grad()
        assert "extra" not in [lay.name for lay in est.layers]
        F.mse_loss(model(x, use_extra=True), y).backward()
        est = gns.step()
        model.zero_grad()
    assert [lay.name for lay in est.layers] == ["a", "extra", "out"]
    ref = noise_scale(lambda_module(model), F.mse_loss, x, y)
    assert est.trace_sigma == pytest.approx(ref.trace_sigma, rel=1e-10)


def lambda_module(model):
    class WithExtra(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m(x, use_extra=True)

    return WithExtra()


class DataBranch(nn.Module):
    """Uses ``extra`` only when the data says so: the plan changes without the signature."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.extra = nn.Linear(3, 3)

    def forward(self, x):
        h = self.a(x)
        if bool(x[0, 0] > 100):
            h = self.extra(h)
        return h.sum(1, keepdim=True)


def test_a_forward_pass_that_leaves_its_plan_is_not_measured_then_replanned():
    model = DataBranch().double()
    x, y = batch()
    with GradientNoiseScale(model, beta=0.0) as gns:
        one_step(gns, model, x, y)
        x2 = x.clone()
        x2[0, 0] = 1000.0
        with pytest.warns(UserWarning, match="planned again"):
            F.mse_loss(model(x2), y).backward()
            gns.step()
        model.zero_grad()
        assert gns.skipped == 1
        assert gns.coverage()["extra.weight"].startswith("excluded")
        est = one_step(gns, model, x2, y)
    assert gns.coverage()["extra.weight"] == "per-example"
    assert [lay.name for lay in est.layers] == ["a", "extra"]


class Flaky(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.fail = False

    def forward(self, x):
        out = self.lin(x)
        if self.fail:
            raise RuntimeError("boom")
        return out


def test_a_forward_pass_that_raised_does_not_count():
    model = Flaky().double()
    x, y = batch()
    with GradientNoiseScale(model, beta=0.0, per_example=False) as gns:
        for k in range(2):
            (F.mse_loss(model(x[8 * k : 8 * k + 8]), y[8 * k : 8 * k + 8]) / 2).backward()
        model.fail = True
        with pytest.raises(RuntimeError, match="boom"):
            model(x[:5])
        model.fail = False
        est = gns.step()
    model.zero_grad()
    with GradientNoiseScale(model, beta=0.0, per_example=False) as gns:
        for k in range(2):
            (F.mse_loss(model(x[8 * k : 8 * k + 8]), y[8 * k : 8 * k + 8]) / 2).backward()
        ref = gns.step()
    assert est.batch_size == 16
    assert est.trace_sigma == pytest.approx(ref.trace_sigma, rel=1e-12)


def test_every_k_measures_only_those_steps(monkeypatch):
    import foresight.layers.capture as capture

    made = []
    real = capture.Capture.__init__

    def counting(self, *a, **k):
        made.append(1)
        real(self, *a, **k)

    monkeypatch.setattr(capture.Capture, "__init__", counting)
    model = mlp()
    x, y = batch()
    with GradientNoiseScale(model, beta=0.0, every=4) as gns:
        ests = [one_step(gns, model, x, y) for _ in range(10)]
    assert len(made) == 3  # steps 0, 4, 8
    assert gns.steps == 3
    assert ests[1].trace_sigma == ests[0].trace_sigma  # unmeasured: the smoothed value so far
    assert math.isfinite(ests[3].trace_sigma)  # (beta=0: no standard error, b_simple unresolved)


def test_every_must_be_positive():
    with pytest.raises(ValueError, match="every"):
        GradientNoiseScale(mlp(), every=0)


def test_compiled_model_raises_at_the_first_step_and_micro_batches_work():
    model = mlp()
    x, y = batch()
    compiled = torch.compile(model, backend="aot_eager")
    with GradientNoiseScale(compiled) as gns:
        F.mse_loss(compiled(x), y).backward()
        with pytest.raises(RuntimeError, match="torch.compile"):
            gns.step()
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    with GradientNoiseScale(compiled, beta=0.0, per_example=False) as gns:
        for k in range(2):
            (F.mse_loss(compiled(x[8 * k : 8 * k + 8]), y[8 * k : 8 * k + 8]) / 2).backward()
        est = gns.step()
    model.zero_grad()
    with GradientNoiseScale(model, beta=0.0, per_example=False) as gns:
        for k in range(2):
            (F.mse_loss(model(x[8 * k : 8 * k + 8]), y[8 * k : 8 * k + 8]) / 2).backward()
        ref = gns.step()
    torch._dynamo.reset()
    assert est.trace_sigma == pytest.approx(ref.trace_sigma, rel=1e-3)
    assert est.grad_sq_norm == pytest.approx(ref.grad_sq_norm, rel=1e-3)


def test_bf16_autocast_is_close_to_float32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.LayerNorm(64), nn.Linear(64, 4))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 16, generator=g)
    y = torch.randn(256, 4, generator=g) + x[:, :4]
    with GradientNoiseScale(model, beta=0.0) as gns:
        F.mse_loss(model(x), y).backward()
        ref = gns.step()
    model.zero_grad()
    with GradientNoiseScale(model, beta=0.0) as gns:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        F.mse_loss(out.float(), y).backward()
        est = gns.step()
    model.zero_grad()
    assert est.trace_sigma == pytest.approx(ref.trace_sigma, rel=2e-2)
    assert est.grad_sq_norm == pytest.approx(ref.grad_sq_norm, rel=2e-2)


class _Invisible(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s):
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensors
        return g * s, (g * x).sum(0)


class WithInvisible(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.s = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return _Invisible.apply(self.lin(x), self.s).sum(1, keepdim=True)


def test_coverage_names_how_each_parameter_is_measured():
    model = WithInvisible().double()
    x, y = batch()
    with GradientNoiseScale(model, beta=0.0) as gns:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            one_step(gns, model, x, y)
        cover = gns.coverage()
        assert cover["lin.weight"] == cover["lin.bias"] == "per-example"
        assert cover["s"].startswith("excluded: its gradient comes from an operation")
        for k in range(2):
            (F.mse_loss(model(x[8 * k : 8 * k + 8]), y[8 * k : 8 * k + 8]) / 2).backward()
        gns.step()
        assert gns.coverage()["s"] == "micro-batch"
