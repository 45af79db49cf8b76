"""Benchmark ``foresight.ei.graph_ei`` on large sparse graphs and against straightforward loops.

Prints, in one run (timings are the median of ``--repeats`` interleaved runs; ratios are taken
between timings measured in this run, on this machine):

1. ``graph_ei`` on a random directed graph with 1,000,000 nodes and 10,000,000 edges (uniform
   random endpoints, uniform(0, 1] weights), given as a coalesced torch COO tensor, a torch CSR
   tensor, a scipy CSR matrix and an *uncoalesced* torch COO tensor (duplicate entries must be
   summed first: one sort of the edge keys);
2. the speed-up over an einet-style computation (loops over a networkx ``DiGraph``'s adjacency
   dicts, ``tests/reference/graph_reference.dict_loop_graph_ei``) on a graph of the same mean
   degree small enough for the loops (default 20,000 nodes / 200,000 edges); ``graph_ei`` is
   timed on the same ``DiGraph`` (including its conversion) and on the same graph as a torch COO
   tensor. The loops' time for 10M edges is extrapolated linearly (per-edge cost x 10M) and
   labelled as such; it is not measured;
3. the same against the dense reference (a Python loop over the rows of an N x N array,
   ``dense_graph_ei``) on 1,000 nodes.

Run: ``python benchmarks/bench_graph_ei.py [--quick] [--threads T]``. By default torch uses one
thread (the benchmark machine is shared), so the figures are single-core ones.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foresight.ei.graph import graph_ei  # noqa: E402
from tests.reference.graph_reference import dense_graph_ei, dict_loop_graph_ei  # noqa: E402


def random_graph(n: int, m: int, seed: int) -> torch.Tensor:
    """Uncoalesced COO tensor with ``m`` random edges (a few duplicates) on ``n`` nodes."""
    g = torch.Generator().manual_seed(seed)
    row = torch.randint(0, n, (m,), generator=g)
    col = torch.randint(0, n, (m,), generator=g)
    w = 1.0 - torch.rand(m, generator=g, dtype=torch.float64)  # (0, 1]
    return torch.sparse_coo_tensor(torch.stack([row, col]), w, (n, n), check_invariants=False)


def median_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function, the functions interleaved in every repeat."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def large(n: int, m: int, repeats: int) -> None:
    import scipy.sparse as sp

    print(f"1. graph_ei on {n:,} nodes and {m:,} random edges")
    unco = random_graph(n, m, seed=0)
    coo = unco.coalesce()
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        csr = coo.to_sparse_csr()
    idx = coo.indices().numpy()
    scipy_csr = sp.csr_matrix((coo.values().numpy(), (idx[0], idx[1])), shape=(n, n))
    scipy_csr.sum_duplicates()
    results = {name: graph_ei(g) for name, g in [("coo", coo), ("unco", unco)]}
    assert math.isclose(results["coo"].ei, results["unco"].ei, rel_tol=1e-12)
    t = median_times(
        {
            "torch COO (coalesced)": lambda: graph_ei(coo),
            "torch CSR": lambda: graph_ei(csr),
            "scipy CSR": lambda: graph_ei(scipy_csr),
            "torch COO (uncoalesced)": lambda: graph_ei(unco),
        },
        repeats,
    )
    r = results["coo"]
    print(f"   EI = {r.ei:.6f} bits, effectiveness {r.effectiveness:.4f}, "
          f"{r.n_edges:,} distinct edges, {r.n_nodes_with_out_edges:,} nodes with out-edges")
    for name, seconds in t.items():
        print(f"   {name:<26} {seconds:7.2f} s   ({m / seconds / 1e6:5.1f} M edges/s)")
    return t["torch COO (coalesced)"], t["torch COO (uncoalesced)"]


def against_dict_loops(n: int, m: int, repeats: int, big_edges: int, big_seconds: float) -> None:
    import networkx as nx

    print(f"\n2. against einet-style dict loops, {n:,} nodes / {m:,} random edges")
    coo = random_graph(n, m, seed=1).coalesce()
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    idx = coo.indices().tolist()
    g.add_weighted_edges_from(zip(idx[0], idx[1], coo.values().tolist()))
    reference = dict_loop_graph_ei(g)
    assert math.isclose(graph_ei(g).ei, reference, rel_tol=1e-10, abs_tol=1e-10)
    assert math.isclose(graph_ei(coo).ei, reference, rel_tol=1e-10, abs_tol=1e-10)
    t = median_times(
        {
            "dict loops (networkx)": lambda: dict_loop_graph_ei(g),
            "graph_ei(networkx)": lambda: graph_ei(g),
            "graph_ei(torch COO)": lambda: graph_ei(coo),
        },
        repeats,
    )
    base = t["dict loops (networkx)"]
    for name, seconds in t.items():
        print(f"   {name:<26} {seconds * 1e3:9.1f} ms   speed-up x{base / seconds:8.1f}")
    per_edge = base / coo._nnz()
    print(f"   dict loops extrapolated to {big_edges:,} edges (linear, NOT measured): "
          f"{per_edge * big_edges:7.1f} s, i.e. x{per_edge * big_edges / big_seconds:.0f} "
          f"the measured graph_ei time of section 1 ({big_seconds:.2f} s)")


def against_dense(n: int, degree: int, repeats: int) -> None:
    print(f"\n3. against the dense row-loop reference, {n:,} nodes, ~{degree} edges per node")
    coo = random_graph(n, n * degree, seed=2).coalesce()
    dense = coo.to_dense().numpy()
    reference = dense_graph_ei(dense)["ei"]
    assert math.isclose(graph_ei(coo).ei, reference, rel_tol=1e-10, abs_tol=1e-10)
    t = median_times(
        {
            "dense reference": lambda: dense_graph_ei(dense),
            "graph_ei(dense numpy)": lambda: graph_ei(dense),
            "graph_ei(torch COO)": lambda: graph_ei(coo),
        },
        repeats,
    )
    base = t["dense reference"]
    for name, seconds in t.items():
        print(f"   {name:<26} {seconds * 1e3:9.1f} ms   speed-up x{base / seconds:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller graphs, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scale = 10 if args.quick else 1
    repeats = 1 if args.quick else args.repeats
    big_n, big_m = 1_000_000 // scale, 10_000_000 // scale
    print(f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} "
          f"torch thread(s), float64 accumulation\n")
    coalesced_s, _ = large(big_n, big_m, repeats)
    against_dict_loops(20_000 // scale, 200_000 // scale, repeats, big_m, coalesced_s)
    against_dense(1_000 // (2 if args.quick else 1), 10, repeats)


if __name__ == "__main__":
    main()
