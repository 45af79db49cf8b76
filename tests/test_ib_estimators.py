"""Exact answers and reference comparisons for ``foresight.ib.mutual_information``."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from foresight.ib import entropy, mutual_information
from foresight.ib.binning import bin_indices
from foresight.ib.discrete import row_labels
from tests.reference import mi_reference as ref

#: I(X;T) at log2 N warns; tests that care check with pytest.warns.
pytestmark = [
    pytest.mark.filterwarnings("ignore:information_plane:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:foresight.ib:RuntimeWarning"),
]


def h2(p: float) -> float:
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


# ----------------------------------------------------------------------------- discrete


def test_uniform_16_mod_4_is_two_bits():
    x = torch.arange(16).repeat(5)
    assert mutual_information(x, x % 4, method="discrete") == pytest.approx(2.0, abs=1e-12)
    assert mutual_information(x, x, method="discrete") == pytest.approx(4.0, abs=1e-12)


@pytest.mark.parametrize("n_per_x, flips", [(50, 5), (100, 25), (40, 20), (7, 0)])
def test_binary_symmetric_channel_exact_proportions(n_per_x, flips):
    # X uniform on {0, 1}; exactly `flips` of the n_per_x samples of each x are flipped.
    x = torch.tensor([0] * n_per_x + [1] * n_per_x)
    flip = torch.zeros(2 * n_per_x, dtype=torch.bool)
    flip[:flips] = True
    flip[n_per_x : n_per_x + flips] = True
    y = x ^ flip.long()
    p = flips / n_per_x
    expected = 1.0 - (h2(p) if 0 < p < 1 else 0.0)
    got = mutual_information(x, y, method="discrete")
    assert got == pytest.approx(expected, abs=1e-12)
    assert mutual_information(y, x, method="discrete") == pytest.approx(got, abs=1e-12)


def test_rows_are_symbols_and_bool_works():
    x = torch.tensor([[0, 1], [1, 0], [0, 1], [1, 1]])
    y = torch.tensor([True, False, True, False])
    # x has 3 symbols with probabilities 1/2, 1/4, 1/4; y is a function of x
    assert mutual_information(x, y, method="discrete") == pytest.approx(1.0, abs=1e-12)
    assert entropy(x, method="discrete") == pytest.approx(1.5, abs=1e-12)


def test_row_labels_extreme_values_and_many_columns():
    big = torch.tensor([[2**62, -(2**62)], [-(2**62), 2**62], [2**62, -(2**62)]])
    labels, k = row_labels(big)
    assert k == 2 and labels[0] == labels[2] and labels[0] != labels[1]
    g = torch.Generator().manual_seed(1)
    wide = torch.randint(0, 7, (300, 40), generator=g)  # 7**40 overflows int64: compaction path
    wide[150:] = wide[:150]
    labels, k = row_labels(wide)
    expected = np.unique(wide.numpy(), axis=0).shape[0]
    assert k == expected == 150
    assert torch.equal(labels[:150], labels[150:])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 200),
    dx=st.integers(1, 4),
    dy=st.integers(1, 3),
    hi=st.integers(1, 6),
    seed=st.integers(0, 10_000),
)
def test_discrete_matches_numpy_reference(n, dx, dy, hi, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-hi, hi + 1, (n, dx), generator=g)
    y = (x[:, :1] + torch.randint(0, 2, (n, dy), generator=g)) % 3
    got = mutual_information(x, y, method="discrete")
    assert got == pytest.approx(ref.plugin_mi(x.numpy(), y.numpy()), abs=1e-10)


# ----------------------------------------------------------------------------- binning


def test_binning_separates_and_merges_symbols():
    labels = torch.tensor([0, 1, 0, 1])
    separated = torch.tensor([[0.1], [0.9], [0.15], [0.8]])
    merged = torch.tensor([[0.1], [0.2], [0.15], [0.12]])
    opts = {"bins": 2, "range": (0.0, 1.0)}
    assert mutual_information(labels, separated, **opts) == pytest.approx(1.0, abs=1e-12)
    assert mutual_information(labels, merged, **opts) == pytest.approx(0.0, abs=1e-12)
    assert mutual_information(labels, separated, bin_size=0.5) == pytest.approx(1.0, abs=1e-12)
    assert mutual_information(labels, merged, bin_size=0.5) == pytest.approx(0.0, abs=1e-12)
    # a finer grid separates the "merged" values: 0.1, 0.12, 0.15, 0.2 -> 4 bins of width 0.01
    assert mutual_information(labels, merged, bin_size=0.01) == pytest.approx(1.0, abs=1e-12)


def test_binning_range_clips_and_data_range_default():
    t = torch.tensor([-5.0, -1.0, 0.5, 1.0, 7.0])
    assert bin_indices(t, bins=4, range=(-1.0, 1.0)).tolist() == [0, 0, 3, 3, 3]
    # default: 30 equal bins over [min, max] = [-5, 7]; the maximum goes into the last bin
    assert bin_indices(t).tolist() == [0, 10, 13, 15, 29]
    # bin_size is unbounded and signed
    assert bin_indices(t, bin_size=2.0).tolist() == [-3, -1, 0, 0, 3]


def test_constant_column_is_one_bin():
    t = torch.full((10, 1), 0.3)
    assert bin_indices(t).unique().numel() == 1
    assert entropy(t) == 0.0
    y = torch.arange(10) % 2
    assert mutual_information(t, y) == 0.0
    # a constant column next to informative ones changes nothing
    z = torch.cat([t, y.unsqueeze(1).float()], dim=1)
    assert mutual_information(z, y) == pytest.approx(1.0, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 150),
    d=st.integers(1, 5),
    mode=st.sampled_from(["bins", "range", "bin_size"]),
    b=st.integers(1, 40),
    seed=st.integers(0, 10_000),
)
def test_binning_matches_numpy_reference(n, d, mode, b, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    opts = {
        "bins": {"bins": b},
        "range": {"bins": b, "range": (-1.0, 1.0)},
        "bin_size": {"bin_size": 2.0 / b},
    }[mode]
    got = mutual_information(t, y, method="binning", **opts)
    assert got == pytest.approx(ref.binned_mi(t.numpy(), y.numpy(), **opts), abs=1e-10)
    # float against float: both sides binned with the same options
    u = t[:, :1] * 0.5 + torch.rand(n, 1, generator=g, dtype=torch.float64)
    got2 = mutual_information(t, u, method="binning", **opts)
    assert got2 == pytest.approx(ref.binned_mi(t.numpy(), u.numpy(), **opts), abs=1e-10)


def test_binning_independent_is_close_to_plugin_bias():
    g = torch.Generator().manual_seed(3)
    n, b = 20_000, 8
    a = torch.randint(0, b, (n,), generator=g)
    c = torch.randint(0, b, (n,), generator=g)
    got = mutual_information(a, c, method="discrete")
    bias = (b - 1) ** 2 / (2 * n * math.log(2))  # SCIENCE.md section 3
    assert 0.0 <= got < 3 * bias


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "x, y, kwargs, match",
    [
        (torch.arange(4), torch.arange(4), {"method": "magic"}, "unknown method"),
        (torch.arange(4), torch.arange(5), {"method": "discrete"}, "same number of samples"),
        (torch.tensor([0.0, math.nan]), torch.arange(2), {}, "NaN or inf"),
        (torch.tensor([0.0, math.inf]), torch.arange(2), {"method": "kde"}, "NaN or inf"),
        (torch.rand(4), torch.arange(4), {"method": "discrete"}, "needs symbols"),
        (torch.rand(4), torch.rand(4), {"method": "kde"}, "one symbolic"),
        (torch.arange(4), torch.arange(4), {"method": "kde"}, "one symbolic"),
        (torch.arange(4), torch.rand(4), {"method": "ksg"}, "continuous"),
        (torch.rand(4), torch.rand(4), {"method": "ksg", "k": 4}, "smaller than"),
        (torch.rand(4), torch.rand(4), {"method": "ksg", "k": 0}, "positive integer"),
        (torch.rand(4), torch.arange(4), {"bins": 0}, "bins"),
        (torch.rand(4), torch.arange(4), {"bin_size": -1.0}, "bin_size"),
        (torch.rand(4), torch.arange(4), {"bins": 3, "range": (1.0, 0.0)}, "lo < hi"),
        (torch.rand(4), torch.arange(4), {"bin_size": 0.1, "bins": 3}, "either"),
        (torch.rand(4), torch.arange(4), {"method": "kde", "bound": "middle"}, "bound"),
        (torch.rand(4), torch.arange(4), {"method": "kde", "noise_var": 0.0}, "noise_var"),
        (torch.rand(4), torch.arange(4), {"method": "binning", "noise_var": 1.0}, "option"),
        (torch.zeros(0), torch.zeros(0), {}, "no samples"),
    ],
)
def test_bad_input_raises_value_error(x, y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mutual_information(x, y, **kwargs)


def test_non_tensor_is_type_error():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        mutual_information([0, 1], torch.arange(2))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- KDE


@pytest.mark.parametrize("bound", ["upper", "lower"])
@pytest.mark.parametrize("n", [2, 5, 16])
def test_kde_well_separated_points_give_log2_n(n, bound):
    t = torch.arange(n, dtype=torch.float64).unsqueeze(1) * 100.0
    got = mutual_information(torch.arange(n), t, method="kde", noise_var=0.1, bound=bound)
    assert got == pytest.approx(math.log2(n), abs=1e-9)


@pytest.mark.parametrize("bound", ["upper", "lower"])
def test_kde_identical_points_give_zero(bound):
    t = torch.full((12, 3), 0.7, dtype=torch.float64)
    got = mutual_information(torch.arange(12), t, method="kde", bound=bound)
    assert got == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("bound, c", [("upper", 2.0), ("lower", 8.0)])
def test_kde_two_points_closed_form(bound, c):
    # I = ln 2 - ln(1 + exp(-D / (c s2))) nats for two points at squared distance D
    s2, dist = 0.25, 0.6
    t = torch.tensor([[0.0, 0.0], [dist, 0.0]], dtype=torch.float64)
    got = mutual_information(t, torch.tensor([0, 1]), method="kde", noise_var=s2, bound=bound)
    expected = (math.log(2) - math.log1p(math.exp(-(dist**2) / (c * s2)))) / math.log(2)
    assert got == pytest.approx(expected, abs=1e-12)


def test_kde_separated_classes_give_label_entropy():
    y = torch.tensor([0] * 6 + [1] * 3 + [2] * 3)
    t = y.double().unsqueeze(1) * 50.0 + 0.01 * torch.randn(12, 1, dtype=torch.float64)
    got = mutual_information(t, y, method="kde", noise_var=0.1)
    assert got == pytest.approx(1.5, abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 60),
    d=st.integers(1, 4),
    classes=st.integers(1, 80),
    noise_var=st.sampled_from([1e-3, 0.1, 1.0]),
    chunk=st.sampled_from([None, 1, 7]),
    seed=st.integers(0, 10_000),
)
def test_kde_matches_loop_reference_and_lower_le_upper(n, d, classes, noise_var, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, d, generator=g, dtype=torch.float64)
    s = torch.randint(0, classes, (n,), generator=g)
    values = {}
    for bound in ("upper", "lower"):
        values[bound] = mutual_information(
            s, t, method="kde", noise_var=noise_var, bound=bound, chunk_size=chunk
        )
        expected = ref.kde_mi_loop(t.numpy(), s.numpy(), noise_var, bound)
        assert values[bound] == pytest.approx(expected, abs=1e-9)
    assert values["lower"] <= values["upper"] + 1e-12


def test_kde_many_classes_masked_path_matches_reference():
    g = torch.Generator().manual_seed(5)
    t = torch.randn(300, 2, generator=g, dtype=torch.float64)
    s = torch.randint(0, 100, (300,), generator=g)  # > 64 classes: the masked path
    got = mutual_information(s, t, method="kde", noise_var=0.05, chunk_size=64)
    assert got == pytest.approx(ref.kde_mi_loop(t.numpy(), s.numpy(), 0.05, "upper"), abs=1e-9)


# ----------------------------------------------------------------------------- KSG


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(5, 80),
    dx=st.integers(1, 3),
    dy=st.integers(1, 2),
    k=st.integers(1, 4),
    chunk=st.sampled_from([None, 3]),
    seed=st.integers(0, 10_000),
)
def test_ksg_matches_brute_force(n, dx, dy, k, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=g, dtype=torch.float64)
    y = x[:, :1] + torch.randn(n, dy, generator=g, dtype=torch.float64)
    got = mutual_information(x, y, method="ksg", k=k, chunk_size=chunk)
    assert got == pytest.approx(ref.ksg_brute(x.numpy(), y.numpy(), k), abs=1e-9)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_ksg_correlated_gaussians(rho):
    # I = -1/2 log2(1 - rho^2); averaged over 5 seeds of N = 1000 the estimate is within 0.03 bits
    truth = -0.5 * math.log2(1 - rho**2)
    estimates = []
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(1000, 1, generator=g, dtype=torch.float64)
        b = rho * a + math.sqrt(1 - rho**2) * torch.randn(1000, 1, generator=g, dtype=torch.float64)
        estimates.append(mutual_information(a, b, method="ksg", k=3))
    assert np.mean(estimates) == pytest.approx(truth, abs=0.03)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(6, 300),
    dx=st.integers(1, 3),
    dy=st.integers(1, 2),
    k=st.integers(1, 5),
    ties=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_ksg_tree_and_brute_force_give_the_same_counts(n, dx, dy, k, ties, seed):
    pytest.importorskip("scipy")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=g, dtype=torch.float64)
    y = x[:, :1] + torch.randn(n, dy, generator=g, dtype=torch.float64)
    if ties:  # rounded values: many equal distances, the k-th neighbour on the boundary
        x, y = (x * 4).round() / 4, (y * 4).round() / 4
    tree = mutual_information(x, y, method="ksg", k=k, algorithm="tree")
    brute = mutual_information(x, y, method="ksg", k=k, algorithm="brute")
    assert tree == pytest.approx(brute, abs=1e-12)
    assert tree == pytest.approx(ref.ksg_brute(x.numpy(), y.numpy(), k), abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 200), scale=st.sampled_from([1e-3, 1.0, 1e6]), seed=st.integers(0, 999))
def test_count_within_1d_matches_brute_force(n, scale, seed):
    from foresight.ib.ksg import count_within_1d

    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=n) * 8) / 8 * scale  # ties and exact boundaries
    j = rng.integers(0, n, size=n)
    eps = np.abs(x[j] - x)  # radii equal to some distance: the strict boundary matters
    eps[rng.random(n) < 0.2] = 0.0
    brute = (np.abs(x[None, :] - x[:, None]) < eps[:, None]).sum(1) - (eps > 0)
    assert count_within_1d(x, eps).tolist() == brute.tolist()


def test_ksg_bad_algorithm():
    x = torch.randn(20, 1)
    with pytest.raises(ValueError, match="algorithm"):
        mutual_information(x, x, method="ksg", algorithm="fast")


def test_plugin_estimates_at_log2_n_warn():
    x = torch.arange(64)
    with pytest.warns(RuntimeWarning, match="within 1 bit of log2"):
        assert mutual_information(x, x, method="discrete") == pytest.approx(6.0)
    t = torch.linspace(0, 1, 64).unsqueeze(1)
    with pytest.warns(RuntimeWarning, match="limited by the sample count"):
        mutual_information(t, t, bins=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mutual_information(x, x % 4, method="discrete") == pytest.approx(2.0)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 150), scale=st.sampled_from([1e-3, 1.0, 1e6]), seed=st.integers(0, 999))
def test_count_within_2d_matches_brute_force(n, scale, seed):
    from foresight.ib.ksg import count_within_2d

    rng = np.random.default_rng(seed)
    v = np.round(rng.normal(size=(n, 2)) * 4) / 4 * scale  # ties and exact boundaries
    j = rng.integers(0, n, size=n)
    eps = np.abs(v[j] - v).max(axis=1)
    eps[rng.random(n) < 0.2] = 0.0
    dist = np.abs(v[None, :, :] - v[:, None, :]).max(axis=2)
    brute = (dist < eps[:, None]).sum(1) - (eps > 0)
    assert count_within_2d(v, eps).tolist() == brute.tolist()
