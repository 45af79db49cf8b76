"""foresight.causal.exact: the sample-free EI_parts and sensitivity against an independent sampler.

The reference here draws its own uniform inputs (torch, float64), computes the outputs, bins them,
counts every (input, output) pair with ``torch.bincount`` and takes the plug-in MI -- no library
code. A plug-in estimate from N samples differs from the infinite-sample value by its bias,
estimated per pair by the Miller-Madow term (K_xy - K_x - K_y + 1)/(2 N ln 2), plus sampling
noise: the delta-method standard deviation sqrt(Var[pmi] / N) of a dependent pair, and for an
independent-looking pair the spread of its chi-square, sqrt(2) (b-1)/(2 N ln 2). The exact value
must lie within |bias| + 5 standard deviations (summed over pairs: a conservative bound, the pairs
share samples).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import foresight.causal as fc
from foresight.causal import exact

LN2 = math.log(2.0)


#: Sample-limited estimates warn; tests that care check with pytest.warns.
pytestmark = pytest.mark.filterwarnings("ignore:foresight.causal:RuntimeWarning")

@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _prelu() -> nn.PReLU:
    return nn.PReLU(init=0.2).double()  # the dtype of the (float64) test layers


#: Every activation the exact method accepts (module instances and functions).
MONOTONE = [
    None, nn.Sigmoid(), nn.Tanh(), nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.1), _prelu(),
    nn.ELU(), nn.CELU(0.5), nn.SELU(), nn.Softplus(beta=2.0), nn.Softsign(),
    nn.Hardtanh(-0.5, 0.8), nn.Hardsigmoid(), nn.LogSigmoid(), nn.Tanhshrink(), nn.Identity(),
    torch.sigmoid, torch.tanh, torch.relu, F.relu6, F.leaky_relu, F.elu, F.softplus,
    F.softsign, F.hardtanh, F.logsigmoid,
]
NOT_MONOTONE = [nn.GELU(), nn.SiLU(), nn.Mish(), nn.Hardswish(), nn.LeakyReLU(-0.5),
                nn.PReLU(init=-0.1), nn.ELU(alpha=-1.0), lambda t: t**2]


def _name(a) -> str:
    return fc.activations.activation_name(a)


@pytest.mark.parametrize("act", MONOTONE, ids=_name)
def test_listed_activations_are_non_decreasing(act) -> None:
    f = exact.monotone(act)
    assert f is not None
    s = torch.linspace(-30, 30, 200_001, dtype=torch.float64)
    with torch.no_grad():
        v = f(s)
    assert bool((v.diff() >= -1e-8).all())  # Softplus' switch to linear moves it by < 1e-8


@pytest.mark.parametrize("act", NOT_MONOTONE, ids=lambda a: getattr(a, "__name__", _name(a)))
def test_other_activations_are_sampled(act) -> None:
    assert exact.monotone(act) is None
    layer = nn.Linear(2, 2)
    out_range = (-1.0, 2.0)
    r = fc.ei_parts(layer, activation=act, bins=8, samples=20_000, seed=0, out_range=out_range)
    assert r.method == "sampled" and r.samples == 20_000
    with pytest.raises(ValueError, match="not monotone"):
        fc.sensitivity(layer, activation=act, bins=8, method="exact", out_range=out_range)


# ------------------------------------------------------------------ independent sampler
def _apply(act, pre: torch.Tensor) -> torch.Tensor:
    if act is None:
        return pre
    if isinstance(act, nn.PReLU):
        return F.prelu(pre, act.weight.detach().double())
    with torch.no_grad():
        return act(pre)


def _bins(v: torch.Tensor, lo: float, hi: float, b: int) -> torch.Tensor:
    return ((v - lo) * (b / (hi - lo))).floor().clamp(0, b - 1).long()


def sampled_reference(layer: nn.Linear, act, in_range, out_range, bins: int, n: int,
                      measure: str, seed: int = 0) -> tuple[float, float, float]:
    """(plug-in value, summed |Miller-Madow bias|, summed noise sd) from an independent sampler."""
    w = layer.weight.detach().double()  # [n_out, n_in]
    c = layer.bias.detach().double() if layer.bias is not None else torch.zeros(w.shape[0],
                                                                               dtype=torch.float64)
    n_out, n_in = w.shape
    lo, hi = in_range
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(n_in, n_out, bins * bins, dtype=torch.float64)
    block = 1_000_000
    for start in range(0, n, block):
        m = min(block, n - start)
        x = lo + (hi - lo) * torch.rand((m, n_in), generator=gen, dtype=torch.float64)
        xi = _bins(x, lo, hi, bins)
        if measure == "ei_parts":
            yi = _bins(_apply(act, x @ w.t() + c), *out_range, bins)
        for a in range(n_in):
            if measure == "sensitivity":
                yi = _bins(_apply(act, x[:, a : a + 1] * w[:, a] + c), *out_range, bins)
            for b in range(n_out):
                key = xi[:, a] * bins + yi[:, b]
                counts[a, b] += torch.bincount(key, minlength=bins * bins).double()
    p = counts.view(n_in, n_out, bins, bins) / n
    px, py = p.sum(-1, keepdim=True), p.sum(-2, keepdim=True)
    ratio = torch.where(p > 0, p / (px * py), torch.ones_like(p))
    pmi = torch.log2(ratio)
    mi = (p * pmi).sum((-2, -1))
    var = (p * pmi**2).sum((-2, -1)) - mi**2
    k_xy = (p > 0).sum((-2, -1))
    k_x, k_y = (px > 0).sum((-2, -1)), (py > 0).sum((-2, -1))
    mm = (k_xy - k_x - k_y + 1).double() / (2 * n * LN2)
    sd = var.clamp(min=0).sqrt() / math.sqrt(n) + math.sqrt(2) * (bins - 1) / (2 * n * LN2)
    return float(mi.sum()), float(mm.abs().sum()), float(sd.sum())


def random_layer(n_in: int, n_out: int, seed: int, scale: float) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(n_in, n_out).double()
    with torch.no_grad():
        layer.weight.mul_(scale)
        layer.bias.mul_(scale)
    return layer


def _check(layer, act, in_range, bins, n, measure) -> None:
    w = layer.weight.detach().t()
    b = layer.bias.detach()
    out_range = fc.measures._default_out_range(w, b, act, in_range)
    pairs = exact.pairwise_exact(measure, w, b, act, in_range, out_range, bins)
    assert pairs is not None
    value, bias, sd = sampled_reference(layer, act, in_range, out_range, bins, n, measure)
    assert float(pairs.sum()) == pytest.approx(value, abs=bias + 5 * sd + 1e-9), (
        f"{measure}: exact {float(pairs.sum())}, sampled {value}, bias {bias}, sd {sd}")
    # the library's own entry point gives the same exact number
    f = fc.ei_parts if measure == "ei_parts" else fc.sensitivity
    r = f(layer, activation=act, bins=bins, in_range=in_range)
    assert r.method == "exact" and r.value == pytest.approx(float(pairs.sum()), abs=1e-12)


# always on: small layers, a few activations, 2 * 10^5 samples
@pytest.mark.parametrize("measure", ["sensitivity", "ei_parts"])
@pytest.mark.parametrize(("act", "in_range"), [
    (nn.Sigmoid(), (0.0, 1.0)), (nn.Tanh(), (-1.0, 1.0)), (nn.ReLU(), (0.0, 1.0)),
    (None, (-1.0, 1.0)),
], ids=["sigmoid", "tanh", "relu", "identity"])
@pytest.mark.parametrize(("n_in", "n_out", "seed"), [(1, 2, 0), (3, 2, 1), (6, 2, 2)])
def test_exact_matches_independent_sampler(measure, act, in_range, n_in, n_out, seed) -> None:
    layer = random_layer(n_in, n_out, seed, scale=3.0)
    _check(layer, act, in_range, 16, 200_000, measure)


# the acceptance check: 10^7 samples, random layers, every supported activation
@pytest.mark.slow
@pytest.mark.parametrize("measure", ["sensitivity", "ei_parts"])
@pytest.mark.parametrize("act", MONOTONE, ids=_name)
def test_exact_matches_ten_million_samples(measure, act) -> None:
    for i, (n_in, n_out, bins, in_range) in enumerate(
        [(2, 2, 16, (0.0, 1.0)), (4, 2, 8, (-1.0, 1.0)), (7, 1, 16, (0.0, 2.0))]
    ):
        layer = random_layer(n_in, n_out, seed=10 + i, scale=2.0 + i)
        _check(layer, act, in_range, bins, 10_000_000, measure)


# ------------------------------------------------------------------ the two forms of F
@pytest.mark.parametrize("n_in", [4, 5, 6, 7])
def test_fourier_and_polynomial_forms_agree(n_in, monkeypatch) -> None:
    layer = random_layer(n_in, 3, seed=n_in, scale=2.0)
    w, b = layer.weight.detach().t(), layer.bias.detach()
    args = ("ei_parts", w, b, nn.Sigmoid(), (0.0, 1.0), (0.0, 1.0), 16)
    poly_cost = exact._poly_cost
    monkeypatch.setattr(exact, "_poly_cost", lambda wd: (torch.full(wd.shape[:-1], 99),
                                                         torch.zeros(wd.shape[:-1])))
    monkeypatch.setattr(exact, "MAX_TERMS", 1 << 15)
    fourier = exact.pairwise_exact(*args)
    monkeypatch.setattr(exact, "_poly_cost", poly_cost)
    monkeypatch.setattr(exact, "MAX_TERMS", 1)
    poly = exact.pairwise_exact(*args)
    assert fourier is not None and poly is not None
    assert torch.allclose(fourier, poly, atol=1e-8, rtol=0)


def test_closed_forms_exactly() -> None:
    # identity n x n: n copies of a b-bin uniform; single edge 1/k: log2(b/k); zeros: 0
    for n, bins in [(1, 8), (3, 16), (5, 64)]:
        layer = nn.Linear(n, n, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.eye(n))
        for f in (fc.ei_parts, fc.sensitivity):
            assert f(layer, bins=bins, out_range=(0, 1)).value == pytest.approx(
                n * math.log2(bins), abs=1e-12)
    for k in (1, 2, 4, 8):
        one = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            one.weight.fill_(1.0 / k)
        assert fc.ei_parts(one, bins=64, out_range=(0, 1)).value == pytest.approx(
            math.log2(64 / k), abs=1e-12)


def test_saturated_and_decreasing_outputs() -> None:
    # a huge bias pins a sigmoid at 1 (constant output: 0 bits); negative weights mirror
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]]))
        layer.bias.copy_(torch.tensor([100.0, 0.0]))
    w, b = layer.weight.detach().t(), layer.bias.detach()
    for measure in ("ei_parts", "sensitivity"):
        pairs = exact.pairwise_exact(measure, w, b, nn.Sigmoid(), (0.0, 1.0), (0.0, 1.0), 16)
        assert bool((pairs[:, 0] == 0).all())
    mirrored = nn.Linear(3, 1)
    with torch.no_grad():
        mirrored.weight.copy_(torch.tensor([[-1.0, -2.0, -3.0]]))
        mirrored.bias.zero_()
    plain = nn.Linear(3, 1)
    with torch.no_grad():
        plain.weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
        plain.bias.fill_(-6.0)
    # f(-s) with s on [0, 6] and f(s - 6) have the same law under the mirror x -> 1 - x:
    # identity outputs binned over a symmetric range give the same information
    for f in (fc.ei_parts, fc.sensitivity):
        a = f(mirrored, bins=16, out_range=(-6, 0)).value
        b2 = f(plain, bins=16, out_range=(-6, 0)).value
        assert a == pytest.approx(b2, abs=1e-9)


def test_layers_without_an_exact_form_are_sampled() -> None:
    # two weights of 1 and 28 of 1e-7: too many Fourier terms, too many corners
    layer = nn.Linear(30, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1e-7)
        layer.weight[0, :2] = 1.0
    r = fc.ei_parts(layer, activation=nn.Sigmoid(), bins=8, samples=20_000, seed=0)
    assert r.method == "sampled"
    with pytest.raises(ValueError, match="no exact form"):
        fc.ei_parts(layer, activation=nn.Sigmoid(), bins=8, method="exact")
    # sensitivity has a closed form for any weights
    assert fc.sensitivity(layer, activation=nn.Sigmoid(), bins=8).method == "exact"


def test_exact_on_another_dtype_and_conv() -> None:
    layer32 = random_layer(4, 3, seed=3, scale=1.0).float()
    layer64 = random_layer(4, 3, seed=3, scale=1.0)
    a = fc.layer_measures(layer32, activation=nn.Tanh(), bins=16, samples=2000, seed=0)
    b = fc.layer_measures(layer64, activation=nn.Tanh(), bins=16, samples=2000, seed=0)
    assert a.ei_parts == pytest.approx(b.ei_parts, abs=1e-5)  # float32 weights, same values
    assert a.sensitivity == pytest.approx(b.sensitivity, abs=1e-5)
