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
    """Rows of W turned into distributions, written out from the definitions."""
    if norm is None:
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
