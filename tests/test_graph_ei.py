"""graph_ei against closed forms, a dense reference in every input format, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from foresight.ei.graph import GraphEI, graph_ei
from tests.reference.graph_reference import dense_graph_ei, dict_loop_graph_ei, to_dense

nx = pytest.importorskip("networkx")
sp = pytest.importorskip("scipy.sparse")

TOL = 1e-10

pytestmark = [
    pytest.mark.filterwarnings("ignore:Sparse (CSR|CSC|invariant).*:UserWarning"),
    pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning"),
]


def _check_identities(r: GraphEI) -> None:
    """Relations that hold for every result."""
    log_n = math.log2(r.n_nodes)
    assert r.ei == pytest.approx(r.avg_out_entropy - r.mean_out_entropy, abs=TOL)
    assert r.ei == pytest.approx(r.determinism_hoel - r.degeneracy_hoel, abs=TOL)
    if r.n_edges:
        assert r.determinism_hoel == pytest.approx(log_n - r.mean_out_entropy, abs=TOL)
        assert r.degeneracy_hoel == pytest.approx(log_n - r.avg_out_entropy, abs=TOL)
    if r.n_nodes > 1:
        assert r.effectiveness == pytest.approx(r.ei / log_n, abs=TOL)
    assert -TOL <= r.ei <= log_n + TOL


# ------------------------------------------------------------------------------ closed forms


@pytest.mark.parametrize("n", [2, 3, 5, 16, 100])
def test_directed_cycle(n: int) -> None:
    dense = torch.roll(torch.eye(n), 1, dims=1)
    for g in (dense, dense.numpy(), nx.cycle_graph(n, create_using=nx.DiGraph)):
        r = graph_ei(g)
        assert r.ei == pytest.approx(math.log2(n), abs=TOL)
        assert r.effectiveness == pytest.approx(1.0, abs=TOL)
        assert r.mean_out_entropy == pytest.approx(0.0, abs=TOL)
        assert (r.n_nodes, r.n_nodes_with_out_edges, r.n_edges) == (n, n, n)
        _check_identities(r)


@pytest.mark.parametrize("n", [3, 7, 20])
def test_random_permutation_weighted(n: int) -> None:
    perm = torch.randperm(n)
    a = torch.zeros(n, n, dtype=torch.float64)
    a[torch.arange(n), perm] = torch.rand(n, dtype=torch.float64) + 0.1  # any positive weights
    r = graph_ei(a)
    assert r.ei == pytest.approx(math.log2(n), abs=TOL)


@pytest.mark.parametrize(("n", "k"), [(10, 2), (12, 4), (30, 6), (101, 10)])
def test_ring_lattice(n: int, k: int) -> None:
    g = nx.circulant_graph(n, range(1, k // 2 + 1))  # undirected, every node of degree k
    r = graph_ei(g)
    assert r.ei == pytest.approx(math.log2(n) - math.log2(k), abs=TOL)
    assert r.n_edges == n * k
    _check_identities(r)
    # the same through weight=None and a scaled weighted copy
    assert graph_ei(g, weight=None).ei == pytest.approx(r.ei, abs=TOL)
    a = nx.to_numpy_array(g) * 3.7
    assert graph_ei(a).ei == pytest.approx(r.ei, abs=TOL)


@pytest.mark.parametrize("n", [2, 3, 6, 50])
def test_complete_graph_without_self_loops(n: int) -> None:
    r = graph_ei(nx.complete_graph(n))
    expected = math.log2(n) - math.log2(n - 1)
    assert r.ei == pytest.approx(expected, abs=TOL)
    assert r.mean_out_entropy == pytest.approx(math.log2(n - 1), abs=TOL)
    assert r.avg_out_entropy == pytest.approx(math.log2(n), abs=TOL)
    assert r.degeneracy_hoel == pytest.approx(0.0, abs=TOL)
    _check_identities(r)


def test_complete_graph_with_self_loops_is_zero() -> None:
    r = graph_ei(torch.ones(9, 9))
    assert r.ei == pytest.approx(0.0, abs=TOL)
    assert r.effectiveness == pytest.approx(0.0, abs=TOL)


@pytest.mark.parametrize("n", [2, 3, 10, 64])
def test_directed_path(n: int) -> None:
    r = graph_ei(nx.path_graph(n, create_using=nx.DiGraph))
    assert r.ei == pytest.approx(math.log2(n - 1), abs=TOL)
    assert r.n_nodes_with_out_edges == n - 1  # the last node is a sink, left out of the average
    assert r.effectiveness == pytest.approx(math.log2(n - 1) / math.log2(n), abs=TOL)
    _check_identities(r)


@pytest.mark.parametrize("k", [1, 2, 5, 40])
def test_stars(k: int) -> None:
    out_star = nx.DiGraph([(0, leaf) for leaf in range(1, k + 1)])
    in_star = out_star.reverse()
    undirected = nx.star_graph(k)  # hub 0 and k leaves
    assert graph_ei(out_star).ei == pytest.approx(0.0, abs=TOL)
    assert graph_ei(out_star).n_nodes_with_out_edges == 1
    assert graph_ei(in_star).ei == pytest.approx(0.0, abs=TOL)
    # hub: uniform over k leaves; each leaf: to the hub. EI = log2(k+1) - k/(k+1) log2 k
    expected = math.log2(k + 1) - k / (k + 1) * math.log2(k)
    r = graph_ei(undirected)
    assert r.ei == pytest.approx(expected, abs=TOL)
    _check_identities(r)


def test_sinks_and_isolated_nodes_count_only_in_n() -> None:
    g = nx.DiGraph([(0, 1), (1, 0)])
    g.add_nodes_from([2, 3, 4, 5, 6, 7])  # isolated
    r = graph_ei(g)
    assert r.ei == pytest.approx(1.0, abs=TOL)
    assert (r.n_nodes, r.n_nodes_with_out_edges) == (8, 2)
    assert r.effectiveness == pytest.approx(1.0 / 3.0, abs=TOL)  # log2 8 = 3
    assert r.determinism_hoel == pytest.approx(3.0, abs=TOL)
    assert r.degeneracy_hoel == pytest.approx(2.0, abs=TOL)


def test_graph_without_edges_and_single_node() -> None:
    r = graph_ei(torch.zeros(5, 5))
    assert (r.ei, r.n_edges, r.n_nodes_with_out_edges, r.effectiveness) == (0.0, 0, 0, 0.0)
    one = graph_ei(torch.ones(1, 1))
    assert one.ei == 0.0 and math.isnan(one.effectiveness)


# -------------------------------------------------------------------- dense reference, formats


def _random_adjacency(rng: np.random.Generator, n: int, density: float) -> np.ndarray:
    a = rng.random((n, n)) * (rng.random((n, n)) < density)
    a[rng.random(n) < 0.2] = 0.0  # sinks
    return a


def _formats(a: np.ndarray, rng: np.random.Generator) -> dict[str, object]:
    n = a.shape[0]
    t = torch.from_numpy(a)
    rows, cols = np.nonzero(a)
    # uncoalesced COO: each edge split into two random parts, entries in random order
    frac = rng.random(len(rows))
    idx = np.concatenate([np.stack([rows, cols]), np.stack([rows, cols])], axis=1)
    vals = np.concatenate([a[rows, cols] * frac, a[rows, cols] * (1 - frac)])
    order = rng.permutation(len(vals))
    uncoalesced = torch.sparse_coo_tensor(
        torch.from_numpy(idx[:, order]), torch.from_numpy(vals[order]), (n, n)
    )
    dup_scipy = sp.coo_matrix((vals[order], (idx[0, order], idx[1, order])), shape=(n, n))
    dig = nx.DiGraph()
    dig.add_nodes_from(range(n))
    dig.add_weighted_edges_from((int(i), int(j), float(a[i, j])) for i, j in zip(rows, cols))
    multi = nx.MultiDiGraph()
    multi.add_nodes_from(range(n))
    multi.add_weighted_edges_from(
        (int(i), int(j), float(v)) for (i, j), v in zip(idx.T[order], vals[order])
    )
    return {
        "torch_dense64": t,
        "torch_dense32": t.float(),
        "torch_coo": t.to_sparse().coalesce(),
        "torch_coo_uncoalesced": uncoalesced,
        "torch_csr": t.to_sparse_csr(),
        "torch_csc": t.to_sparse_csc(),
        "numpy": a,
        "numpy_matrix": np.asmatrix(a),
        "scipy_csr": sp.csr_matrix(a),
        "scipy_csc_array": sp.csc_array(a),
        "scipy_coo_duplicates": dup_scipy,
        "networkx_digraph": dig,
        "networkx_multidigraph": multi,
    }


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("weight", ["weight", None])
def test_matches_dense_reference_in_every_format(seed: int, weight: str | None) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    a = _random_adjacency(rng, n, density=float(rng.uniform(0.05, 0.6)))
    expected = dense_graph_ei(to_dense(a, weight))
    for name, g in _formats(a, rng).items():
        tol = 1e-5 if name == "torch_dense32" else TOL
        reference = dense_graph_ei(to_dense(g, weight))
        ours = graph_ei(g, weight=weight)
        for key, value in reference.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(getattr(ours, key)), (name, key)
            else:
                assert getattr(ours, key) == pytest.approx(value, abs=tol), (name, key)
        assert ours.ei == pytest.approx(expected["ei"], abs=tol), name
        assert ours.n_nodes == n
        _check_identities(ours)


@pytest.mark.parametrize("seed", range(4))
def test_undirected_graphs_count_edges_both_ways(seed: int) -> None:
    g = nx.gnp_random_graph(25, 0.2, seed=seed)
    rng = np.random.default_rng(seed)
    for u, v in g.edges():
        g[u][v]["w"] = float(rng.uniform(0.1, 2.0))
    g.add_edge(3, 3, w=1.5)  # a self-loop counts once
    a = nx.to_numpy_array(g, weight="w")
    assert np.allclose(a, a.T)
    r = graph_ei(g, weight="w")
    assert r.ei == pytest.approx(dense_graph_ei(a)["ei"], abs=TOL)
    assert r.n_edges == 2 * (g.number_of_edges() - 1) + 1
    assert graph_ei(nx.DiGraph(g), weight="w").ei == pytest.approx(r.ei, abs=TOL)
    multi = nx.MultiGraph(g)
    assert graph_ei(multi, weight="w").ei == pytest.approx(r.ei, abs=TOL)


@pytest.mark.parametrize("seed", range(4))
def test_matches_einet_style_dict_loops(seed: int) -> None:
    g = nx.gnp_random_graph(60, 0.08, seed=seed, directed=True)
    rng = np.random.default_rng(seed)
    for u, v in g.edges():
        g[u][v]["weight"] = float(rng.exponential())
    for weight in ("weight", None):
        assert graph_ei(g, weight=weight).ei == pytest.approx(
            dict_loop_graph_ei(g, weight), abs=TOL
        )


def test_networkx_weight_key_labels_and_missing_weights() -> None:
    g = nx.DiGraph()
    g.add_edge("a", "b", capacity=3.0)
    g.add_edge("a", "c", capacity=1.0)
    g.add_edge("b", "c")  # no capacity: weight 1 (networkx's default)
    g.add_edge("c", "a", capacity=2.0)
    a = np.array([[0, 3.0, 1.0], [0, 0, 1.0], [2.0, 0, 0]])
    assert graph_ei(g, weight="capacity").ei == pytest.approx(dense_graph_ei(a)["ei"], abs=TOL)
    unweighted = np.array([[0, 1.0, 1.0], [0, 0, 1.0], [1.0, 0, 0]])
    assert graph_ei(g, weight=None).ei == pytest.approx(
        dense_graph_ei(unweighted)["ei"], abs=TOL
    )


def test_zero_weight_entries_are_no_edges() -> None:
    g = nx.DiGraph()
    g.add_edge(0, 1, weight=1.0)
    g.add_edge(1, 0, weight=1.0)
    g.add_edge(1, 2, weight=0.0)
    r = graph_ei(g)
    assert r.ei == pytest.approx(dense_graph_ei(to_dense(g))["ei"], abs=TOL)
    assert r.n_edges == 2
    assert graph_ei(g, weight=None).n_edges == 3  # unweighted: every edge counts


def test_integer_bool_and_half_inputs() -> None:
    a = (torch.rand(12, 12) < 0.3).to(torch.int64) * torch.randint(1, 5, (12, 12))
    expected = dense_graph_ei(a.double().numpy())["ei"]
    assert graph_ei(a).ei == pytest.approx(expected, abs=TOL)
    assert graph_ei(a.to(torch.float16)).ei == pytest.approx(expected, abs=TOL)
    binary = dense_graph_ei((a != 0).double().numpy())["ei"]
    assert graph_ei(a != 0).ei == pytest.approx(binary, abs=TOL)
    assert graph_ei(a, weight=None).ei == pytest.approx(binary, abs=TOL)


def test_huge_finite_weights_do_not_overflow() -> None:
    a = np.array([[0.0, 1e308, 1e308], [1e308, 0.0, 0.0], [0.0, 1e308, 0.0]])
    r = graph_ei(a)
    assert r.ei == pytest.approx(dense_graph_ei(a / 1e308)["ei"], abs=TOL)
    assert math.isfinite(r.ei)


def test_weight_none_accepts_negative_entries_as_edges() -> None:
    a = torch.tensor([[0.0, -2.0], [1.0, 0.0]])
    assert graph_ei(a, weight=None).ei == pytest.approx(1.0, abs=TOL)


def test_input_left_unchanged_and_result_to_dict() -> None:
    t = torch.rand(10, 10, requires_grad=True)
    before = t.detach().clone()
    s = sp.coo_matrix(([1.0, 2.0, 3.0], ([0, 0, 1], [1, 1, 0])), shape=(3, 3))
    s_before = s.copy()
    r = graph_ei(t)
    graph_ei(s)
    # a CSR matrix with a repeated column index: scipy must sum it on a copy, not in place
    dup = sp.csr_matrix((np.array([1.0, 2.0, 3.0]), np.array([1, 1, 0]), np.array([0, 2, 3, 3])),
                        shape=(3, 3))
    assert not dup.has_canonical_format
    assert graph_ei(dup).ei == pytest.approx(1.0, abs=TOL)  # 0 -> 1 (weight 3), 1 -> 0
    assert dup.nnz == 3 and not dup.has_canonical_format
    assert torch.equal(t.detach(), before) and t.grad is None
    assert (s != s_before).nnz == 0 and s.nnz == 3
    d = r.to_dict()
    assert set(d) >= {"ei", "determinism_hoel", "degeneracy_hoel", "effectiveness", "n_edges"}
    assert isinstance(d["ei"], float)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu() -> None:  # pragma: no cover - no GPU on the CI machine
    a = torch.rand(300, 300, dtype=torch.float64) * (torch.rand(300, 300) < 0.1)
    cpu = graph_ei(a)
    for g in (a.cuda(), a.to_sparse().cuda(), a.to_sparse_csr().cuda()):
        assert graph_ei(g).ei == pytest.approx(cpu.ei, abs=1e-9)


# -------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("make", [torch.tensor, np.array, sp.csr_matrix])
def test_negative_weights_raise(make) -> None:
    g = make([[0.0, 1.0], [-0.5, 0.0]])
    with pytest.raises(ValueError, match=r"negative edge weight.*\(1, 0\).*clamp\(min=0\)"):
        graph_ei(g)


def test_negative_networkx_weight_names_the_nodes() -> None:
    g = nx.DiGraph()
    g.add_edge("in", "out", weight=-1.0)
    with pytest.raises(ValueError, match="'in' -> 'out'"):
        graph_ei(g)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("weight", ["weight", None])
def test_non_finite_weights_raise(bad: float, weight: str | None) -> None:
    a = torch.eye(4)
    a[2, 1] = bad
    for g in (a, a.numpy(), a.to_sparse(), sp.csr_matrix(a.numpy())):
        with pytest.raises(ValueError, match=r"non-finite.*\(2, 1\)"):
            graph_ei(g, weight=weight)


@pytest.mark.parametrize(
    "g",
    [torch.ones(3, 4), np.ones((2, 3)), torch.ones(2, 2, 2), torch.ones(5), torch.zeros(0, 0)],
)
def test_non_square_or_empty_raise(g) -> None:
    with pytest.raises(ValueError, match="square|no nodes"):
        graph_ei(g)
    if isinstance(g, torch.Tensor) and g.dim() == 2 and g.numel():
        with pytest.raises(ValueError, match="square"):
            graph_ei(sp.csr_matrix(g.numpy()))
        with pytest.raises(ValueError, match="square"):
            graph_ei(g.to_sparse())


def test_hybrid_sparse_tensors_raise_and_block_layouts_work() -> None:
    block = torch.ones(3, 3, 2)
    for hybrid in (block.to_sparse(2), block.to_sparse_csr(dense_dim=1)):
        with pytest.raises(ValueError, match="without dense dimensions"):
            graph_ei(hybrid)
    assert graph_ei(torch.eye(4).to_sparse_bsr((2, 2))).ei == pytest.approx(2.0, abs=TOL)


def test_empty_networkx_graph_raises() -> None:
    with pytest.raises(ValueError, match="no nodes"):
        graph_ei(nx.DiGraph())


def test_weight_key_with_a_matrix_raises() -> None:
    with pytest.raises(ValueError, match="only a networkx graph"):
        graph_ei(torch.eye(3), weight="capacity")


@pytest.mark.parametrize(
    "g", [[[0, 1], [1, 0]], "graph", torch.eye(2, dtype=torch.complex64), np.eye(2) * 1j,
          np.array([["a", "b"], ["c", "d"]])]
)
def test_unsupported_types_raise(g) -> None:
    with pytest.raises(TypeError):
        graph_ei(g)


def test_non_numeric_networkx_weight_raises() -> None:
    g = nx.DiGraph()
    g.add_edge(0, 1, weight="heavy")
    with pytest.raises(TypeError, match="real number"):
        graph_ei(g)


def test_lazy_export_from_foresight_ei() -> None:
    import foresight.ei as fei

    assert fei.graph_ei is graph_ei
    assert fei.GraphEI is GraphEI
