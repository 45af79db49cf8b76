"""foresight.causal layer measures: closed forms, the per-pair reference, options, errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import foresight.causal as fc
from tests.reference import causal_reference as ref

LN2 = math.log(2.0)


#: Sample-limited estimates warn; tests that care check with pytest.warns.
pytestmark = pytest.mark.filterwarnings("ignore:foresight.causal:RuntimeWarning")

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: on the shared 2-core test machine a second thread only waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



def pair_bias(pairs: int, bins: int, samples: int) -> float:
    """Expected upward bias (bits) of the plug-in MI of ``pairs`` independent b x b histograms."""
    return pairs * (bins - 1) ** 2 / (2 * samples * LN2)


def linear(weight, bias=None, dtype=torch.float32) -> nn.Linear:
    w = torch.as_tensor(weight, dtype=dtype)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias is not None:
            layer.bias.copy_(torch.as_tensor(bias, dtype=dtype))
    return layer


# ------------------------------------------------------------------ closed forms
EXACT = 1e-9  # exact (sample-free) values: rounding only


@pytest.mark.parametrize(("n", "bins"), [(1, 8), (2, 8), (3, 16), (2, 64)])
def test_identity_layer(n: int, bins: int) -> None:
    layer = linear(torch.eye(n))
    m = fc.layer_measures(layer, bins=bins, out_range=(0, 1), seed=n)
    exact = n * math.log2(bins)
    # EI (sampled): plug-in entropy of b^n equiprobable states, biased down by (b^n - 1)/(2N ln 2)
    assert m.ei == pytest.approx(exact, abs=0.05 + (bins**n - 1) / (2 * m.samples_ei * LN2))
    # EI_parts and sensitivity are exact: n copies of a b-bin uniform, the other pairs 0 bits
    assert (m.method_ei_parts, m.method_sensitivity) == ("exact", "exact")
    assert m.ei_parts == pytest.approx(exact, abs=EXACT)
    assert m.sensitivity == pytest.approx(exact, abs=EXACT)
    assert m.degeneracy == pytest.approx(0.0, abs=EXACT)
    assert m.converged and m.samples_ei >= fc.measures.START_SAMPLES
    assert m.samples_ei_parts is None and m.samples_sensitivity is None
    # sampled: the off-diagonal pairs are independent, biased up by about (b-1)^2/(2N ln 2)
    s = fc.layer_measures(layer, bins=bins, out_range=(0, 1), seed=n, method="sampled")
    off = n * (n - 1)
    assert s.ei_parts == pytest.approx(exact, abs=0.05 + pair_bias(off, bins, s.samples_ei_parts))
    assert s.sensitivity == pytest.approx(exact, abs=0.05)  # off-diagonal outputs are constant
    # its bias estimate: the off-diagonal pairs' upward bias and the copies' downward one
    copies = n * (bins - 1) / (2 * s.samples_ei_parts * LN2)
    assert s.bias_ei_parts <= pair_bias(off, bins, s.samples_ei_parts) + copies + 1e-12


@pytest.mark.parametrize(("k", "bins"), [(1, 16), (2, 16), (4, 16), (8, 64)])
def test_single_edge_of_weight_one_over_k(k: int, bins: int) -> None:
    exact = math.log2(bins / k)
    one = linear([[1.0 / k]])
    assert float(fc.layer_ei(one, bins=bins, out_range=(0, 1), seed=1)) == pytest.approx(
        exact, abs=0.05)
    for method, tol in (("auto", EXACT), ("sampled", 0.05)):
        for f in (fc.ei_parts, fc.sensitivity):
            value = float(f(one, bins=bins, out_range=(0, 1), seed=1, method=method))
            assert value == pytest.approx(exact, abs=tol)
    # the same edge inside a 3 -> 2 layer: the other outputs are constant (0 bits); the other
    # inputs are independent of the one varying output (plug-in bias only when sampled)
    w = torch.zeros(2, 3)
    w[1, 2] = 1.0 / k
    wide = linear(w)
    assert fc.ei_parts(wide, bins=bins, out_range=(0, 1)).value == pytest.approx(exact, abs=EXACT)
    assert fc.sensitivity(wide, bins=bins, out_range=(0, 1)).value == pytest.approx(exact,
                                                                                   abs=EXACT)
    parts = fc.ei_parts(wide, bins=bins, out_range=(0, 1), seed=2, method="sampled")
    assert parts.value == pytest.approx(exact, abs=0.05 + pair_bias(2, bins, parts.samples))
    sens = fc.sensitivity(wide, bins=bins, out_range=(0, 1), seed=2, method="sampled")
    assert sens.value == pytest.approx(exact, abs=0.05)


@pytest.mark.parametrize("method", ["auto", "sampled"])
@pytest.mark.parametrize("activation", [None, nn.Sigmoid(), torch.tanh])
@pytest.mark.parametrize("bias", [False, True])
def test_zero_weights_carry_nothing(activation, bias: bool, method: str) -> None:
    layer = linear(torch.zeros(3, 4), bias=[0.3, -1.0, 2.0] if bias else None)
    m = fc.layer_measures(layer, activation=activation, seed=0, method=method)
    assert (m.ei, m.ei_parts, m.sensitivity, m.degeneracy) == (0.0, 0.0, 0.0, 0.0)
    assert m.samples_ei == fc.measures.START_SAMPLES * 2  # settled at the first doubling
    assert m.converged and m.bias_ei == 0.0


@pytest.mark.parametrize("method", ["auto", "sampled"])
@pytest.mark.parametrize(("n_in", "n_out", "bins"), [(1, 1, 16), (2, 3, 16), (4, 2, 32)])
def test_all_ones_sensitivity(n_in: int, n_out: int, bins: int, method: str) -> None:
    layer = linear(torch.ones(n_out, n_in))
    sens = fc.sensitivity(layer, bins=bins, out_range=(0, n_in), in_range=(0, n_in), seed=3,
                          method=method)
    # one input alone: every output equals it, binned over the same range
    tol = EXACT if method == "auto" else 0.05
    assert sens.value == pytest.approx(n_in * n_out * math.log2(bins), abs=tol)


def test_all_ones_sensitivity_unit_ranges() -> None:
    layer = linear(torch.ones(3, 2))
    sens = fc.sensitivity(layer, bins=16, out_range=(0, 1))
    assert sens.value == pytest.approx(2 * 3 * 4.0, abs=EXACT)
    # the full perturbation sums the inputs: outputs reach 2, clipped into the last bin
    parts = fc.ei_parts(layer, bins=16, out_range=(0, 1))
    assert parts.value < sens.value - 5


# ------------------------------------------------------------------ the per-pair reference
CASES = [
    (3, 2, None, False, (0.0, 1.0), (0.0, 1.0), 8),
    (4, 3, nn.Sigmoid(), True, (0.0, 1.0), None, 16),
    (2, 4, torch.tanh, True, (-1.0, 1.0), None, 32),
    (5, 1, None, True, (0.0, 1.0), None, 8),
    (3, 3, nn.Sigmoid(), False, (0.0, 1.0), (0.2, 0.7), 8),  # narrow: clipping into edge bins
    (1, 5, nn.ReLU(), True, (0.0, 2.0), None, 16),
]


@pytest.mark.parametrize(("n_in", "n_out", "act", "bias", "in_range", "out_range", "bins"), CASES)
def test_matches_per_pair_reference(n_in, n_out, act, bias, in_range, out_range, bins) -> None:
    torch.manual_seed(n_in * 10 + n_out)
    layer = nn.Linear(n_in, n_out, bias=bias).double()
    with torch.no_grad():
        layer.weight.mul_(3.0)
    m = fc.layer_measures(layer, in_range=in_range, out_range=out_range, bins=bins,
                          samples=3000, activation=act, seed=11, method="sampled")
    expected = ref.measures(layer, seed=11, samples=3000, bins=bins, in_range=in_range,
                            out_range=m.out_range, activation=act)
    for key, value in expected.items():
        assert getattr(m, key) == pytest.approx(value, abs=1e-9), key


def test_reference_in_blocks_beyond_one_draw() -> None:
    torch.manual_seed(5)
    layer = nn.Linear(2, 2).double()
    n = fc.measures.DRAW_BLOCK + 1000
    m = fc.layer_measures(layer, bins=8, samples=n, seed=2, activation=nn.Sigmoid(),
                          method="sampled")
    expected = ref.measures(layer, seed=2, samples=n, bins=8, in_range=(0, 1),
                            out_range=(0, 1), activation=nn.Sigmoid())
    for key, value in expected.items():
        assert getattr(m, key) == pytest.approx(value, abs=1e-9), key


# ------------------------------------------------------------------ default output range
def test_default_out_range_bounded_and_exact() -> None:
    layer = linear([[1.0, -2.0], [0.5, 0.5]], bias=[0.1, -0.2])
    assert fc.ei_parts(layer, activation=nn.Sigmoid(), samples=100, seed=0).out_range == (0, 1)
    assert fc.ei_parts(layer, activation=nn.Tanh(), samples=100, seed=0).out_range == (-1, 1)
    # identity: the exact image of the box [0, 1]^2 and of the single-input interventions
    lo, hi = fc.ei_parts(layer, samples=100, seed=0).out_range
    assert lo == pytest.approx(0.1 - 2.0) and hi == pytest.approx(max(1.1, -0.2 + 1.0))
    relu_lo, relu_hi = fc.ei_parts(layer, activation=nn.ReLU(), samples=100, seed=0).out_range
    assert relu_lo == 0.0 and relu_hi == pytest.approx(1.1, rel=1e-3)


def test_constant_outputs_get_a_unit_range() -> None:
    layer = linear(torch.zeros(2, 2), bias=[0.5, 0.5])
    assert fc.layer_ei(layer, samples=100, seed=0).out_range == (0.0, 1.0)


# ------------------------------------------------------------------ conv layers
def test_conv_equals_linear_with_its_jacobian() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel_size=2, padding=1).double()
    shape = (2, 2, 2)
    n_in = 8
    flat = torch.zeros(n_in, dtype=torch.float64)

    def f(v):
        return conv(v.view(1, *shape)).reshape(-1)

    jac = torch.autograd.functional.jacobian(f, flat)  # [n_out, n_in]
    dense = linear(jac, bias=f(flat).detach(), dtype=torch.float64)
    for method in ("auto", "sampled"):
        kwargs = {"bins": 8, "samples": 2000, "seed": 5, "activation": nn.Sigmoid(),
                  "method": method}
        a = fc.layer_measures(conv, input_shape=shape, **kwargs)
        b = fc.layer_measures(dense, **kwargs)
        for key in ("ei", "ei_parts", "sensitivity", "degeneracy"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), abs=1e-9), key


def test_conv_needs_input_shape() -> None:
    with pytest.raises(ValueError, match="input_shape"):
        fc.layer_ei(nn.Conv1d(1, 1, 3), samples=10)


# ------------------------------------------------------------------ samples, seeds, floats
def test_reproducible_with_seed() -> None:
    layer = nn.Linear(4, 3)
    kw = {"activation": nn.Sigmoid(), "bins": 4, "samples": 2000, "method": "sampled"}
    a = fc.layer_measures(layer, seed=7, **kw)
    b = fc.layer_measures(layer, seed=7, **kw)
    c = fc.layer_measures(layer, seed=8, **kw)
    assert a == b
    assert a.ei_parts != c.ei_parts and a.ei != c.ei
    # exact values do not depend on the seed at all
    e7 = fc.layer_measures(layer, seed=7, activation=nn.Sigmoid(), bins=4, samples=2000)
    e8 = fc.layer_measures(layer, seed=8, activation=nn.Sigmoid(), bins=4, samples=2000)
    assert (e7.ei_parts, e7.sensitivity) == (e8.ei_parts, e8.sensitivity)


def test_seed_none_follows_torch_manual_seed() -> None:
    layer = nn.Linear(3, 2)
    torch.manual_seed(1)
    a = fc.ei_parts(layer, samples=500, method="sampled")
    torch.manual_seed(1)
    b = fc.ei_parts(layer, samples=500, method="sampled")
    assert a == b


@pytest.mark.parametrize("method", ["auto", "sampled"])
def test_functions_agree_with_layer_measures(method: str) -> None:
    layer = nn.Linear(3, 2)
    kw = {"activation": nn.Tanh(), "bins": 4, "samples": 1500, "seed": 3}
    m = fc.layer_measures(layer, method=method, **kw)
    assert float(fc.layer_ei(layer, **kw)) == m.ei
    assert float(fc.ei_parts(layer, method=method, **kw)) == m.ei_parts
    assert float(fc.sensitivity(layer, method=method, **kw)) == m.sensitivity
    d = fc.degeneracy(layer, method=method, **kw)
    assert d.value == pytest.approx(m.degeneracy)
    assert d.samples == (1500 if method == "sampled" else None)
    assert d.method == ("sampled" if method == "sampled" else "exact")
    assert d.to_dict()["measure"] == "degeneracy"


def test_adaptive_doubles_until_settled() -> None:
    layer = linear([[0.25]])
    r = fc.ei_parts(layer, bins=16, out_range=(0, 1), seed=0, method="sampled")
    k = math.log2(r.samples / fc.measures.START_SAMPLES)
    assert r.converged and k >= 1 and k == int(k) and r.limited_by is None


def test_adaptive_stops_early_when_more_samples_cannot_help() -> None:
    # joint EI of 6 inputs x 64 bins: every sampled input state is new, and 64^6 states cannot
    # be covered by max_samples, so doubling is pointless: stop at the first estimate
    torch.manual_seed(0)
    layer = nn.Linear(6, 6)
    with pytest.warns(RuntimeWarning, match="limited by the sample count") as caught:
        r = fc.layer_ei(layer, tolerance=0.001, max_samples=20_000, seed=0)
    assert not r.converged and r.limited_by == "samples" and r.samples == 10_000
    assert "64^6" in r.note and "Linear 6->6" in str(caught[0].message)


def test_adaptive_gives_up_at_max_samples_when_still_changing() -> None:
    # 2 inputs x 64 bins = 4096 states: coverable, but not within 1e-4 relative / 1e-3 bits
    torch.manual_seed(0)
    layer = nn.Linear(2, 2)
    with pytest.warns(RuntimeWarning, match="limited by the sample count"):
        r = fc.layer_ei(layer, tolerance=1e-4, atol=1e-3, max_samples=40_000, seed=0)
    assert not r.converged and r.samples == 40_000 and r.limited_by == "samples"


def test_fixed_samples_converged_unless_sample_limited() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok = fc.layer_ei(nn.Linear(2, 2), bins=4, samples=20_000, seed=0)
    assert ok.samples == 20_000 and ok.converged and ok.limited_by is None
    with pytest.warns(RuntimeWarning, match="within 1 bit of log2"):
        bad = fc.layer_ei(nn.Linear(6, 6), samples=200, seed=0)
    assert bad.samples == 200 and not bad.converged and bad.limited_by == "samples"
    assert bad.value == pytest.approx(math.log2(200))  # every sample its own joint state


def test_wide_joint_states_are_exact() -> None:
    # 40 inputs x 4 bins = 80 bits per state: packed into several words, never collide
    layer = linear(torch.eye(40)[:2])
    with pytest.warns(RuntimeWarning, match="seen only"):  # every input state is new
        r = fc.layer_ei(layer, bins=4, out_range=(0, 1), samples=20000, seed=0)
    assert r.value == pytest.approx(4.0, abs=0.01)  # two identity outputs of 4 bins
    assert not r.converged  # right here, but the samples cannot show it


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_range": (1.0, 1.0)}, "in_range"),
        ({"in_range": (1.0, 0.0)}, "in_range"),
        ({"in_range": (0.0, float("nan"))}, "in_range"),
        ({"in_range": 3}, "in_range"),
        ({"out_range": (0.5, 0.5)}, "out_range"),
        ({"bins": 1}, "bins"),
        ({"bins": 2.5}, "bins"),
        ({"bins": True}, "bins"),
        ({"samples": 0}, "samples"),
        ({"samples": 1.5}, "samples"),
        ({"tolerance": 0}, "tolerance"),
        ({"atol": 0}, "atol"),
        ({"atol": "x"}, "atol"),
        ({"max_samples": 10}, "max_samples"),
        ({"seed": "x"}, "seed"),
        ({"input_shape": (2, 2)}, "input_shape"),
    ],
)
def test_bad_arguments(kwargs, match) -> None:
    for f in (fc.layer_ei, fc.ei_parts, fc.sensitivity, fc.degeneracy, fc.layer_measures):
        with pytest.raises(ValueError, match=match):
            f(nn.Linear(3, 2), **kwargs)
    if not {"out_range", "input_shape"} & set(kwargs):  # options report() takes too
        with pytest.raises(ValueError, match=match):
            fc.report(nn.Linear(3, 2), **kwargs)


def test_bad_method() -> None:
    for f in (fc.ei_parts, fc.sensitivity, fc.degeneracy, fc.layer_measures, fc.report):
        with pytest.raises(ValueError, match="method"):
            f(nn.Linear(3, 2), method="fast")
    with pytest.raises(TypeError):
        fc.layer_ei(nn.Linear(3, 2), method="exact")  # EI of the joint states is always sampled


def test_bad_layer_and_activation() -> None:
    with pytest.raises(TypeError, match="ReLU"):
        fc.layer_ei(nn.ReLU())
    with pytest.raises(TypeError, match="activation"):
        fc.layer_ei(nn.Linear(2, 2), activation=3)
    with pytest.raises(ValueError, match="elementwise"):
        fc.layer_ei(nn.Linear(2, 2), activation=lambda t: t.sum(-1), out_range=(0, 1), samples=10)
    with pytest.raises(ValueError, match="histogram cells"):
        fc.ei_parts(nn.Linear(300, 300), samples=10, bins=64)
