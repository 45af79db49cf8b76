"""Every layer type and option, all norms, against the brute-force Jacobian reference.

Random configurations (seeded) of stride, padding (ints, 'same', 'valid', every padding mode),
dilation, groups, output_padding, pool padding / ceil_mode / count_include_pad / divisor_override
and adaptive pools with non-divisible sizes. Tolerance: 1e-6 relative (float64 weights).
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import foresight.ei as fei
from tests.reference.dense_ei import ei_from_matrices, jacobian_matrix

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

NORMS = [("lin", fei.lin_norm), ("soft", fei.soft_norm), ("sig", fei.sig_norm), (None, None)]
CASES = 4
REL = 1e-6


def _custom_lin(W: torch.Tensor) -> torch.Tensor:  # a custom callable: forces the dense path
    return fei.lin_norm(W)


def _conv(rng: random.Random, nd: int):
    g = rng.choice([1, 1, 2, 3])
    cin, cout = g * rng.randint(1, 2), g * rng.randint(1, 3)
    k = tuple(rng.randint(1, 3) for _ in range(nd))
    d = tuple(rng.randint(1, 2) for _ in range(nd))
    base = {1: (6, 12), 2: (4, 8), 3: (3, 5)}[nd]
    size = tuple(rng.randint(max(base[0], (kk - 1) * dd + 1), base[1]) for kk, dd in zip(k, d))
    mode = rng.choice(["zeros", "zeros", "zeros", "circular", "reflect", "replicate"])
    kind = rng.choice(["int", "int", "same", "valid"])
    if kind == "same":
        stride, padding = 1, "same"
    elif kind == "valid":
        stride, padding = rng.randint(1, 3), "valid"
    else:
        stride = rng.randint(1, 3)
        padding = tuple(rng.randint(0, min(2, s - 1)) for s in size)
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd]
    m = cls(cin, cout, k, stride=stride, padding=padding, dilation=d, groups=g, padding_mode=mode)
    return m, (cin, *size)


def _conv_t(rng: random.Random, nd: int):
    g = rng.choice([1, 1, 2])
    cin, cout = g * rng.randint(1, 2), g * rng.randint(1, 3)
    k = tuple(rng.randint(1, 3) for _ in range(nd))
    s = tuple(rng.randint(1, 3) for _ in range(nd))
    d = tuple(rng.randint(1, 2) for _ in range(nd))
    p = tuple(rng.randint(0, (kk - 1) * dd // 2) for kk, dd in zip(k, d))
    op = tuple(rng.randint(0, max(ss, dd) - 1) for ss, dd in zip(s, d))
    size = tuple(rng.randint(2, {1: 7, 2: 4, 3: 3}[nd]) for _ in range(nd))
    cls = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[nd]
    m = cls(cin, cout, k, stride=s, padding=p, output_padding=op, groups=g, dilation=d)
    return m, (cin, *size)


def _pool(rng: random.Random, nd: int):
    k = tuple(rng.randint(1, 3) for _ in range(nd))
    s = tuple(rng.randint(1, 3) for _ in range(nd))
    p = tuple(rng.randint(0, kk // 2) for kk in k)
    size = tuple(rng.randint(max(3, kk), {1: 11, 2: 7, 3: 5}[nd]) for kk in k)
    kwargs = dict(ceil_mode=rng.random() < 0.5, count_include_pad=rng.random() < 0.5)
    if nd > 1 and rng.random() < 0.4:
        kwargs["divisor_override"] = rng.randint(1, 5)
    cls = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[nd]
    return cls(k, stride=s, padding=p, **kwargs), (rng.randint(1, 3), *size)


def _adaptive(rng: random.Random, nd: int):
    size = tuple(rng.randint(2, {1: 13, 2: 7, 3: 5}[nd]) for _ in range(nd))
    out = tuple(rng.randint(1, n + 1) for n in size)  # non-divisible, sometimes larger than n
    cls = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[nd]
    return cls(out if nd > 1 else out[0]), (rng.randint(1, 3), *size)


def _linear(rng: random.Random, nd: int):
    n_in, n_out = rng.randint(1, 20), rng.randint(1, 20)
    return nn.Linear(n_in, n_out, bias=rng.random() < 0.5), (n_in,)


FAMILIES = {
    "linear": (_linear, [1]),
    "conv": (_conv, [1, 2, 3]),
    "conv_transpose": (_conv_t, [1, 2, 3]),
    "avgpool": (_pool, [1, 2, 3]),
    "adaptive_avgpool": (_adaptive, [1, 2, 3]),
}

PARAMS = [
    (family, nd, case)
    for family, (_, dims) in FAMILIES.items()
    for nd in dims
    for case in range(CASES)
]


def _make(family: str, nd: int, case: int):
    rng = random.Random(f"{family}-{nd}-{case}")
    torch.manual_seed(rng.randint(0, 2**31))
    make, _ = FAMILIES[family]
    module, example = make(rng, nd)
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(2.0)  # weights of both signs and a few > 1
    return module, example


@pytest.mark.filterwarnings("ignore:Using padding=.same.")
@pytest.mark.parametrize("family,nd,case", PARAMS)
def test_layer_against_dense_reference(family, nd, case):
    module, example = _make(family, nd, case)
    x = torch.randn(2, *example, dtype=torch.float64)
    W = jacobian_matrix(module, example)
    for name, norm in NORMS + [("lin", _custom_lin)]:
        expected = ei_from_matrices([W], name)
        r = fei.report(module, x, norm=norm)
        for got, want in zip((r.ei, r.determinism, r.degeneracy), expected):
            assert got == pytest.approx(want, rel=REL, abs=1e-9), (module, name)


@pytest.mark.parametrize("family,nd,case", [p for p in PARAMS if p[2] < 3])
def test_dense_builder_is_the_jacobian(family, nd, case):
    module, example = _make(family, nd, case)
    x = torch.randn(1, *example, dtype=torch.float64)
    shapes = fei.get_shapes(module, x)
    in_shape, out_shape = shapes[module]
    builder = fei.VALID_MODULES[type(module)]
    got = builder(module, in_shape, out_shape).to(torch.float64)
    want = jacobian_matrix(module, example)
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)


def test_unbatched_input_matches_batched():
    m = nn.Conv2d(2, 3, 3, padding=1).double()
    x = torch.randn(2, 5, 5, dtype=torch.float64)
    assert fei.ei(m, x) == pytest.approx(fei.ei(m, x[None]), rel=1e-12)
    p = nn.AvgPool2d(2)
    assert fei.ei(p, x) == pytest.approx(fei.ei(p, x[None]), rel=1e-12)


def test_float32_agrees_with_float64():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Conv2d(8, 4, 3, groups=4), nn.Flatten(), nn.Linear(16, 5))
    x = torch.randn(1, 3, 8, 8)
    for _, norm in NORMS:
        a = fei.ei(net, x, norm=norm)
        b = fei.ei(net.double(), x.double(), norm=norm)
        net.float()
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights(dtype):
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3))
    shapes = fei.get_shapes(net, torch.randn(1, 2, 6, 6))
    want = fei.ei(net, shapes=shapes)
    net.to(dtype)
    ref = fei.ei(net.float(), shapes=shapes)
    net.to(dtype)
    got = fei.ei(net, shapes=shapes)
    assert got == pytest.approx(ref, rel=1e-5)
    assert got == pytest.approx(want, rel=1e-2)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect", "replicate"])
@pytest.mark.parametrize("padding", [2, "same", "valid"])
def test_every_padding_mode(mode, padding):
    torch.manual_seed(3)
    m = nn.Conv2d(4, 6, (4, 3), padding=padding, dilation=(1, 2), groups=2, padding_mode=mode)
    m = m.double()
    example = (4, 5, 6)
    x = torch.randn(1, *example, dtype=torch.float64)
    W = jacobian_matrix(m, example)
    for name, norm in NORMS:
        assert fei.ei(m, x, norm=norm) == pytest.approx(
            ei_from_matrices([W], name)[0], rel=REL, abs=1e-9
        )


def test_modes_that_need_the_dense_matrix_respect_the_memory_limit():
    m = nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
    x = torch.randn(1, 2, 6, 6)
    assert fei.ei(m, x) > 0  # small: computed from the dense Jacobian
    with pytest.raises(ValueError, match="reflect"):
        fei.ei(m, x, max_dense_bytes=1000)
    circ = nn.Conv1d(1, 1, 5, padding=2, padding_mode="circular")  # window wraps twice on 3
    y = torch.randn(1, 1, 3)
    W = jacobian_matrix(circ.double(), (1, 3))
    assert fei.ei(circ, y.double()) == pytest.approx(ei_from_matrices([W], "lin")[0], rel=REL)


def test_conv_transpose_called_with_output_size():
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1).double()

        def forward(self, x):
            return self.up(x, output_size=(2 * x.shape[-2], 2 * x.shape[-1]))

    net = Up()
    x = torch.randn(1, 3, 4, 5, dtype=torch.float64)
    # output_padding (1, 1) is implied by the requested output size
    ref = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1).double()
    ref.load_state_dict(net.up.state_dict())
    W = jacobian_matrix(ref, (3, 4, 5))
    assert fei.ei(net, x) == pytest.approx(ei_from_matrices([W], "lin")[0], rel=REL)
