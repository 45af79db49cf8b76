"""Graph effective information written out plainly, independent of ``foresight.ei.graph``.

Two references:

* :func:`dense_graph_ei`: from a dense (N x N) numpy adjacency, one Python loop over the rows
  (normalise, entropy with ``math.log2``), then the entropy of the averaged rows;
* :func:`dict_loop_graph_ei`: einet-style loops over a networkx ``DiGraph``'s adjacency dicts
  (also the benchmark's baseline).

:func:`to_dense` turns every input format into a dense numpy array with the formats' own
converters (``to_dense``, ``toarray``, ``nx.to_numpy_array``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def to_dense(graph: Any, weight: str | None = "weight") -> np.ndarray:
    """Dense float64 adjacency ``A[i, j]`` = weight of ``i -> j`` (0 = no edge)."""
    if isinstance(graph, torch.Tensor):
        t = graph.detach().cpu()
        if t.layout != torch.strided:
            t = t.to_dense()
        a = t.to(torch.float64).numpy()
    elif isinstance(graph, np.ndarray):
        a = np.asarray(graph, dtype=np.float64)
    elif hasattr(graph, "toarray"):
        a = np.asarray(graph.toarray(), dtype=np.float64)
    else:
        import networkx as nx

        a = nx.to_numpy_array(graph, nodelist=list(graph.nodes()), weight=weight,
                              multigraph_weight=sum, nonedge=0.0, dtype=np.float64)
    if weight is None:
        a = (a != 0).astype(np.float64)
    return a


def _entropy_bits(p: list[float]) -> float:
    return -sum(x * math.log2(x) for x in p if x > 0)


def dense_graph_ei(a: np.ndarray) -> dict[str, float]:
    """einet's EI of a dense non-negative adjacency, with all the derived fields."""
    n = a.shape[0]
    row_entropies = []
    w_in = [0.0] * n
    rows = []
    for i in range(n):
        total = float(sum(a[i]))
        if total <= 0:
            continue
        p = [float(x) / total for x in a[i]]
        rows.append(p)
        row_entropies.append(_entropy_bits(p))
    n_out = len(rows)
    if n_out == 0:
        return {"ei": 0.0, "mean_out_entropy": 0.0, "avg_out_entropy": 0.0,
                "determinism_hoel": 0.0, "degeneracy_hoel": 0.0, "n_nodes_with_out_edges": 0}
    for p in rows:
        for j in range(n):
            w_in[j] += p[j] / n_out
    mean_h = sum(row_entropies) / n_out
    h_avg = _entropy_bits(w_in)
    log_n = math.log2(n)
    return {
        "ei": h_avg - mean_h,
        "mean_out_entropy": mean_h,
        "avg_out_entropy": h_avg,
        "determinism_hoel": log_n - mean_h,
        "degeneracy_hoel": log_n - h_avg,
        "effectiveness": (h_avg - mean_h) / log_n if n > 1 else math.nan,
        "n_nodes_with_out_edges": n_out,
        "n_edges": int((a != 0).sum()),
    }


def dict_loop_graph_ei(g: Any, weight: str | None = "weight") -> float:
    """EI by loops over a networkx DiGraph's adjacency dicts, the way einet computes it."""
    out_w: dict[Any, dict[Any, float]] = {}
    for u in g.nodes():
        nbrs = {v: (1.0 if weight is None else float(d.get(weight, 1.0)))
                for v, d in g.adj[u].items()}
        nbrs = {v: w for v, w in nbrs.items() if w != 0}
        total = sum(nbrs.values())
        if total > 0:
            out_w[u] = {v: w / total for v, w in nbrs.items()}
    n_out = len(out_w)
    if n_out == 0:
        return 0.0
    w_in: dict[Any, float] = {}
    h_sum = 0.0
    for nbrs in out_w.values():
        h_sum += _entropy_bits(list(nbrs.values()))
        for v, p in nbrs.items():
            w_in[v] = w_in.get(v, 0.0) + p / n_out
    return _entropy_bits(list(w_in.values())) - h_sum / n_out
