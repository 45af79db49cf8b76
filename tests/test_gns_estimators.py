"""noise_scale / two_batch / b_noise against closed forms; planning helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from foresight.gns import (
    NoiseScale,
    b_noise,
    examples_needed,
    noise_scale,
    optimal_lr,
    per_example_sq_norms,
    steps_needed,
    suggested_batch_size,
    two_batch,
)
from tests.reference.model_state import assert_unchanged, snapshot


def half_mse(out, y):
    return 0.5 * (out - y).square().mean()


def regression(n, variances, delta, sigma, seed=0):
    """x ~ N(0, diag(variances)), y = x.w* + noise; model weight w = w* + delta."""
    g = torch.Generator().manual_seed(seed)
    d = len(variances)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.tensor(variances).sqrt()
    w_star = torch.randn(d, generator=g, dtype=torch.float64)
    y = (x @ w_star + sigma * torch.randn(n, generator=g, dtype=torch.float64))[:, None]
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_((w_star + torch.tensor(delta, dtype=torch.float64))[None])
    return model, x, y


def test_noise_scale_equals_sample_formulas_exactly():
    model, x, y = regression(50, [1.0, 2.0, 0.5], [0.3, -0.2, 0.1], 0.7)
    est = noise_scale(model, half_mse, x, y)
    w = model.weight.detach()[0].numpy()
    xn, yn = x.numpy(), y[:, 0].numpy()
    g = xn * (xn @ w - yn)[:, None]  # per-example gradients
    b = len(g)
    s = np.mean(np.sum(g**2, 1))
    gb = np.sum(g.mean(0) ** 2)
    tr = b / (b - 1) * (s - gb)
    g2 = (b * gb - s) / (b - 1)
    assert est.trace_sigma == pytest.approx(tr, rel=1e-10)
    assert est.grad_sq_norm == pytest.approx(g2, rel=1e-10)
    # jackknife over 8 chunks (independent reference: tests/test_gns_uncertainty.py)
    assert est.grad_sq_norm_se > 0 and est.trace_sigma_se > 0
    if g2 > 2 * est.grad_sq_norm_se:
        assert est.resolved and est.b_simple == pytest.approx(tr / g2, rel=1e-9)
    else:
        assert not est.resolved and math.isnan(est.b_simple)
    one_pass = noise_scale(model, half_mse, x, y, se_chunks=1)  # no standard error: sign only
    assert one_pass.b_simple == pytest.approx(tr / g2, rel=1e-9)
    assert math.isnan(one_pass.grad_sq_norm_se)
    assert est.batch_size == 50
    assert isinstance(est, NoiseScale) and est.to_dict()["batch_size"] == 50


def test_noise_scale_population_closed_form():
    # x ~ N(0, I_d), |w - w*| = Delta: |G|^2 = Delta^2, tr(Sigma) = d (Delta^2 + s^2) + Delta^2.
    d, sigma = 4, 0.5
    delta = np.array([0.6, -0.4, 0.2, 0.0])
    delta2 = float(delta @ delta)
    model, x, y = regression(20000, [1.0] * d, delta.tolist(), sigma, seed=1)
    est = noise_scale(model, half_mse, x, y)
    assert est.grad_sq_norm == pytest.approx(delta2, rel=0.1)  # ~3 sigma at N = 20000
    assert est.trace_sigma == pytest.approx(d * (delta2 + sigma**2) + delta2, rel=0.05)


def test_noise_scale_layers_sum_to_total_and_batch_of_one_raises():
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    x, y = torch.randn(16, 3).double(), torch.randn(16, 1).double()
    before = snapshot(model)
    est = noise_scale(model, half_mse, x, y)
    assert_unchanged(model, before)
    assert [lay.name for lay in est.layers] == ["0", "2"]
    assert sum(lay.trace_sigma for lay in est.layers) == pytest.approx(est.trace_sigma)
    assert sum(lay.grad_sq_norm for lay in est.layers) == pytest.approx(est.grad_sq_norm)
    # same as two_batch with b = 1 on the per-example norms
    n = per_example_sq_norms(model, half_mse, x, y)
    gb = torch.autograd.grad(half_mse(model(x), y), list(model.parameters()))
    ref = two_batch(float(n.mean()), float(sum(g.square().sum() for g in gb)), 1, 16)
    assert est.trace_sigma == pytest.approx(ref.trace_sigma, rel=1e-9)
    assert est.grad_sq_norm == pytest.approx(ref.grad_sq_norm, rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        noise_scale(model, half_mse, x[:1], y[:1])


@pytest.mark.parametrize("b_small,b_big", [(1, 2), (3, 10), (16, 512)])
def test_two_batch_is_exact_on_expectations(b_small, b_big):
    g2, tr = 0.37, 5.1
    est = two_batch(g2 + tr / b_small, g2 + tr / b_big, b_small, b_big)
    assert est.grad_sq_norm == pytest.approx(g2, rel=1e-12)
    assert est.trace_sigma == pytest.approx(tr, rel=1e-12)
    assert est.b_simple == pytest.approx(tr / g2, rel=1e-12)
    assert est.batch_size == b_big


def test_two_batch_is_unbiased_over_disjoint_batches():
    # average of |G_b|^2 over all disjoint small batches of a fixed population = exact identity
    torch.manual_seed(3)
    g = torch.randn(12, 5, dtype=torch.float64) + 0.3
    big = float(g.mean(0).square().sum())
    small = float(
        torch.stack([g[i : i + 3].mean(0).square().sum() for i in range(0, 12, 3)]).mean()
    )
    est = two_batch(small, big, 3, 12)
    # for sampling without replacement from the 12 rows, the unbiased forms are the finite ones;
    # here we only check the algebra: both estimates reproduce small and big exactly
    assert est.grad_sq_norm + est.trace_sigma / 3 == pytest.approx(small, rel=1e-12)
    assert est.grad_sq_norm + est.trace_sigma / 12 == pytest.approx(big, rel=1e-12)


@pytest.mark.parametrize("b_small,b_big", [(0, 4), (4, 4), (5, 4), (-1, 3)])
def test_two_batch_rejects_bad_sizes(b_small, b_big):
    with pytest.raises(ValueError, match="b_small"):
        two_batch(1.0, 0.5, b_small, b_big)


def b_noise_reference(model, x, y):
    w = model.weight.detach()[0].numpy()
    xn, yn = x.numpy(), y[:, 0].numpy()
    g = xn * (xn @ w - yn)[:, None]
    b = len(g)
    h = xn.T @ xn / b
    q1 = np.mean(np.einsum("bi,ij,bj->b", g, h, g))
    gm = g.mean(0)
    qb = gm @ h @ gm
    return (b / (b - 1) * (q1 - qb)) / ((b * qb - q1) / (b - 1))


def test_b_noise_equals_sample_formula_exactly():
    model, x, y = regression(40, [3.0, 1.0, 0.2], [0.5, 0.1, -0.4], 0.5, seed=2)
    assert b_noise(model, half_mse, x, y) == pytest.approx(b_noise_reference(model, x, y), rel=1e-9)
    # all probes = exact; a probe subset is a different (unbiased) draw of q_1
    assert b_noise(model, half_mse, x, y, probes=40) == pytest.approx(
        b_noise_reference(model, x, y), rel=1e-9
    )
    assert math.isfinite(b_noise(model, half_mse, x, y, probes=7))
    for red in ("sum",):
        value = b_noise(model, lambda o, t: 0.5 * (o - t).square().sum(), x, y, loss_reduction=red)
        assert value == pytest.approx(b_noise_reference(model, x, y), rel=1e-9)


def test_b_noise_population_closed_form_differs_from_b_simple():
    # x ~ N(0, D): H = D, G = D delta, Sigma = D delta delta^T D + D (delta^T D delta + s^2):
    # B_noise = 1 + tr(D^2)(delta^T D delta + s^2) / delta^T D^3 delta,
    # B_simple = (|D delta|^2 + tr(D)(delta^T D delta + s^2)) / |D delta|^2.
    dvar = np.array([4.0, 1.0, 0.25])
    delta = np.array([0.0, 0.0, 1.0])
    s2 = 0.25
    quad = float(delta @ (dvar * delta)) + s2
    bn = 1 + float(np.sum(dvar**2)) * quad / float(delta @ (dvar**3 * delta))
    bs = (float(np.sum((dvar * delta) ** 2)) + float(dvar.sum()) * quad) / float(
        np.sum((dvar * delta) ** 2)
    )
    model, x, y = regression(20000, dvar.tolist(), delta.tolist(), math.sqrt(s2), seed=4)
    gen = torch.Generator().manual_seed(0)
    got_noise = b_noise(model, half_mse, x, y, probes=500, generator=gen)
    got_simple = noise_scale(model, half_mse, x, y).b_simple
    # tolerances: over seeds 0-4 the estimates were within 7% (b_noise) and 5% (b_simple)
    assert got_noise == pytest.approx(bn, rel=0.2)
    assert got_simple == pytest.approx(bs, rel=0.15)
    assert bn / bs > 10  # the closed forms differ by an order of magnitude ...
    assert got_noise / got_simple > 5  # ... and so do the estimates


def test_b_noise_equals_b_simple_for_isotropic_hessian():
    # H = D = I: tr(H Sigma) / G^T H G equals tr(Sigma)/|G|^2 in the population
    model, x, y = regression(20000, [1.0, 1.0, 1.0], [0.4, -0.3, 0.2], 0.5, seed=5)
    closed = (3 * (0.29 + 0.25) + 0.29) / 0.29  # d (Delta^2 + s^2) + Delta^2 over Delta^2
    gen = torch.Generator().manual_seed(0)
    got = b_noise(model, half_mse, x, y, probes=2000, generator=gen)
    assert got == pytest.approx(closed, rel=0.15)
    assert noise_scale(model, half_mse, x, y).b_simple == pytest.approx(closed, rel=0.15)


def test_b_noise_errors():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="eval"):
        b_noise(model, half_mse, torch.randn(4, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match="at least 2"):
        b_noise(nn.Linear(2, 1), half_mse, torch.randn(1, 2), torch.randn(1, 1))


def test_planning_formulas():
    assert steps_needed(50, 200, s_min=10) == pytest.approx(10 * (1 + 200 / 50))
    assert examples_needed(50, 200, e_min=1e4) == pytest.approx(1e4 * (1 + 50 / 200))
    assert optimal_lr(32, 96, 0.4) == pytest.approx(0.4 / (1 + 96 / 32))
    # at B = B_crit both are twice the minimum
    assert steps_needed(128, 128, 7) == pytest.approx(14)
    assert examples_needed(128, 128, 7) == pytest.approx(14)
    est = NoiseScale.from_parts(grad_sq_norm=2.0, trace_sigma=500.0, batch_size=64)
    assert suggested_batch_size(est) == 250
    assert suggested_batch_size(est, multiple_of=32) == 256
    assert suggested_batch_size(3.0, multiple_of=8) == 8
    for bad in (-5.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            suggested_batch_size(bad)
    with pytest.raises(ValueError, match="batch_size"):
        steps_needed(0, 10)
