"""foresight.causal on the layer core: parametrized, weight-normed and Conv1D-style layers are
measured (with their effective weight) or named in a warning, never dropped; ``input=`` finds the
layers in forward order with functional activations.

Each measured row is compared with :func:`foresight.causal.layer_measures` on a plain
``nn.Linear`` (or conv) built independently from the layer's effective weight, with the same
seed: the numbers must be identical.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.nn.utils import parametrize

import foresight.causal as fc
from tests import zoo
from tests.reference.model_state import assert_unchanged, snapshot

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

OPTS = {"bins": 4, "samples": 400, "seed": 3}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _linear(w_out_in: torch.Tensor, b: torch.Tensor | None) -> nn.Linear:
    m = nn.Linear(w_out_in.shape[1], w_out_in.shape[0], bias=b is not None).to(w_out_in.dtype)
    with torch.no_grad():
        m.weight.copy_(w_out_in)
        if b is not None:
            m.bias.copy_(b)
    return m


def _same(row, layer, in_range, activation=None, input_shape=None) -> None:
    m = fc.layer_measures(layer, in_range=in_range, activation=activation,
                          input_shape=input_shape, **OPTS)
    # the exact pairwise measures are continuous in the weights: equal up to float rounding of
    # the effective weight (the library's weight norm and the test's formula differ in the last ulp)
    assert (row.ei, row.ei_parts, row.sensitivity, row.degeneracy) == pytest.approx(
        (m.ei, m.ei_parts, m.sensitivity, m.degeneracy), rel=1e-6, abs=1e-9)
    n_in = math.prod(input_shape) if input_shape is not None else layer.in_features
    assert row.n_in == n_in


class Conv1D(nn.Module):
    """GPT-2's Conv1D, written out (an ``addmm`` with an ``(in, out)`` weight)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * 0.5)
        self.bias = nn.Parameter(torch.randn(n_out) * 0.1)

    def forward(self, x):
        shape = x.shape[:-1] + (self.weight.shape[1],)
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(shape)


class _Double(nn.Module):
    def forward(self, w):
        return 2.0 * w


def test_parametrized_linear_is_measured_with_its_effective_weight():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    parametrize.register_parametrization(lin, "weight", _Double())
    net = nn.Sequential(lin, nn.Sigmoid())
    ref = _linear(2.0 * lin.parametrizations.weight.original.detach(), lin.bias.detach())
    for inp in (None, torch.rand(4, 3)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning: nothing is skipped
            rep = fc.report(net, inp, **OPTS)
        assert [(r.name, r.activation) for r in rep.layers] == [("0", "Sigmoid")]
        _same(rep.layers[0], ref, (0.0, 1.0), nn.Sigmoid())


def test_old_weight_norm_uses_the_current_weight():
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        lin = torch.nn.utils.weight_norm(nn.Linear(3, 2))
    with torch.no_grad():
        lin.weight_g.mul_(3.0)  # no forward pass since: lin.weight is stale
    v, g = lin.weight_v.detach(), lin.weight_g.detach()
    ref = _linear(g * v / v.norm(dim=1, keepdim=True), lin.bias.detach())
    rep = fc.report(nn.Sequential(lin), **OPTS)
    _same(rep.layers[0], ref, (0.0, 1.0))


def test_conv1d_style_layers_are_named_without_input_and_measured_with_it():
    torch.manual_seed(2)
    net = nn.Sequential(Conv1D(4, 3), nn.Tanh(), nn.Linear(3, 2))
    with pytest.warns(RuntimeWarning, match=r"0 \(Conv1D\).*pass input="):
        rep = fc.report(net, **OPTS)
    assert [r.name for r in rep.layers] == ["2"]  # the Conv1D is named, not silently dropped
    x = torch.rand(5, 7, 4)  # (batch, positions, features): the addmm sees (35, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = fc.report(net, x, **OPTS)
    assert not [w for w in caught if "skipped" in str(w.message)]  # measured, nothing skipped
    assert [(r.name, r.layer, r.activation) for r in rep.layers] == [
        ("0", "Conv1D", "Tanh"), ("2", "Linear", "identity")]
    conv = net[0]
    _same(rep.layers[0], _linear(conv.weight.detach().T, conv.bias.detach()), (0.0, 1.0),
          nn.Tanh())
    _same(rep.layers[1], net[2], (-1.0, 1.0))


def test_gpt2_layers_with_input():
    pytest.importorskip("transformers")
    model, ids = zoo.make("gpt2", dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match=r"transformer\.wte \(Embedding"):
        rep = fc.report(model, ids, bins=2, samples=50, seed=0)
    kinds = [r.layer for r in rep.layers]
    assert kinds.count("Conv1D") == 8 and kinds[-1] == "Linear"  # lm_head, tied to wte
    attn = model.transformer.h[0].attn.c_attn
    row = rep.row("transformer.h.0.attn.c_attn")
    assert (row.n_in, row.n_out) == tuple(attn.weight.shape)


def test_functional_activations_and_their_options_are_seen_with_input():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 2)
            self.c = nn.Linear(2, 2)

        def forward(self, x):
            return self.c(F.leaky_relu(self.b(torch.sigmoid(self.a(x))), 0.3))

    torch.manual_seed(3)
    net = Net()
    rep = fc.report(net, torch.rand(2, 3), **OPTS)
    assert [r.activation for r in rep.layers] == ["sigmoid", "leaky_relu", "identity"]
    assert rep.layers[0].out_range == (0.0, 1.0) and rep.layers[1].in_range == (0.0, 1.0)
    _same(rep.layers[1], net.b, (0.0, 1.0), lambda t: F.leaky_relu(t, 0.3))
    static = fc.report(net, **OPTS)  # without input functional activations cannot be seen
    assert [r.activation for r in static.layers] == ["identity"] * 3


def test_linear_subclass_with_its_own_forward():
    torch.manual_seed(4)
    net = nn.Sequential(zoo.GainLinear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.warns(RuntimeWarning, match=r"0 \(GainLinear\)"):
        fc.report(net, **OPTS)  # its forward is its own: not read statically
    with pytest.raises(ValueError, match="input="), pytest.warns(RuntimeWarning):
        fc.report(net[:2], **OPTS)
    rep = fc.report(net, torch.rand(2, 4), **OPTS)
    layer = net[0]
    ref = _linear((layer.weight * layer.gain[:, None]).detach(), layer.bias.detach())
    assert rep.layers[0].layer == "GainLinear"
    _same(rep.layers[0], ref, (0.0, 1.0), nn.ReLU())


def test_attention_projections_are_two_layers():
    torch.manual_seed(5)
    mha = nn.MultiheadAttention(4, 2, batch_first=True)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = mha

        def forward(self, x):
            return self.att(x, x, x, need_weights=False)[0]

    for inp in (None, torch.rand(2, 3, 4)):
        rep = fc.report(Net(), inp, **OPTS)
        assert [(r.name, r.n_in, r.n_out) for r in rep.layers] == [
            ("att.in_proj", 4, 12), ("att.out_proj", 4, 4)]
        _same(rep.layers[0], _linear(mha.in_proj_weight.detach(), mha.in_proj_bias.detach()),
              (0.0, 1.0))
    with pytest.raises(TypeError, match="2 affine maps"):
        fc.affine_map(mha)


def test_functional_convolution_with_input_and_input_shapes():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(2, 1, 3, 3))

        def forward(self, x):
            return F.conv2d(x, self.w, padding=1)

    torch.manual_seed(6)
    net = Net()
    x = torch.rand(2, 1, 5, 5)
    rep = fc.report(net, x, **OPTS)
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(net.w)
    _same(rep.layers[0], conv, (0.0, 1.0), input_shape=(1, 3, 3))  # one receptive field
    rep = fc.report(net, x, input_shapes={"": (1, 4, 4)}, **OPTS)
    _same(rep.layers[0], conv, (0.0, 1.0), input_shape=(1, 4, 4))


def test_model_untouched_with_input():
    model, x = zoo.make("linear_subclass", dtype=torch.float32)
    model.train()
    model(x).sum().backward()
    before = snapshot(model)
    fc.report(model, x, **OPTS)
    assert_unchanged(model, before)
    with pytest.raises(ValueError):
        fc.report(model, x, bins=1)
    assert_unchanged(model, before)
