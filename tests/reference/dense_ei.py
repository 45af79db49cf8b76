"""Brute-force EI from the definition, independent of ``foresight.ei``.

Each layer's connectivity matrix is the Jacobian (torch.func.jacfwd/jacrev) of the bias-free layer
applied to one example, transposed to (inputs x outputs); norms, entropies, determinism and
degeneracy are written out from their definitions (SCIENCE.md section 1). Everything in float64.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

LAYER_TYPES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)


def jacobian_matrix(module: nn.Module, example_shape: tuple[int, ...]) -> torch.Tensor:
    """(inputs x outputs) Jacobian of the bias-free ``module`` at one example of ``example_shape``.

    ``example_shape`` excludes the batch dimension. For ``nn.Linear`` only the last dimension is
    used (the 2020 convention: the weight graph, counted once).
    """
    layer = copy.deepcopy(module).double()
    layer._forward_hooks.clear()
    layer._forward_pre_hooks.clear()
    if getattr(layer, "bias", None) is not None:
        layer.bias = None
    if isinstance(module, nn.Linear):
        example_shape = (example_shape[-1],)
    n_in = math.prod(example_shape)

    def f(x: torch.Tensor) -> torch.Tensor:
        return layer(x.reshape(1, *example_shape)).reshape(-1)

    x0 = torch.zeros(n_in, dtype=torch.float64)
    n_out = f(x0).numel()
    J = (torch.func.jacfwd(f) if n_in <= n_out else torch.func.jacrev(f))(x0)
    return J.detach().T.contiguous()


def normalise(W: torch.Tensor, norm: str | None) -> torch.Tensor:
    """Rows of W turned into distributions, written out from the definitions (an empty matrix
    stays empty: no connections)."""
    if norm is None or W.numel() == 0:
        return W
    if norm == "lin":
        r = torch.where(W > 0, W, torch.zeros_like(W))
        s = r.sum(1, keepdim=True)
        safe = torch.where(s > 0, s, torch.ones_like(s))
        return torch.where(s > 0, r / safe, torch.zeros_like(r))
    if norm == "soft":
        e = torch.exp(W - W.max(1, keepdim=True).values)
        return e / e.sum(1, keepdim=True)
    if norm == "sig":
        s = 1.0 / (1.0 + torch.exp(-W))
        return s / s.sum(1, keepdim=True)
    raise ValueError(norm)


def entropy_bits(p: torch.Tensor) -> torch.Tensor:
    """-sum p log2 p over the last axis, counting only p > 0 (as the 2020 code did)."""
    safe = torch.where(p > 0, p, torch.ones_like(p))
    return -(torch.where(p > 0, p * torch.log2(safe), torch.zeros_like(p))).sum(-1)


def ei_from_matrices(matrices: list[torch.Tensor], norm: str | None) -> tuple[float, float, float]:
    """(ei, determinism, degeneracy) of a list of normalised-per-layer connectivity matrices."""
    P = [normalise(W, norm) for W in matrices]
    rows = torch.cat([entropy_bits(p) for p in P])
    det = float(rows.mean())
    cols = torch.cat([p.sum(0) for p in P])
    q = cols / cols.sum()
    deg = float(entropy_bits(q))
    return deg - det, det, deg


def layer_examples(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module, tuple[int, ...]]]:
    """Every supported layer of ``model`` with its per-example input shape, in call order."""
    found: list[tuple[nn.Module, tuple[int, ...]]] = []
    seen: set[int] = set()
    handles = []

    def hook(module, args, output):
        if id(module) not in seen:
            seen.add(id(module))
            found.append((module, tuple(args[0].shape[1:])))

    clone = copy.deepcopy(model).eval()
    for m in clone.modules():
        if isinstance(m, LAYER_TYPES):
            handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        clone(x)
    return found


def dense_ei(
    model: nn.Module, x: torch.Tensor, norm: str | None = "lin"
) -> tuple[float, float, float]:
    """(ei, determinism, degeneracy) of ``model`` by brute force."""
    mats = [jacobian_matrix(m, shape) for m, shape in layer_examples(model, x)]
    return ei_from_matrices(mats, norm)


# --------------------------------------------------------------------------- real models
#
# Written independently of foresight's layer core: every call of a weight operation during the
# forward pass is recorded with the tensors it actually read (so a parametrized or weight-normed
# weight is its computed value); a call counts when its data input depends on the model's input
# (a second pass on changed inputs changes it: position ids do not); the connectivity matrix is
# the Jacobian of the bias-free operation on one example (torch.func), the embedding's the rows
# F.embedding returns for each one-hot token. Calls reading equal weights with the same operation
# are counted once (a shared or tied layer; the 2020 convention).

import torch.nn.functional as F  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

_SIGNATURES = {
    F.linear: ("input", "weight", "bias"),
    torch.addmm: ("input", "mat1", "mat2"),
    torch.Tensor.addmm: ("input", "mat1", "mat2"),
    F.embedding: ("input", "weight", "padding_idx"),
    F.conv1d: ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    F.conv2d: ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    F.conv3d: ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    F.avg_pool1d: ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    F.avg_pool2d: ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                   "divisor_override"),
    F.avg_pool3d: ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                   "divisor_override"),
    F.adaptive_avg_pool1d: ("input", "output_size"),
    F.adaptive_avg_pool2d: ("input", "output_size"),
    F.adaptive_avg_pool3d: ("input", "output_size"),
    F.multi_head_attention_forward: (
        "query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight",
        "in_proj_bias", "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight",
        "out_proj_bias",
    ),
}

def _data(func, b):
    """The call's data input (what depends on the model's input, if anything)."""
    if func in (torch.addmm, torch.Tensor.addmm):
        return b["mat1"]
    return b["query"] if func is F.multi_head_attention_forward else b["input"]


def _detach(v):
    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, (list, tuple)):
        return type(v)(_detach(x) for x in v)
    return v


class _Record(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        names = _SIGNATURES.get(func)
        if names is not None:
            bound = {n: _detach(a) for n, a in zip(names, args)}
            bound.update({k: _detach(v) for k, v in kwargs.items()})
            self.calls.append((func, bound))
        return func(*args, **kwargs)


def _changed(inputs):
    gen = torch.Generator().manual_seed(7)

    def change(t):
        if not isinstance(t, torch.Tensor):
            return t
        if t.is_floating_point():
            return t + torch.randn(t.shape, generator=gen, dtype=t.dtype)
        top = int(t.max()) + 1 if t.numel() else 1
        return (t + 1) % max(top, 2)

    if isinstance(inputs, dict):
        return {k: change(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(change(v) for v in inputs)
    return change(inputs)


def _run(model, inputs):
    rec = _Record()
    with torch.no_grad(), rec:
        if isinstance(inputs, dict):
            model(**inputs)
        elif isinstance(inputs, (tuple, list)):
            model(*inputs)
        else:
            model(inputs)
    return rec.calls


def _jac(f, n_in):
    x0 = torch.zeros(n_in, dtype=torch.float64)
    n_out = f(x0).numel()
    J = (torch.func.jacfwd(f) if n_in <= n_out else torch.func.jacrev(f))(x0)
    return J.detach().T.contiguous()


def _matrices(func, b, batch, each):
    """The (inputs x outputs) matrices of one recorded call."""
    if func is F.linear:
        x, w = b["input"], b["weight"].double()
        t = x.numel() // (batch * w.shape[1]) if each else 1
        return [_jac(lambda v: F.linear(v.reshape(t, -1), w).reshape(-1), t * w.shape[1])]
    if func in (torch.addmm, torch.Tensor.addmm):
        x, w = b["mat1"], b["mat2"].double()
        alpha = float(b.get("alpha", 1))
        t = x.shape[0] // batch if each else 1
        zero = torch.zeros(w.shape[1], dtype=torch.float64)
        return [_jac(lambda v: torch.addmm(zero, v.reshape(t, -1), w, alpha=alpha).reshape(-1),
                     t * w.shape[0])]
    if func is F.embedding:
        idx, w = b["input"], b["weight"].double()
        rows = torch.stack([F.embedding(torch.tensor([i]), w)[0] for i in range(w.shape[0])])
        t = idx.numel() // batch if each else 1
        return [torch.block_diag(*([rows] * t))]
    if func is F.multi_head_attention_forward:
        q = b["query"]
        e = q.shape[-1]
        t = q.numel() // (batch * e) if each else 1
        out = []
        for key in ("in_proj_weight", "out_proj_weight"):
            w = b[key].double()
            out.append(_jac(lambda v, w=w: F.linear(v.reshape(t, -1), w).reshape(-1),
                            t * w.shape[1]))
        return out
    # convolutions and pools: the Jacobian on one example (the batch is dim 0)
    x = b["input"]
    shape = tuple(x.shape[1:])
    rest = {k: v for k, v in b.items() if k not in ("input", "bias")}
    if "weight" in rest:
        rest["weight"] = rest["weight"].double()
        w = rest.pop("weight")
        return [_jac(lambda v: func(v.reshape(1, *shape), w, None, **rest).reshape(-1),
                     math.prod(shape))]
    return [_jac(lambda v: func(v.reshape(1, *shape), **rest).reshape(-1), math.prod(shape))]


def _weights(func, b):
    keys = {F.embedding: ("weight",), torch.addmm: ("mat2",), torch.Tensor.addmm: ("mat2",),
            F.multi_head_attention_forward: ("in_proj_weight", "out_proj_weight")}
    return [b[k] for k in keys.get(func, ("weight",)) if isinstance(b.get(k), torch.Tensor)]


def op_matrices(model: nn.Module, inputs, each: bool = False) -> list[torch.Tensor]:
    """Every weight graph of ``model`` on ``inputs`` (see the comment above), in call order."""
    assert not model.training, "put the model in eval mode"
    clone = model  # (not copied: the old weight_norm cannot be deep-copied)
    first = next(t for t in (inputs.values() if isinstance(inputs, dict) else
                             (inputs if isinstance(inputs, (tuple, list)) else [inputs]))
                 if isinstance(t, torch.Tensor))
    batch = int(first.shape[0])
    calls = _run(clone, inputs)
    again = _run(clone, _changed(inputs))
    assert [f for f, _ in calls] == [f for f, _ in again], "the forward pass is not stable"
    kept: list[tuple] = []
    mats: list[torch.Tensor] = []
    for (func, b), (_, b2) in zip(calls, again):
        data, data2 = _data(func, b), _data(func, b2)
        if data.shape == data2.shape and torch.equal(data, data2):
            continue  # does not depend on the input: a bias (position embedding)
        ws = _weights(func, b)
        if ws and any(f is func and len(w2) == len(ws) and all(
            a.shape == c.shape and torch.equal(a, c) for a, c in zip(ws, w2)
        ) for f, w2 in kept):
            continue
        if ws:
            kept.append((func, ws))
        mats += _matrices(func, b, batch, each)
    return mats


def dense_ei_ops(model: nn.Module, inputs, norm: str | None = "lin", each: bool = False):
    """(ei, determinism, degeneracy) of a real model by brute force (see :func:`op_matrices`)."""
    return ei_from_matrices(op_matrices(model, inputs, each), norm)
