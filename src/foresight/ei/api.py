"""``determinism``, ``degeneracy``, ``ei`` (the 2020 API) and the per-layer :func:`report`."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from foresight._guard import preserved
from foresight.distributed import full_weights
from foresight.ei.engine import DEFAULT_MAX_DENSE_BYTES, LayerStats, degeneracy_of, layer_stats
from foresight.ei.layers import (
    LINEAR_POSITIONS,
    EILayer,
    Found,
    module_layers,
    op_layer,
    op_operands,
    static_skipped,
)
from foresight.ei.norms import lin_norm
from foresight.ei.registry import is_supported
from foresight.ei.shapes import Shapes, record_shapes
from foresight.results import Row, Rows

__all__ = ["determinism", "degeneracy", "ei", "report", "EIReport", "LayerEI"]

Norm = Callable[[torch.Tensor], torch.Tensor] | None


@dataclass
class LayerEI(Row):
    """One row of :class:`EIReport`: a layer on its own (``to_dict()``, ``to_records()``).

    ``effectiveness`` is Hoel's normalised EI of the layer, ``ei / log2(outputs)`` (0 for a layer
    with a single output).
    """

    metric = "ei"

    name: str
    type: str
    inputs: int
    outputs: int
    determinism: float
    degeneracy: float
    ei: float
    effectiveness: float


@dataclass
class EIReport(Rows):
    """EI of a whole model with one row per layer (see :func:`report`).

    Rows are looked up by name and iterated like every result's (:mod:`foresight.results`):
    ``report.row("fc1")``, ``report["fc1"]``, ``for row in report``; ``to_records()`` gives the
    totals (``ei``, ``determinism``, ``degeneracy``) and every layer's values.

    ``skipped``: short strings ``"name (Type[, why])"``, one per layer left out of EI (a parameter
    use with no weight graph, a layer the forward pass does not call). ``passed_over``: how many
    operations of each kind the forward pass ran that have no weight graph by definition and
    are not counted -- ``"norm"`` (normalisation layers), ``"scale"`` (the scale of a
    normalisation written as a product, as in RMSNorm), ``"bias"`` (biases added on their own:
    position embeddings, ``x + b``), ``"activation"``, ``"max-pool"``, ``"attention"``
    (parameter-free attention), ``"residual"`` (adds of two activations). ``linear_positions``:
    how linear maps applied along a sequence were counted (``"once"`` or ``"each"``).
    """

    ei: float
    determinism: float
    degeneracy: float
    layers: list[LayerEI] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    norm: str = "lin_norm"
    passed_over: dict[str, int] = field(default_factory=dict)
    linear_positions: str = "once"

    metric = "ei"

    def __str__(self) -> str:
        def num(v: float) -> str:
            return f"{(0.0 if abs(v) < 5e-5 else v):.4f}"  # no "-0.0000" from rounding

        head = ("layer", "type", "inputs", "outputs", "determinism", "degeneracy", "ei", "effect.")
        rows = [
            (
                r.name or "(model)",
                r.type,
                str(r.inputs),
                str(r.outputs),
                num(r.determinism),
                num(r.degeneracy),
                num(r.ei),
                num(r.effectiveness),
            )
            for r in self.layers
        ]
        rows.append(
            ("total", "", str(sum(r.inputs for r in self.layers)),
             str(sum(r.outputs for r in self.layers)), num(self.determinism),
             num(self.degeneracy), num(self.ei), "")
        )
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]

        def line(cells: tuple[str, ...]) -> str:
            return "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            ).rstrip()

        out = [
            f"EI of the weight graph (bits, norm={self.norm}, "
            f"linear_positions={self.linear_positions})",
            line(head),
        ]
        out.append("  ".join("-" * w for w in widths))
        out += [line(r) for r in rows]
        if self.skipped:
            out.append("skipped (no weight graph registered): " + ", ".join(self.skipped))
        if self.passed_over:
            out.append("passed over (no weight graph by definition): " + ", ".join(
                f"{n} {k}" for k, n in sorted(self.passed_over.items())))
        return "\n".join(out)


def _default_place(model: nn.Module, input: Any) -> tuple[torch.dtype, torch.device]:
    """Compute dtype/device for layers without weights (pools): the model's, else the input's."""
    for p in model.parameters():
        if p.is_floating_point():
            return (torch.float64 if p.dtype == torch.float64 else torch.float32), p.device
    if isinstance(input, torch.Tensor) and input.is_floating_point():
        return (torch.float64 if input.dtype == torch.float64 else torch.float32), input.device
    return torch.float32, torch.device("cpu")


def _check(model: nn.Module, input: Any, shapes: Any, norm: Norm, linear_positions: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if shapes is None and input is None:
        raise ValueError(
            "pass `input=` (an example batch the model accepts, used to find each layer's shape) "
            "or `shapes=` (the dict returned by foresight.ei.get_shapes(model, input))"
        )
    if norm is not None and not callable(norm):
        raise TypeError(
            f"norm must be lin_norm, soft_norm, sig_norm, None or a callable, got {norm!r}"
        )
    if linear_positions not in LINEAR_POSITIONS:
        raise ValueError(
            f"linear_positions must be 'once' (a linear map counted once, the 2020 convention) or "
            f"'each' (counted at every position, like a 1x1 convolution), got {linear_positions!r}"
        )
    for name, p in model.named_parameters():
        if p.is_meta:
            raise ValueError(
                f"parameter {name!r} is on the meta device: weights on the meta device have no "
                "values, so their EI is undefined; materialise them first (e.g. "
                "model.to_empty(device='cpu') and load_state_dict, or build the model without "
                "device='meta')"
            )


def _layers(
    model: nn.Module, found: Found, modules: dict, each: bool, device: Any, dtype, dev
) -> list[EILayer]:
    names: dict[nn.Module, str] = dict(found.names)
    if any(m not in names for m in modules):
        for n, m in model.named_modules(remove_duplicate=False):
            names.setdefault(m, n)
    order = [entry for entry in found.order if entry[0] == "op" or entry[1] in modules]
    listed = {entry[1] for entry in order if entry[0] == "module"}
    order += [("module", m) for m in modules if m not in listed]
    operands = op_operands(model, found) if found.ops else []
    out: list[EILayer] = []
    for kind, item in order:
        if kind == "op":
            out.append(op_layer(found.ops[item], operands[item], each, device, dtype, dev))
            continue
        module = item
        name = found.names.get(module, names.get(module, type(module).__name__))
        if not is_supported(module):
            raise ValueError(
                f"shapes has layer {name!r} of type {type(module).__name__}, which has no "
                "registered weight graph (see foresight.ei.register_layer)"
            )
        in_shape, out_shape = modules[module]
        out += module_layers(module, name, tuple(in_shape), tuple(out_shape), each, device,
                             dtype, dev)
    return out


def _collect(
    model: nn.Module,
    input: Any,
    shapes: Shapes | dict | None,
    norm: Norm,
    device: str | torch.device | None,
    strict: bool,
    max_dense_bytes: int,
    linear_positions: str = "once",
) -> tuple[list[tuple[EILayer, LayerStats]], list[str], dict[str, int]]:
    _check(model, input, shapes, norm, linear_positions)
    with full_weights(model), preserved(model), torch.no_grad():
        if shapes is None:
            found = record_shapes(model, input).found  # puts the model in eval mode
            modules = dict(found.modules)
        else:
            if isinstance(shapes, Shapes) and shapes.found.ops:
                model.eval()  # the ops' operands may need a forward pass (as when found)
            if isinstance(shapes, Shapes):
                found = shapes.found
            else:
                found = Found(skipped=static_skipped(model))
            modules = dict(shapes)
        skipped = list(found.skipped)
        if skipped:
            msg = (
                "foresight.ei: these layers have parameters but no registered weight graph (or "
                "are not used by the forward pass) and are left out of EI: " + ", ".join(skipped)
                + ". Register them with foresight.ei.register_layer (a module) or "
                "foresight.layers.register_rule (an operation), or pass strict=True to make this "
                "an error."
            )
            if strict:
                raise ValueError(msg)
            warnings.warn(msg, stacklevel=3)
        if not modules and not found.ops:
            found_types = sorted({type(m).__name__ for m in model.modules()})
            raise ValueError(
                "no supported layer (Linear, ConvNd, ConvTransposeNd, AvgPoolNd, "
                "AdaptiveAvgPoolNd, Embedding, MultiheadAttention, a linear/addmm/matmul/conv/"
                "embedding/average-pooling operation or a registered type) in the model; found: "
                f"{', '.join(found_types)}"
            )
        dtype, dev = _default_place(model, input)
        layers = _layers(model, found, modules, linear_positions == "each", device, dtype, dev)
        out = [(layer, layer_stats(layer, norm, max_dense_bytes)) for layer in layers]
    return out, skipped, dict(found.passed_over)


def _determinism(stats: list[LayerStats]) -> float:
    n = sum(s.n_in for s in stats)
    return sum(s.entropy_sum for s in stats) / n if n else 0.0


_DOC_ARGS = """
    Args:
        model: the network.
        input: an example input (a tensor; a tuple is unpacked into positional arguments),
            needed to find the layers' shapes when ``shapes`` is not given.
        shapes: ``{module: (in_shape, out_shape)}`` from :func:`get_shapes`; then ``input`` is
            not used (pass it once and reuse it, e.g. during training).
        norm: :func:`lin_norm` (default), :func:`soft_norm`, :func:`sig_norm`, ``None`` (raw
            weights) -- computed without building the connectivity matrix -- or any callable,
            which receives each layer's dense ``(inputs, outputs)`` matrix.
        device: where to compute (``'cpu'``, ``'cuda'``, ...); default: where each layer's
            weights are.
        strict: raise instead of warning when a layer with parameters has no registered graph.
        max_dense_bytes: largest dense matrix built for a custom norm (default 1 GiB).
        linear_positions: ``"once"`` (default, the 2020 convention): a linear map applied at
            every position of a sequence (``nn.Linear`` on ``(B, T, features)``, an embedding
            lookup, an attention projection) is counted once, as its ``in x out`` weight graph;
            ``"each"``: counted at every position, block-diagonally, like a 1x1 convolution
            (``T * in`` inputs, ``T * out`` outputs). Convolutions and pools always span every
            position.
"""


def determinism(
    model: nn.Module,
    input: Any = None,
    shapes: Shapes | None = None,
    norm: Norm = lin_norm,
    device: str | torch.device | None = None,
    *,
    strict: bool = False,
    max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES,
    linear_positions: str = "once",
) -> float:
    r"""Mean entropy (bits) of the normalised out-weights of every input neuron of every layer.

    .. math::
        \text{determinism} = \langle H(W^{\text{out}}) \rangle
        = \frac{1}{N} \sum_{\ell} \sum_{i=1}^{n^{\ell}_{in}} H(P^{\ell}_i),
        \qquad N = \sum_\ell n^\ell_{in},

    where :math:`P^\ell` is layer :math:`\ell`'s normalised connectivity matrix (rows: its input
    neurons; all-zero rows count with entropy 0).
    """ + _DOC_ARGS + """
    Returns:
        determinism (float)

    >>> import torch
    >>> determinism(torch.nn.Linear(4, 4), torch.randn(1, 4)) <= 2.0
    True
    """
    stats, _, _ = _collect(model, input, shapes, norm, device, strict, max_dense_bytes,
                           linear_positions)
    return _determinism([s for _, s in stats])


def degeneracy(
    model: nn.Module,
    input: Any = None,
    shapes: Shapes | None = None,
    norm: Norm = lin_norm,
    device: str | torch.device | None = None,
    *,
    strict: bool = False,
    max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES,
    linear_positions: str = "once",
) -> float:
    r"""Entropy (bits) of the cumulative normalised in-weights of all output neurons.

    .. math::
        \text{degeneracy} = H(\langle W^{\text{out}} \rangle), \qquad
        \langle W^{\text{out}} \rangle_j = \frac{c_j}{\sum_k c_k},\quad c_j = \sum_i P_{ij},

    with the column masses :math:`c_j` of all layers concatenated into one vector.
    """ + _DOC_ARGS + """
    Returns:
        degeneracy (float)

    >>> import torch
    >>> m = torch.nn.Linear(4, 4, bias=False)
    >>> _ = torch.nn.init.ones_(m.weight)
    >>> degeneracy(m, torch.randn(1, 4))
    2.0
    """
    stats, _, _ = _collect(model, input, shapes, norm, device, strict, max_dense_bytes,
                           linear_positions)
    return degeneracy_of([s for _, s in stats])


def ei(
    model: nn.Module,
    input: Any = None,
    shapes: Shapes | None = None,
    norm: Norm = lin_norm,
    device: str | torch.device | None = None,
    *,
    strict: bool = False,
    max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES,
    linear_positions: str = "once",
) -> float:
    r"""Effective information (bits) of the model's weight graph.

    .. math::
        \text{EI} = \text{degeneracy} - \text{determinism}
        = H(\langle W^{\text{out}} \rangle) - \langle H(W^{\text{out}}) \rangle
        = \frac{1}{N} \sum_i D_{\text{KL}}\big[W^{\text{out}}_i \,\big\|\,
          \langle W^{\text{out}} \rangle\big] \;\ge 0

    (the 2020 docstring's "determinism - degeneracy" is a sign typo; its code returned this).
    An identity or permutation layer of width :math:`n` has EI :math:`\log_2 n`, an all-ones
    layer 0.
    """ + _DOC_ARGS + """
    Returns:
        ei (float)

    >>> import torch
    >>> m = torch.nn.Linear(8, 8, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.copy_(torch.eye(8))
    >>> ei(m, torch.randn(1, 8))
    3.0
    """
    stats, _, _ = _collect(model, input, shapes, norm, device, strict, max_dense_bytes,
                           linear_positions)
    layer = [s for _, s in stats]
    return degeneracy_of(layer) - _determinism(layer)


def _norm_name(norm: Norm) -> str:
    if norm is None:
        return "None"
    return getattr(norm, "__name__", repr(norm))


def report(
    model: nn.Module,
    input: Any = None,
    shapes: Shapes | None = None,
    norm: Norm = lin_norm,
    device: str | torch.device | None = None,
    *,
    strict: bool = False,
    max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES,
    linear_positions: str = "once",
) -> EIReport:
    r"""EI, determinism and degeneracy of the model, and of every layer on its own.

    The totals equal :func:`ei`, :func:`determinism` and :func:`degeneracy`. Each row of
    ``.layers`` has the layer's ``name`` (from ``named_modules``), ``type``, number of
    ``inputs`` and ``outputs`` (neurons, per example), its own ``determinism``, ``degeneracy``
    and ``ei``, and Hoel's normalised **effectiveness**

    .. math::
        \text{effectiveness} = \frac{\text{EI}_\ell}{\log_2 n^\ell_{out}} \in [0, 1],

    the fraction of the largest EI a layer with that many outputs can have (0 for a layer with a
    single output). ``.skipped`` names layers with parameters but no registered weight graph.
    """ + _DOC_ARGS + """
    Returns:
        :class:`EIReport` (``to_dict()``, ``to_dataframe()``, a table when printed).

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> r = report(net, torch.randn(1, 8))
    >>> [row.name for row in r.layers]
    ['0', '2']
    >>> abs(r.ei - ei(net, torch.randn(1, 8))) < 1e-12
    True
    """
    stats, skipped, passed = _collect(model, input, shapes, norm, device, strict,
                                      max_dense_bytes, linear_positions)
    rows = []
    for layer, s in stats:
        det, deg = s.determinism, s.degeneracy
        value = deg - det
        eff = value / math.log2(s.n_out) if s.n_out > 1 else 0.0
        rows.append(LayerEI(layer.name, layer.type, s.n_in, s.n_out, det, deg, value, eff))
    layer = [s for _, s in stats]
    det, deg = _determinism(layer), degeneracy_of(layer)
    return EIReport(deg - det, det, deg, rows, skipped, _norm_name(norm), passed,
                    linear_positions)
