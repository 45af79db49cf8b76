"""Whole models, the per-layer report, safety (model untouched) and bad input."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import foresight.ei as fei
from tests.reference.dense_ei import dense_ei, ei_from_matrices, jacobian_matrix, layer_examples
from tests.reference.model_state import assert_unchanged, snapshot

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

NORMS = [("lin", fei.lin_norm), ("soft", fei.soft_norm), ("sig", fei.sig_norm), (None, None)]


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn(self.conv(x)))


def nested_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        Block(4),
        nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 6, 1), nn.Dropout(0.3)),
        nn.AdaptiveAvgPool2d(3),
        nn.Flatten(),
        nn.Linear(54, 10),
        nn.Tanh(),
        nn.Linear(10, 3),
    ).double()


def _randomise(net: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return net


@pytest.mark.parametrize("name,norm", NORMS)
def test_nested_model_against_reference(name, norm):
    net = _randomise(nested_net())
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    want = dense_ei(net, x, name)
    r = fei.report(net, x, norm=norm)
    assert (r.ei, r.determinism, r.degeneracy) == pytest.approx(want, rel=1e-6, abs=1e-10)
    assert r.ei == fei.ei(net, x, norm=norm)
    assert r.determinism == fei.determinism(net, x, norm=norm)
    assert r.degeneracy == fei.degeneracy(net, x, norm=norm)


def test_report_rows_are_the_layers_alone():
    net = _randomise(nested_net())
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    r = fei.report(net, x)
    names = [row.name for row in r.layers]
    assert names == ["0", "3.conv", "4.1", "5", "7", "9"]
    assert [row.type for row in r.layers] == [
        "Conv2d", "Conv2d", "Conv2d", "AdaptiveAvgPool2d", "Linear", "Linear"
    ]
    for row, (module, example) in zip(r.layers, layer_examples(net, x)):
        W = jacobian_matrix(module, example)
        value, det, deg = ei_from_matrices([W], "lin")
        assert (row.inputs, row.outputs) == W.shape
        assert (row.ei, row.determinism, row.degeneracy) == pytest.approx(
            (value, det, deg), rel=1e-6, abs=1e-10
        )
        assert row.effectiveness == pytest.approx(value / math.log2(W.shape[1]))
    d = r.to_dict()
    assert d["ei"] == r.ei and len(d["layers"]) == 6 and d["layers"][0]["name"] == "0"
    df = r.to_dataframe()
    assert list(df["name"]) == names
    text = str(r)
    assert "3.conv" in text and "total" in text and "effect" in text


def test_model_untouched_in_train_mode_with_grads_and_hooks():
    net = _randomise(nested_net()).train()
    net[4].eval()  # a mixed mode must survive too
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64)
    net(x).sum().backward()
    calls = []
    net[0].register_forward_hook(lambda *a: calls.append(1))
    before = snapshot(net)
    for _, norm in NORMS:
        fei.report(net, x, norm=norm)
    fei.ei(net, x, norm=lambda W: fei.lin_norm(W))
    assert_unchanged(net, before)
    assert len(calls) == 5  # the user's hook ran in each shape pass ...
    with torch.no_grad():
        net.eval()(x)
    assert len(calls) == 6  # ... and is still registered


def test_model_untouched_when_an_error_is_raised():
    net = nested_net().train()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    net(x).sum().backward()
    before = snapshot(net)
    with pytest.raises(RuntimeError):
        fei.ei(net, torch.randn(2, 2, 12, 12, dtype=torch.float64))  # wrong channels
    assert_unchanged(net, before)
    saved = net[7].weight.detach().clone()
    with torch.no_grad():
        net[7].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="'7'"):
        fei.ei(net, x)
    with torch.no_grad():
        net[7].weight.copy_(saved)  # NaN != NaN: put the value back before comparing
    assert_unchanged(net, before)


def test_batchnorm_statistics_not_updated_and_batch_of_one_ok():
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    before = snapshot(net)
    fei.ei(net, torch.randn(1, 4))  # train-mode BatchNorm would reject a batch of one
    fei.ei(net, torch.randn(8, 4))
    assert_unchanged(net, before)


@pytest.mark.parametrize("ctx", [torch.no_grad, torch.inference_mode, torch.enable_grad])
def test_works_under_grad_modes(ctx):
    net = _randomise(nested_net())
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    want = fei.ei(net, x)
    before = snapshot(net)
    with ctx():
        got = fei.ei(net, x)
        r = fei.report(net, x, norm=fei.soft_norm)
    assert got == want and r.ei > 0
    assert_unchanged(net, before)


def test_neither_input_nor_shapes():
    with pytest.raises(ValueError, match="input=.*shapes="):
        fei.ei(nn.Linear(2, 2))


def test_no_supported_layer_lists_what_was_found():
    net = nn.Sequential(nn.ReLU(), nn.MaxPool1d(2))
    with pytest.raises(ValueError, match="MaxPool1d.*ReLU|ReLU.*MaxPool1d"):
        fei.ei(net, torch.randn(1, 2, 4))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_name_the_layer(bad):
    net = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.Conv1d(1, 1, 2)))
    with torch.no_grad():
        net[1][0].weight[0, 0, 0] = bad
    with pytest.raises(ValueError, match=r"'1\.0'.*Conv1d"):
        fei.ei(net, shapes={net[1][0]: ((1, 1, 3), (1, 1, 2))})


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def test_unsupported_parameterised_layer_warns_once_or_raises_when_strict():
    net = nn.Sequential(nn.Linear(4, 4), Gate(), nn.LayerNorm(4), nn.Embedding(3, 2))
    net = nn.Sequential(net[0], net[1], net[2])
    net.add_module("emb", nn.Embedding(3, 2))  # never called
    x = torch.randn(1, 4)
    net_forward = nn.Sequential(*list(net)[:3])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = fei.report(net_forward, x)
    msgs = [str(w.message) for w in caught if "foresight.ei" in str(w.message)]
    assert len(msgs) == 1 and "1 (Gate)" in msgs[0] and "LayerNorm" not in msgs[0]
    assert r.skipped == ["1 (Gate)"]
    with pytest.raises(ValueError, match="Gate"):
        fei.ei(net_forward, x, strict=True)


def test_registered_layer_not_called_is_reported():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 3)

        def forward(self, x):
            return self.a(x)

    with pytest.warns(UserWarning, match="b .Linear, not called"):
        fei.ei(TwoHeads(), torch.randn(1, 3))


def test_subclasses_are_found():
    class MyConv(nn.Conv2d):
        pass

    m = MyConv(2, 3, 3).double()
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    W = jacobian_matrix(m, (2, 5, 5))
    assert fei.ei(m, x) == pytest.approx(ei_from_matrices([W], "lin")[0], rel=1e-9)
    assert m in fei.get_shapes(m, x)


def test_register_layer_extends_the_engine():
    class Scale(nn.Module):
        """y = x * weight (elementwise): a diagonal connectivity."""

        def __init__(self, n: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.rand(n, dtype=torch.float64) + 0.1)

        def forward(self, x):
            return x * self.weight

    class Diagonal:
        def __init__(self, w):
            self.w, self.n_in, self.n_out = w, w.numel(), w.numel()

        def rows(self, fns):
            return [f(self.w) for f in fns]

        def cols(self, fn, u):
            return fn(self.w) * u

    def dense(module, in_shape, out_shape):
        return torch.diag(module.weight.detach())

    @fei.register_layer(Scale, dense=dense)
    def rule(module, in_shape, out_shape, device, dtype):
        return Diagonal(module.weight.detach().to(device, dtype))

    try:
        net = nn.Sequential(Scale(5), nn.Linear(5, 3).double())
        x = torch.randn(1, 5, dtype=torch.float64)
        mats = [torch.diag(net[0].weight.detach()), net[1].weight.detach().T]
        for name, norm in NORMS:
            want = ei_from_matrices(mats, name)[0]
            assert fei.ei(net, x, norm=norm) == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert fei.ei(net, x, norm=lambda W: fei.soft_norm(W)) == pytest.approx(
            ei_from_matrices(mats, "soft")[0], rel=1e-9
        )
    finally:
        del fei.RULES[Scale], fei.VALID_MODULES[Scale]


def test_custom_norm_is_guarded_by_the_memory_limit():
    m = nn.Linear(300, 200)
    x = torch.randn(1, 300)
    custom = lambda W: fei.lin_norm(W)  # noqa: E731
    assert fei.ei(m, x, norm=custom) == pytest.approx(fei.ei(m, x), rel=1e-5)
    with pytest.raises(ValueError, match="built-in norm"):
        fei.ei(m, x, norm=custom, max_dense_bytes=100_000)


def test_device_argument_accepted():
    m = nn.Linear(4, 3)
    x = torch.randn(1, 4)
    assert fei.ei(m, x, device="cpu") == fei.ei(m, x)


def test_shared_layer_counted_once():
    lin = nn.Linear(4, 4)
    net = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(fei.get_shapes(net, torch.randn(1, 4))) == 1
    assert fei.ei(net, torch.randn(1, 4)) == fei.ei(lin, torch.randn(1, 4))


def test_graph_ei_is_exported_lazily():
    assert "graph_ei" in dir(fei) and "GraphEI" in fei.__all__
