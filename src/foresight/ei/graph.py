r"""Effective information of a weighted directed graph (Klein & Hoel 2019, the einet conventions).

Every node :math:`i` with out-edges spreads one unit of "random walker" mass over its out-neighbours
in proportion to the edge weights, giving the row distribution
:math:`W^{\text{out}}_i(j) = w_{ij} / \sum_k w_{ik}`. With :math:`V_{\text{out}}` the set of nodes
that have out-edges (:math:`N_{\text{out}} = |V_{\text{out}}|`) and :math:`N` the number of all
nodes,

.. math::
    \langle W^{\text{out}} \rangle = \frac{1}{N_{\text{out}}} \sum_{i \in V_{\text{out}}}
        W^{\text{out}}_i, \qquad
    \text{EI} = H(\langle W^{\text{out}} \rangle)
        - \frac{1}{N_{\text{out}}} \sum_{i \in V_{\text{out}}} H(W^{\text{out}}_i),

in bits. Nodes without out-edges (sinks) are left out of both averages, exactly as in einet's
``effective_information``; they still count in :math:`N`, which einet uses (through the uniform
intervention over all nodes) for Hoel's normalised coefficients

.. math::
    \text{determinism} = \log_2 N - \langle H(W^{\text{out}}) \rangle, \quad
    \text{degeneracy} = \log_2 N - H(\langle W^{\text{out}} \rangle), \quad
    \text{effectiveness} = \frac{\text{EI}}{\log_2 N},

so that EI = determinism - degeneracy. Everything is computed on the edge list with segment sums
in float64 (never an :math:`N \times N` matrix): a graph with a million nodes and ten million edges
takes about a second. A value within float64 rounding of 0 (see :func:`rounding_tolerance`) is
returned as exactly 0, and an effectiveness within rounding of 1 as exactly 1.

>>> import torch
>>> from foresight.ei.graph import graph_ei
>>> cycle = torch.roll(torch.eye(8), 1, dims=1)  # directed 8-cycle: EI = log2 8
>>> graph_ei(cycle).ei
3.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from foresight.results import Result

__all__ = ["GraphEI", "graph_ei"]


@dataclass
class GraphEI(Result):
    r"""Effective information of a graph and its parts (bits).

    Attributes:
        ei: :math:`H(\langle W^{\text{out}} \rangle) - \langle H(W^{\text{out}}) \rangle`.
        mean_out_entropy: :math:`\langle H(W^{\text{out}}) \rangle`, the mean entropy of the
            out-weight distributions of the nodes with out-edges (the seed's "determinism").
        avg_out_entropy: :math:`H(\langle W^{\text{out}} \rangle)`, the entropy of the average
            out-weight distribution (the seed's "degeneracy").
        determinism_hoel: Hoel's :math:`\log_2 N - \langle H(W^{\text{out}}) \rangle`.
        degeneracy_hoel: Hoel's :math:`\log_2 N - H(\langle W^{\text{out}} \rangle)`.
        effectiveness: :math:`\text{EI} / \log_2 N` in :math:`[0, 1]`; ``nan`` for a single node.
        n_nodes: :math:`N`, all nodes (sinks and isolated nodes included).
        n_nodes_with_out_edges: :math:`N_{\text{out}}`.
        n_edges: directed edges of non-zero weight (an undirected edge counts twice, a
            self-loop once; parallel edges are merged).
    """

    ei: float
    mean_out_entropy: float
    avg_out_entropy: float
    determinism_hoel: float
    degeneracy_hoel: float
    effectiveness: float
    n_nodes: int
    n_nodes_with_out_edges: int
    n_edges: int

    metric = "graph_ei"


@dataclass
class _Edges:
    """A square weighted adjacency in coordinate form: ``w[k]`` on edge ``row[k] -> col[k]``."""

    row: torch.Tensor  # int64 [E]
    col: torch.Tensor  # int64 [E]
    w: torch.Tensor  # float64 [E]
    n: int
    canonical: bool = False  # (row, col) pairs known to be unique
    labels: list[Any] | None = None  # node labels (networkx), for error messages


# ------------------------------------------------------------------------------ input formats


def _square(shape: tuple[int, ...], kind: str) -> int:
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(
            f"graph must be a square (nodes x nodes) adjacency matrix; got a {kind} of shape "
            f"{tuple(shape)}"
        )
    if shape[0] == 0:
        raise ValueError("graph has no nodes")
    return int(shape[0])


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype.is_complex:
        raise TypeError(f"graph weights must be real numbers, got dtype {dtype}")


def _from_dense_tensor(t: torch.Tensor) -> _Edges:
    n = _square(tuple(t.shape), "dense tensor")
    _check_dtype(t.dtype)
    row, col = torch.nonzero(t, as_tuple=True)  # NaN is non-zero, so it is kept and reported
    return _Edges(row, col, t[row, col].to(torch.float64), n, canonical=True)


def _from_torch(t: torch.Tensor) -> _Edges:
    t = t.detach()
    if t.layout == torch.strided:
        return _from_dense_tensor(t)
    if t.layout not in (torch.sparse_coo, torch.sparse_csr):
        t = t.to_sparse_coo()
    if t.sparse_dim() != 2 or t.dense_dim() != 0:
        raise ValueError(
            f"graph must be a 2-D sparse tensor without dense dimensions, got sparse_dim="
            f"{t.sparse_dim()}, dense_dim={t.dense_dim()}"
        )
    n = _square(tuple(t.shape), f"sparse tensor ({t.layout})")
    _check_dtype(t.dtype)
    if t.layout == torch.sparse_csr:
        crow = t.crow_indices().long()
        counts = crow[1:] - crow[:-1]
        row = torch.repeat_interleave(torch.arange(n, device=t.device), counts)
        return _Edges(row, t.col_indices().long(), t.values().to(torch.float64), n)
    canonical = t.is_coalesced()
    idx = t._indices()  # works coalesced or not, without copying
    return _Edges(idx[0], idx[1], t._values().to(torch.float64), n, canonical=canonical)


def _from_numpy(a: np.ndarray) -> _Edges:
    a = np.asarray(a)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise TypeError(f"graph must hold numbers, got a numpy array of dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.complexfloating):
        raise TypeError(f"graph weights must be real numbers, got dtype {a.dtype}")
    _square(a.shape, "numpy array")
    return _from_dense_tensor(torch.from_numpy(np.ascontiguousarray(a)))


def _from_scipy(m: Any) -> _Edges:
    n = _square(tuple(m.shape), f"scipy sparse {m.format} matrix")
    if np.issubdtype(m.dtype, np.complexfloating) or m.dtype == object:
        raise TypeError(f"graph weights must be real numbers, got dtype {m.dtype}")
    csr = m.tocsr()
    if not csr.has_canonical_format:  # repeated entries: let scipy sum them, on a copy
        csr = csr.copy() if csr is m else csr
        csr.sum_duplicates()
    counts = torch.from_numpy(np.diff(csr.indptr).astype(np.int64))
    row = torch.repeat_interleave(torch.arange(n), counts)
    col = torch.from_numpy(csr.indices.astype(np.int64))
    w = torch.from_numpy(np.asarray(csr.data, dtype=np.float64))
    return _Edges(row, col, w, n, canonical=True)


def _from_networkx(g: Any, weight: str | None) -> _Edges:
    nodes = list(g.nodes())
    n = len(nodes)
    if n == 0:
        raise ValueError("graph has no nodes")
    index = {node: i for i, node in enumerate(nodes)}
    if weight is None:
        triples = ((u, v, 1.0) for u, v in g.edges())
    else:
        triples = g.edges(data=weight, default=1.0)  # networkx's convention for a missing key
    src, dst, wts = [], [], []
    for u, v, w in triples:
        src.append(index[u])
        dst.append(index[v])
        wts.append(w)
    try:
        w_arr = np.asarray(wts, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"edge attribute {weight!r} must be a real number on every edge") from exc
    row = torch.tensor(src, dtype=torch.int64)
    col = torch.tensor(dst, dtype=torch.int64)
    w = torch.from_numpy(w_arr)
    if not g.is_directed():  # an undirected edge is two directed ones; a self-loop stays one
        back = row != col
        row, col = torch.cat([row, col[back]]), torch.cat([col, row[back]])
        w = torch.cat([w, w[back]])
    return _Edges(row, col, w, n, labels=nodes)


def _is_from(obj: Any, package: str) -> bool:
    return any(c.__module__.split(".")[0] == package for c in type(obj).__mro__)


def _to_edges(graph: Any, weight: str | None) -> _Edges:
    if _is_from(graph, "networkx") and hasattr(graph, "is_directed"):
        return _from_networkx(graph, weight)
    if weight not in (None, "weight"):
        raise ValueError(
            f"weight={weight!r} names an edge attribute, which only a networkx graph has; for a "
            "matrix pass weight='weight' (use the entries) or weight=None (unweighted)"
        )
    if isinstance(graph, torch.Tensor):
        return _from_torch(graph)
    if isinstance(graph, np.ndarray):
        return _from_numpy(graph)
    if _is_from(graph, "scipy") and hasattr(graph, "tocsr"):
        return _from_scipy(graph)
    raise TypeError(
        "graph must be a torch tensor (dense, sparse COO or CSR), a numpy array, a scipy sparse "
        f"matrix or a networkx graph; got {type(graph).__name__}"
    )


# -------------------------------------------------------------------------------- validation


def _canonicalize(e: _Edges) -> _Edges:
    """Sum the weights of repeated (row, col) pairs (parallel edges, uncoalesced tensors)."""
    if e.canonical or e.row.numel() < 2:
        return e
    key = e.row * e.n + e.col
    if bool((key[1:] > key[:-1]).all()):  # row-major and strictly increasing: already unique
        e.canonical = True
        return e
    uniq, inverse = torch.unique(key, return_inverse=True)
    w = torch.zeros(uniq.numel(), dtype=torch.float64, device=e.w.device).index_add_(
        0, inverse, e.w
    )
    return _Edges(uniq // e.n, uniq % e.n, w, e.n, canonical=True, labels=e.labels)


def _edge_name(e: _Edges, k: int) -> str:
    i, j = int(e.row[k]), int(e.col[k])
    if e.labels is not None:
        return f"{e.labels[i]!r} -> {e.labels[j]!r}"
    return f"({i}, {j})"


def _validate(e: _Edges, weighted: bool) -> None:
    # a finite sum means every weight is finite (NaN and inf propagate); only a non-finite sum
    # (a bad weight, or an overflow) needs the elementwise check
    if not math.isfinite(float(e.w.sum())) and bool((bad := ~torch.isfinite(e.w)).any()):
        k = int(torch.nonzero(bad)[0, 0])
        raise ValueError(
            f"graph has {int(bad.sum())} non-finite edge weight(s) (NaN or inf), e.g. "
            f"{float(e.w[k])} on edge {_edge_name(e, k)}; remove or replace them"
        )
    if weighted and e.w.numel() and float(e.w.min()) < 0:
        k = int(torch.argmin(e.w))
        raise ValueError(
            f"graph has {int((e.w < 0).sum())} negative edge weight(s), e.g. {float(e.w[k])} on "
            f"edge {_edge_name(e, k)}; effective information needs non-negative weights: pass "
            "graph.abs() or graph.clamp(min=0) (relu, as lin_norm does), or weight=None to count "
            "every non-zero entry as an unweighted edge"
        )


# ------------------------------------------------------------------------------- computation


def _segment_sum(index: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.float64, device=values.device).index_add_(0, index, values)


def _entropy_terms(p: torch.Tensor) -> torch.Tensor:
    """:math:`-p \\log_2 p` elementwise for :math:`p > 0`."""
    return -p * torch.log2(p)


def _compute(e: _Edges) -> GraphEI:
    n = e.n
    log_n = math.log2(n)
    n_edges = int(e.w.numel())
    if n_edges == 0:
        # einet returns 0 for EI, determinism and degeneracy of a graph without edges
        return GraphEI(0.0, 0.0, 0.0, 0.0, 0.0, 0.0 if n > 1 else math.nan, n, 0, 0)
    out_strength = _segment_sum(e.row, e.w, n)
    n_out = int((out_strength > 0).sum())
    p = e.w / out_strength[e.row]  # row-normalised out-weights, all > 0
    mean_out_entropy = float(_entropy_terms(p).sum()) / n_out
    w_in = _segment_sum(e.col, p, n) / n_out  # the average out-weight distribution
    w_in = w_in[w_in > 0]
    avg_out_entropy = float(_entropy_terms(w_in).sum())
    tol = rounding_tolerance(n_edges + int(w_in.numel()), log_n)

    def snap(value: float) -> float:
        return 0.0 if abs(value) < tol else value

    mean_out_entropy, avg_out_entropy = snap(mean_out_entropy), snap(avg_out_entropy)
    ei = snap(avg_out_entropy - mean_out_entropy)
    effectiveness = ei / log_n if n > 1 else math.nan
    if n > 1 and abs(effectiveness - 1.0) < tol / log_n:
        effectiveness = 1.0
    return GraphEI(
        ei=ei,
        mean_out_entropy=mean_out_entropy,
        avg_out_entropy=avg_out_entropy,
        determinism_hoel=snap(log_n - mean_out_entropy),
        degeneracy_hoel=snap(log_n - avg_out_entropy),
        effectiveness=effectiveness,
        n_nodes=n,
        n_nodes_with_out_edges=n_out,
        n_edges=n_edges,
    )


def rounding_tolerance(terms: int, scale: float) -> float:
    r"""Bound (bits) on the float64 rounding error of an entropy summed from ``terms`` terms and
    compared with values of size ``scale`` (:math:`\log_2 N`):
    :math:`8\,\varepsilon\,(1 + \log_2 \text{terms}) \max(1, \text{scale})`. A result within
    it of 0 (or an effectiveness within it of 1) is that exact value: e.g. a ring lattice's
    degeneracy is exactly 0, not ``8.9e-16``.

    >>> f"{rounding_tolerance(400, 6.64):.1e}"  # 100 nodes, 400 edges
    '1.1e-13'
    """
    eps = 2.220446049250313e-16
    return 8.0 * eps * (1.0 + math.log2(max(terms, 2))) * max(1.0, scale)


def graph_ei(graph: Any, weight: str | None = "weight") -> GraphEI:
    r"""Effective information of a weighted directed graph, with einet's conventions.

    .. math::
        \text{EI} = H\Big(\frac{1}{N_{\text{out}}} \sum_{i \in V_{\text{out}}}
            W^{\text{out}}_i\Big) - \frac{1}{N_{\text{out}}} \sum_{i \in V_{\text{out}}}
            H(W^{\text{out}}_i), \qquad
        W^{\text{out}}_i(j) = \frac{w_{ij}}{\sum_k w_{ik}},

    where :math:`i, j` index nodes, :math:`w_{ij} \ge 0` is the weight of edge
    :math:`i \to j` (row :math:`i`, column :math:`j` of the adjacency matrix) and
    :math:`V_{\text{out}}` are the :math:`N_{\text{out}}` nodes with out-weight
    :math:`\sum_k w_{ik} > 0`. Nodes without out-edges are left out of both averages; Hoel's
    ``determinism_hoel``, ``degeneracy_hoel`` and ``effectiveness`` normalise by
    :math:`\log_2 N` with :math:`N` **all** nodes, as einet does (its ``determinism`` and
    ``degeneracy`` compare with the uniform distribution over all nodes, and its effectiveness is
    EI / log2 of the network size). See :mod:`foresight.ei.graph`.

    Args:
        graph: the adjacency, one of

            * a square torch tensor, dense or sparse (COO, CSR; other sparse layouts are
              converted to COO), on any device: entry ``[i, j]`` is the weight of ``i -> j``;
              repeated COO indices are summed;
            * a square numpy array (``np.matrix`` too);
            * a square scipy sparse matrix or array (any format; duplicates are summed);
            * a networkx ``Graph``, ``DiGraph``, ``MultiGraph`` or ``MultiDiGraph``: nodes in
              ``G.nodes()`` order, isolated nodes included; an undirected edge counts in both
              directions (a self-loop once); parallel edges add their weights; an edge without
              the ``weight`` attribute has weight 1 (networkx's convention).
        weight: for networkx graphs, the edge attribute holding the weight; for matrices the
            default ``"weight"`` means "use the entries". ``None`` makes the graph unweighted:
            every edge (every non-zero entry, whatever its sign) has weight 1, so each out-edge
            of a node with :math:`k_{\text{out}}` out-edges carries :math:`1/k_{\text{out}}`.

    Returns:
        :class:`GraphEI` (bits). Entries or edges of weight 0 are no edges. A graph without edges
        gives 0 for every entropy and coefficient (einet returns 0 as well). Values within
        float64 rounding of 0 are exactly 0 (a ring lattice's ``degeneracy_hoel``), an
        effectiveness within rounding of 1 is exactly 1 (a permutation).

    Raises:
        ValueError: non-square or empty graph, NaN/inf weights, negative weights (weighted
            graphs), or a ``weight`` key given with a matrix.
        TypeError: an unsupported graph type or non-real weights.

    >>> import networkx as nx
    >>> result = graph_ei(nx.path_graph(5, create_using=nx.DiGraph))  # log2(N - 1)
    >>> result.ei, result.n_nodes_with_out_edges
    (2.0, 4)
    >>> round(graph_ei(nx.complete_graph(4)).effectiveness, 6)  # (2 - log2 3) / 2
    0.207519
    """
    edges = _canonicalize(_to_edges(graph, weight))
    _validate(edges, weighted=weight is not None)
    keep = edges.w != 0
    if not bool(keep.all()):
        edges = _Edges(
            edges.row[keep], edges.col[keep], edges.w[keep], edges.n, True, edges.labels
        )
    if weight is None:
        edges.w = torch.ones_like(edges.w)
    elif edges.w.numel() and not math.isfinite(float(edges.w.sum())):
        # finite weights whose sums overflow float64: EI only sees each row's proportions, so
        # dividing every weight by the largest one changes nothing but the overflow
        edges.w = edges.w / edges.w.max()
    return _compute(edges)
