"""Bad input to ``foresight.ib`` is a clear error, never a silent 0; ``graph_ei`` returns exact
zeros (and ones) where the float result is rounding noise, and its README lines warn about
nothing."""

from __future__ import annotations

import math
import random
import warnings

import networkx as nx
import pytest
import torch

from foresight.ei import graph_ei
from foresight.ei.graph import rounding_tolerance
from foresight.ib import InformationPlaneTracker, entropy, information_plane, mutual_information
from tests.reference.graph_reference import dense_graph_ei, to_dense

INF, NAN = math.inf, math.nan


def samples(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (n,), generator=g), torch.rand(n, 2, generator=g)


# -- foresight.ib ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"range": (0, INF)}, "finite ends"),
        ({"range": (-INF, 1)}, "finite ends"),
        ({"range": (NAN, 1.0)}, "finite ends"),
        ({"range": (0.0, NAN)}, "finite ends"),
        ({"range": (-1e308, 1e308)}, "wider than the largest float"),
        ({"range": (1, 1)}, "lo < hi"),
        ({"range": (0, 1, 2)}, "pair"),
        ({"range": "0,1"}, "pair"),
        ({"bins": 0}, "bins"),
        ({"bins": -3}, "bins"),
        ({"bins": 2.5}, "bins"),
        ({"bins": INF}, "bins"),
        ({"bin_size": 0.0}, "bin_size"),
        ({"bin_size": -0.1}, "bin_size"),
        ({"bin_size": INF}, "bin_size"),
        ({"bin_size": NAN}, "bin_size"),
        ({"bin_size": 1e-300}, "overflow"),
        ({"bin_size": 0.1, "bins": 10}, "not both"),
        ({"bin_size": 0.1, "range": (0, 1)}, "not both"),
    ],
)
def test_binning_options_that_would_mislead_are_refused(options, needle):
    labels, t = samples()
    with pytest.raises(ValueError, match=needle):
        mutual_information(labels, t, method="binning", **options)
    with pytest.raises(ValueError, match=needle):
        entropy(t, **options)


def test_infinite_range_used_to_return_zero_and_now_names_the_fix():
    labels, _ = samples()
    t = labels.to(torch.float32).unsqueeze(1) / 2  # T determines the label: I = H(labels)
    exact = mutual_information(labels, t, bins=3, range=(0.0, 1.0))
    assert exact == pytest.approx(entropy(labels, method="discrete"))
    assert exact > 1.0
    with pytest.raises(ValueError, match=r"range=\(0, inf\).*every estimate is 0 bits.*bin_size"):
        mutual_information(labels, t, bins=3, range=(0, INF))


@pytest.mark.parametrize(
    ("method", "options", "needle"),
    [
        ("kde", {"noise_var": 0.0}, "noise_var"),
        ("kde", {"noise_var": INF}, "noise_var"),
        ("kde", {"noise_var": NAN}, "noise_var"),
        ("kde", {"noise_var": -1.0}, "noise_var"),
        ("kde", {"bound": "middle"}, "bound"),
        ("kde", {"chunk_size": 0}, "chunk_size"),
        ("ksg", {"k": 0}, "k must"),
        ("ksg", {"k": 2.0}, "k must"),
        ("ksg", {"k": True}, "k must"),
    ],
)
def test_other_estimator_options_are_checked(method, options, needle):
    labels, t = samples()
    x = labels if method == "kde" else t[:, :1]
    with pytest.raises(ValueError, match=needle):
        mutual_information(x, t, method=method, **options)


def test_information_plane_and_tracker_refuse_an_infinite_range_up_front():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    x, y = torch.rand(32, 3), torch.randint(0, 2, (32,))
    with pytest.raises(ValueError, match="finite ends"):
        information_plane(model, x, y, range=(-1, INF))
    with pytest.raises(ValueError, match="finite ends"):  # at construction, not epochs later
        InformationPlaneTracker(model, x, y, range=(-INF, INF))


def test_data_range_beyond_float32_is_binned_in_float64():
    # the float32 difference t - min overflows; the bins must still follow the values
    t = torch.tensor([[-3e38], [-1e38], [1e38], [3e38]], dtype=torch.float32)
    labels = torch.tensor([0, 1, 2, 3])
    assert mutual_information(labels, t, bins=4) == pytest.approx(2.0)
    assert mutual_information(labels, t, bins=2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="wider than the largest float"):
        mutual_information(labels, torch.tensor([[-1e308], [0.0], [1.0], [1e308]],
                                                dtype=torch.float64), bins=2)


# -- foresight.ei.graph --------------------------------------------------------------------------


def test_ring_lattice_degeneracy_is_exactly_zero():
    r = graph_ei(nx.circulant_graph(100, [1, 2]))
    assert r.degeneracy_hoel == 0.0  # was 8.9e-16
    assert r.ei == pytest.approx(math.log2(100) - 2, abs=1e-12)
    assert r.mean_out_entropy == pytest.approx(2.0, abs=1e-15)


@pytest.mark.parametrize("n", [2, 7, 64, 1000])
def test_permutations_have_effectiveness_exactly_one(n):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    g = torch.zeros(n, n, dtype=torch.float64)
    g[torch.arange(n), perm] = 1.0
    r = graph_ei(g)
    assert r.effectiveness == 1.0 and r.mean_out_entropy == 0.0 and r.degeneracy_hoel == 0.0
    assert r.ei == pytest.approx(math.log2(n), abs=1e-12)


def test_complete_graph_ei_is_exactly_zero():
    r = graph_ei(torch.ones(50, 50))
    assert r.ei == 0.0 and r.effectiveness == 0.0
    assert r.determinism_hoel == 0.0 and r.degeneracy_hoel == 0.0


def test_snapping_never_moves_a_resolvable_value():
    rng = random.Random(3)
    for _ in range(20):
        n = rng.randint(3, 40)
        g = nx.gnp_random_graph(n, rng.uniform(0.1, 0.6), seed=rng.randint(0, 10**6),
                                directed=True)
        for u, v in g.edges():
            g[u][v]["weight"] = rng.uniform(0.01, 2.0)
        r = graph_ei(g)
        ref = dense_graph_ei(to_dense(g))
        tol = rounding_tolerance(g.number_of_edges() + n, math.log2(n))
        for key in ("ei", "degeneracy_hoel", "determinism_hoel", "mean_out_entropy",
                    "avg_out_entropy"):
            value = getattr(r, key)
            assert value == 0.0 or abs(value) >= tol  # snapped to 0 or left as computed
            assert value == pytest.approx(ref[key], abs=1e-9), key


def test_readme_graph_lines_emit_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        n, m = 10_000, 100_000
        edges = torch.randint(0, n, (2, m))
        g = torch.sparse_coo_tensor(edges, torch.rand(m), (n, n), check_invariants=True)
        graph_ei(g.coalesce())
        graph_ei(g)  # uncoalesced
        graph_ei(nx.circulant_graph(100, [1, 2]))
