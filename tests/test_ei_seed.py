"""The 2020 package's documented behaviour: H, the norms, the dense builders and closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import foresight.ei as fei


def test_H_examples():
    x = torch.zeros(4)
    x[1] = 1
    assert fei.H(x).item() == 0
    assert fei.H(torch.ones(4) / 4).item() == 2
    assert fei.H(torch.ones(256) / 256).item() == 8
    assert torch.equal(fei.H(torch.ones(4, 4) / 4, dim=0), torch.full((4,), 2.0))
    assert torch.equal(fei.H(torch.ones(4, 4) / 4, dim=1), torch.full((4,), 2.0))
    assert fei.H(torch.zeros(4)).item() == 0


def test_H_does_not_modify_input_and_ignores_negative():
    x = torch.tensor([0.5, -0.5, 0.5, 0.0])
    before = x.clone()
    assert fei.H(x).item() == 1.0
    assert torch.equal(x, before)


def test_lin_norm_examples():
    assert torch.equal(fei.lin_norm(torch.ones(4, 4)), torch.full((4, 4), 0.25))
    x = torch.ones(5, 5)
    x[:, 0] = -1
    out = fei.lin_norm(x)
    assert torch.equal(out[:, 0], torch.zeros(5))
    assert torch.equal(out[:, 1:], torch.full((5, 4), 0.25))
    assert torch.equal(fei.lin_norm(torch.zeros(4, 4)), torch.zeros(4, 4))


def test_soft_and_sig_norm_rows_sum_to_one():
    W = torch.randn(6, 9)
    for norm in (fei.soft_norm, fei.sig_norm):
        P = norm(W)
        assert torch.allclose(P.sum(1), torch.ones(6))
        assert bool((P > 0).all())
    assert torch.allclose(fei.soft_norm(W), torch.softmax(W, 1))


def _seed_conv(out_c, in_c, k, stride=1):
    m = nn.Conv2d(in_c, out_c, k, stride=stride)
    m.weight = nn.Parameter(torch.ones(out_c, in_c, k, k))
    return m


def test_conv2d_create_matrix_seed_example_0():
    m = _seed_conv(2, 1, 2)
    got = fei.conv2d_create_matrix(m, (1, 1, 3, 3), (1, 2, 2, 2))
    block = torch.tensor(
        [
            [1, 1, 0, 1, 1, 0, 0, 0, 0],
            [0, 1, 1, 0, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 1, 0, 1, 1, 0],
            [0, 0, 0, 0, 1, 1, 0, 1, 1],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(got, torch.cat([block, block]).t())


def test_conv2d_create_matrix_seed_example_1():
    m = _seed_conv(1, 1, 2, stride=2)
    got = fei.conv2d_create_matrix(m, (1, 1, 4, 4), (1, 1, 2, 2))
    expected = torch.zeros(4, 16)
    for o, (r, c) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
        for dr in range(2):
            for dc in range(2):
                expected[o, (r + dr) * 4 + c + dc] = 1
    assert torch.equal(got, expected.t())


def test_conv2d_create_matrix_seed_example_2():
    m = _seed_conv(1, 2, 2)
    got = fei.conv2d_create_matrix(m, (1, 2, 3, 3), (1, 1, 2, 2))
    one = fei.conv2d_create_matrix(_seed_conv(1, 1, 2), (1, 1, 3, 3), (1, 1, 2, 2))
    assert torch.equal(got, torch.cat([one, one]))


def test_linear_create_matrix_is_weight_transpose_and_a_copy():
    m = nn.Linear(5, 3)
    W = fei.linear_create_matrix(m, (2, 5), (2, 3))
    assert torch.equal(W, m.weight.detach().t())
    W.zero_()
    assert m.weight.abs().sum() > 0


def _ones_linear(n):
    m = nn.Linear(n, n, bias=False)
    m.weight = nn.Parameter(torch.ones(n, n))
    return m


def test_seed_determinism_degeneracy_ei_of_all_ones():
    m = _ones_linear(4)
    det = fei.determinism(m, input=torch.randn(1, 4))
    deg = fei.degeneracy(m, input=torch.randn(1, 4))
    value = fei.ei(m, input=torch.randn(1, 4))
    assert type(det) is float and det == 2
    assert type(deg) is float and deg == 2
    assert type(value) is float and value == 0


@pytest.mark.parametrize("norm", [fei.lin_norm, None])
@pytest.mark.parametrize("n", [2, 5, 16, 100])
def test_identity_and_permutation_give_log2_n(n, norm):
    m = nn.Linear(n, n, bias=False).double()
    with torch.no_grad():
        m.weight.copy_(torch.eye(n, dtype=torch.float64)[torch.randperm(n)])
    assert fei.ei(m, torch.randn(1, n, dtype=torch.float64), norm=norm) == pytest.approx(
        math.log2(n), rel=1e-12
    )


@pytest.mark.parametrize("norm", [fei.lin_norm, fei.soft_norm, fei.sig_norm])
def test_all_ones_gives_zero(norm):
    m = _ones_linear(7).double()
    assert abs(fei.ei(m, torch.randn(1, 7, dtype=torch.float64), norm=norm)) < 1e-12


def test_shapes_argument_replaces_input():
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(2, 6)
    shapes = fei.get_shapes(net, x)
    assert list(shapes) == [net[0], net[2]]
    assert shapes[net[0]] == ((2, 6), (2, 5))
    assert fei.ei(net, shapes=shapes) == fei.ei(net, x)


def test_exports():
    for name in (
        "H lin_norm soft_norm sig_norm get_shapes determinism degeneracy ei report VALID_MODULES "
        "linear_create_matrix conv1d_create_matrix conv2d_create_matrix conv3d_create_matrix "
        "conv_transpose2d_create_matrix avgpool1d_create_matrix avgpool2d_create_matrix "
        "avgpool3d_create_matrix adaptive_avgpool2d_create_matrix register_layer"
    ).split():
        assert hasattr(fei, name), name
    assert fei.VALID_MODULES[nn.Linear] is fei.linear_create_matrix
    assert fei.VALID_MODULES[nn.Conv2d] is fei.conv2d_create_matrix
    assert fei.VALID_MODULES[nn.AvgPool2d] is fei.avgpool2d_create_matrix
