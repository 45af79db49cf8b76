"""Per-example gradient rules: one small pure function per layer type.

A rule turns what a layer saw in the forward pass (its input ``a``, batch along dim 0) and the
gradient of the loss with respect to its output (``g``, same batch layout) into, for each of the
layer's own parameters, either

* the per-example **squared norms** ``[B]`` (``sq_norms``; never forms a per-example gradient when a
  cheaper identity exists), or
* the materialised per-example **gradients** ``[B, *param.shape]`` (``grads``; needed when one
  parameter is used several times, where the cross terms between the uses matter).

For a Linear layer on a sequence, with :math:`A_b \\in \\mathbb{R}^{T\\times I}` the inputs and
:math:`G_b \\in \\mathbb{R}^{T\\times K}` the output gradients of example :math:`b`,

.. math::

    \\lVert G_b^\\top A_b \\rVert_F^2 = \\langle A_b A_b^\\top, G_b G_b^\\top \\rangle_F ,

which costs :math:`T^2 (I + K)` per example against :math:`T I K` for materialising
:math:`G_b^\\top A_b`; :func:`outer_sq_norms` picks the cheaper one (for :math:`T = 1` it is
Goodfellow's :math:`\\lVert g_b\\rVert^2 \\lVert a_b\\rVert^2`).

Rules are registered by type with :func:`register` and found with :func:`find_rule`, which walks the
method resolution order, so subclasses of a supported layer use its rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Rule", "register", "find_rule", "outer_sq_norms", "coupled_batch_norms"]

PerParam = dict[str, Tensor]
RuleFn = Callable[[nn.Module, Tensor, Tensor], PerParam]


@dataclass(frozen=True)
class Rule:
    """How to get per-example squared norms (and gradients) of one layer type's parameters."""

    sq_norms: RuleFn
    grads: RuleFn


_RULES: dict[type, Rule] = {}


def register(cls: type, *, sq_norms: RuleFn, grads: RuleFn) -> None:
    """Register the rule of layer type ``cls`` (it then also applies to its subclasses)."""
    _RULES[cls] = Rule(sq_norms=sq_norms, grads=grads)


def find_rule(module: nn.Module) -> Rule | None:
    """The rule for ``module`` (nearest registered class in its MRO), or ``None``."""
    for klass in type(module).__mro__:
        rule = _RULES.get(klass)
        if rule is not None:
            return rule
    return None


def coupled_batch_norms(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers that normalise with batch statistics (train mode, or no
    running statistics), which couple the examples of a batch."""
    return [
        name or type(model).__name__
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)
    ]


# --------------------------------------------------------------------------- shared helpers


def outer_sq_norms(a: Tensor, g: Tensor) -> Tensor:
    """:math:`\\lVert \\sum_t g_{bt} a_{bt}^\\top\\rVert_F^2` for ``a [B, T, I]``, ``g [B, T, K]``.

    Uses the Gram form (cost :math:`B T^2 (I+K)`) or the materialised per-example product
    (cost :math:`B T I K`), whichever is cheaper.

    >>> a, g = torch.randn(2, 3, 4), torch.randn(2, 3, 5)
    >>> ref = torch.einsum("bti,btk->bik", a, g).square().sum((1, 2))
    >>> torch.allclose(outer_sq_norms(a, g), ref)
    True
    """
    t, i, k = a.shape[1], a.shape[2], g.shape[2]
    if t == 1:
        return _sq(a) * _sq(g)
    if t * (i + k) < i * k:
        return (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
    return _sq(torch.bmm(g.transpose(1, 2), a))


def _sq(x: Tensor) -> Tensor:
    """Squared Euclidean norm of each example (all dims after the first), without temporaries."""
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1).square()


def _wants(module: nn.Module, name: str) -> bool:
    p = getattr(module, name, None)
    return isinstance(p, nn.Parameter) and p.requires_grad


def _affine(module: nn.Module, xhat: Tensor, g: Tensor, keep: int, squared: bool) -> PerParam:
    """Per-example grads / squared norms of an elementwise affine ``weight * xhat + bias``.

    ``keep`` is the number of trailing dims the parameters span (the rest, after the batch, are
    summed), except for channel-first layers where the caller moves the channel to the end.
    """
    out: PerParam = {}
    b = g.shape[0]
    shape = g.shape[g.dim() - keep :]
    for name in ("weight", "bias"):
        if not _wants(module, name):
            continue
        src = g * xhat if name == "weight" else g
        per = src.reshape(b, -1, *shape).sum(1)
        out[name] = _sq(per) if squared else per
    return out


# --------------------------------------------------------------------------- Linear


def _linear_parts(a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    b = a.shape[0]
    return a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1])


def linear_sq_norms(module: nn.Module, a: Tensor, g: Tensor) -> PerParam:
    """Linear on ``[B, ..., I]``: outer-product/Gram identity for the weight, ``|sum_t g|^2``
    for the bias."""
    a3, g3 = _linear_parts(a, g)
    out: PerParam = {}
    if _wants(module, "weight"):
        out["weight"] = outer_sq_norms(a3, g3)
    if _wants(module, "bias"):
        out["bias"] = _sq(g3.sum(1))
    return out


def linear_grads(module: nn.Module, a: Tensor, g: Tensor) -> PerParam:
    """Linear per-example gradients: ``W_b = sum_t g_bt a_bt^T``, ``b_b = sum_t g_bt``."""
    a3, g3 = _linear_parts(a, g)
    out: PerParam = {}
    if _wants(module, "weight"):
        out["weight"] = torch.bmm(g3.transpose(1, 2), a3)
    if _wants(module, "bias"):
        out["bias"] = g3.sum(1)
    return out


register(nn.Linear, sq_norms=linear_sq_norms, grads=linear_grads)


# --------------------------------------------------------------------------- Convolutions


def _conv_input(module: nn.Module, a: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """The input and integer padding to hand to the convolution backward (string padding and
    non-zero padding modes are applied to the input explicitly)."""
    nd = len(module.kernel_size)
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        pads = module._reversed_padding_repeated_twice
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        return (F.pad(a, pads, mode=mode) if any(pads) else a), (0,) * nd
    return a, tuple(module.padding)


#: How per-example conv weight gradients are formed: ``"grouped"`` (default: one grouped
#: convolution of the input with the output gradients as kernels per chunk of
#: ``CONV_CHUNK`` examples) or ``"loop"`` (the convolution's own weight backward, one example at a
#: time). On the reference CPU, chunks of 4 beat both the loop and one call for the whole batch,
#: with one thread and with two.
CONV_METHOD = "grouped"
CONV_CHUNK = 4


def _conv_weight_grads_loop(module: nn.Module, a: Tensor, g: Tensor):
    x, padding = _conv_input(module, a)
    nd = len(module.kernel_size)
    for i in range(a.shape[0]):
        yield torch.ops.aten.convolution_backward(
            g[i : i + 1],
            x[i : i + 1],
            module.weight,
            None,
            list(module.stride),
            list(padding),
            list(module.dilation),
            False,
            [0] * nd,
            module.groups,
            [False, True, False],
        )[1]


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv_weight_grads_grouped(module: nn.Module, a: Tensor, g: Tensor) -> Tensor:
    """``[B, *weight.shape]``: per-example weight gradients as one grouped convolution.

    :math:`W_b[o, c, k] = \\sum_l G_b[o, l]\\, X_b[c, l s + k d]` is a convolution of the
    (padded) input with the output gradient as kernel, stride :math:`d` and dilation :math:`s`
    (the layer's dilation and stride swapped); every (example, group) pair is one group.
    """
    x, padding = _conv_input(module, a)
    nd = len(module.kernel_size)
    bsz, groups = x.shape[0], module.groups
    cin_g, cout = x.shape[1] // groups, g.shape[1]
    inp = x.reshape(bsz * groups, cin_g, *x.shape[2:]).transpose(0, 1)
    ker = g.reshape(bsz * cout, 1, *g.shape[2:])
    out = _CONV[nd](
        inp,
        ker,
        None,
        stride=tuple(module.dilation),
        padding=tuple(padding),
        dilation=tuple(module.stride),
        groups=bsz * groups,
    )
    out = out[(slice(None), slice(None)) + tuple(slice(0, k) for k in module.kernel_size)]
    return out.transpose(0, 1).reshape(bsz, *module.weight.shape)


def _conv_weight_grads(module: nn.Module, a: Tensor, g: Tensor):
    """Each example's weight gradient (an iterable of weight-shaped tensors or ``[b, ...]``
    chunks, see ``CONV_METHOD``)."""
    if CONV_METHOD == "loop":
        return _conv_weight_grads_loop(module, a, g)
    step = max(1, CONV_CHUNK)
    return (
        _conv_weight_grads_grouped(module, a[i : i + step], g[i : i + step])
        for i in range(0, a.shape[0], step)
    )


def conv_sq_norms(module: nn.Module, a: Tensor, g: Tensor) -> PerParam:
    """Conv1d/2d/3d (stride, padding incl. modes, dilation, groups).

    The weight's per-example gradient :math:`\\sum_l G_{bl} A_{bl}^\\top` (``l`` the output
    positions, ``A`` the input patches) is formed by the convolution's own weight backward one
    example at a time, or for a few examples at once by a grouped convolution (see
    ``CONV_METHOD``), and reduced to its squared norm.
    """
    out: PerParam = {}
    bsz = a.shape[0]
    if _wants(module, "weight"):
        parts = [_sq(w.reshape(-1, *module.weight.shape)) for w in _conv_weight_grads(module, a, g)]
        out["weight"] = torch.cat(parts)
    if _wants(module, "bias"):
        out["bias"] = _sq(g.reshape(bsz, g.shape[1], -1).sum(2))
    return out


def conv_grads(module: nn.Module, a: Tensor, g: Tensor) -> PerParam:
    """Conv per-example gradients, shaped like the weight ``[B, Cout, Cin/groups, *kernel]``."""
    out: PerParam = {}
    bsz = a.shape[0]
    if _wants(module, "weight"):
        parts = [w.reshape(-1, *module.weight.shape) for w in _conv_weight_grads(module, a, g)]
        out["weight"] = torch.cat(parts)
    if _wants(module, "bias"):
        out["bias"] = g.reshape(bsz, g.shape[1], -1).sum(2)
    return out


for _conv in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register(_conv, sq_norms=conv_sq_norms, grads=conv_grads)


# --------------------------------------------------------------------------- Embedding


def _embedding_rows(module: nn.Embedding, idx: Tensor, g: Tensor):
    """Per-(example, token id) summed gradient rows: ``(keys, rows)``; key = b * V + id."""
    bsz = idx.shape[0]
    n_emb = module.num_embeddings
    flat = idx.reshape(bsz, -1)
    gg = g.reshape(bsz, flat.shape[1], -1)
    keys = (torch.arange(bsz, device=idx.device)[:, None] * n_emb + flat).reshape(-1)
    rows = gg.reshape(-1, gg.shape[-1])
    if module.padding_idx is not None:
        keep = flat.reshape(-1) != module.padding_idx
        keys, rows = keys[keep], rows[keep]
    uniq, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    sums = rows.new_zeros(uniq.shape[0], rows.shape[1]).index_add_(0, inverse, rows)
    if module.scale_grad_by_freq:
        sums = sums / counts[:, None].to(sums.dtype)
    return uniq, sums


def embedding_sq_norms(module: nn.Module, a: Tensor, g: Tensor) -> PerParam:
    """Embedding: sums the output gradients of equal ids within each example (sort, no
    ``[B, V, D]`` tensor); honours ``padding_idx`` and ``scale_grad_by_freq`` (per example)."""
    if not _wants(module, "weight"):
        return {}
    keys, sums = _embedding_rows(module, a, g)
    owner = torch.div(keys, module.num_embeddings, rounding_mode="floor")
    norms = g.new_zeros(a.shape[0]).index_add_(0, owner, sums.square().sum(1))
    return {"weight": norms}


def embedding_grads(module: nn.Module, a: Tensor, g: Tensor) -> PerParam:
    """Embedding per-example gradients ``[B, V, D]``."""
    if not _wants(module, "weight"):
        return {}
    keys, sums = _embedding_rows(module, a, g)
    bsz, (n_emb, dim) = a.shape[0], module.weight.shape
    full = g.new_zeros(bsz * n_emb, dim).index_copy_(0, keys, sums)
    return {"weight": full.reshape(bsz, n_emb, dim)}


register(nn.Embedding, sq_norms=embedding_sq_norms, grads=embedding_grads)


# --------------------------------------------------------------------------- normalisation layers


def _layer_norm_hat(module: nn.Module, a: Tensor) -> Tensor:
    return F.layer_norm(a, module.normalized_shape, None, None, module.eps)


def _rms_norm_hat(module: nn.Module, a: Tensor) -> Tensor:
    if hasattr(F, "rms_norm"):
        return F.rms_norm(a, module.normalized_shape, None, module.eps)
    dims = tuple(range(a.dim() - len(module.normalized_shape), a.dim()))  # pragma: no cover
    eps = module.eps if module.eps is not None else torch.finfo(a.dtype).eps  # pragma: no cover
    return a * torch.rsqrt(a.square().mean(dims, keepdim=True) + eps)  # pragma: no cover


def _group_norm_hat(module: nn.Module, a: Tensor) -> Tensor:
    return F.group_norm(a, module.num_groups, None, None, module.eps)


def _batch_norm_hat(module: nn.Module, a: Tensor) -> Tensor:
    shape = (1, -1) + (1,) * (a.dim() - 2)
    mean = module.running_mean.reshape(shape)
    var = module.running_var.reshape(shape)
    return (a - mean) * torch.rsqrt(var + module.eps)


def _trailing(hat: Callable[[nn.Module, Tensor], Tensor], squared: bool) -> RuleFn:
    """Rule for layers whose parameters span the trailing ``normalized_shape`` dims."""

    def rule(module: nn.Module, a: Tensor, g: Tensor) -> PerParam:
        return _affine(module, hat(module, a), g, len(module.normalized_shape), squared)

    return rule


def _channel(hat: Callable[[nn.Module, Tensor], Tensor], squared: bool) -> RuleFn:
    """Rule for layers whose parameters are per channel (dim 1)."""

    def rule(module: nn.Module, a: Tensor, g: Tensor) -> PerParam:
        xh = hat(module, a)
        return _affine(module, xh.movedim(1, -1), g.movedim(1, -1), 1, squared)

    return rule


register(
    nn.LayerNorm,
    sq_norms=_trailing(_layer_norm_hat, True),
    grads=_trailing(_layer_norm_hat, False),
)
if hasattr(nn, "RMSNorm"):  # torch >= 2.4
    register(
        nn.RMSNorm,
        sq_norms=_trailing(_rms_norm_hat, True),
        grads=_trailing(_rms_norm_hat, False),
    )
register(
    nn.GroupNorm,
    sq_norms=_channel(_group_norm_hat, True),
    grads=_channel(_group_norm_hat, False),
)
register(
    nn.modules.batchnorm._BatchNorm,
    sq_norms=_channel(_batch_norm_hat, True),
    grads=_channel(_batch_norm_hat, False),
)
