"""EI on the layer core: the acceptance zoo against the dense-Jacobian reference, what is skipped
and passed over, ``linear_positions``, the plan path against the module walk, meta and zero-size
layers, reuse of ``get_shapes``, and the model left untouched.

Tolerance: 1e-6 relative (float64 models). The reference (tests/reference/dense_ei.py,
``op_matrices``) records every weight operation with the tensors it read and builds each Jacobian
with torch.func, independently of foresight's rules.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import foresight.ei as fei
from foresight._guard import preserved
from foresight.ei.layers import find_layers
from tests import zoo
from tests.reference.dense_ei import dense_ei, ei_from_matrices, op_matrices
from tests.reference.model_state import assert_unchanged, snapshot

pytestmark = pytest.mark.filterwarnings(
    "ignore::FutureWarning", "ignore:enable_nested_tensor", "ignore:`torch.jit.script`"
)

NORMS = [("lin", fei.lin_norm), ("soft", fei.soft_norm), ("sig", fei.sig_norm), (None, None)]
REL = 1e-6


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _close(got, want) -> None:
    assert got == pytest.approx(want, rel=REL, abs=1e-9)


def _make(name):
    if name in zoo.TRANSFORMERS:
        pytest.importorskip("transformers")
    return zoo.make(name)


# ------------------------------------------------------------------ the zoo


@pytest.mark.parametrize("name", zoo.NAMES)
@pytest.mark.parametrize("positions", ["once", "each"])
def test_zoo_equals_dense_reference(name, positions):
    model, inputs = _make(name)
    each = positions == "each"
    mats = op_matrices(model, inputs, each)
    shapes = fei.get_shapes(model, inputs)
    for norm_name, norm in NORMS:
        want = ei_from_matrices(mats, norm_name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the CNN's LayerScale (tested below)
            r = fei.report(model, shapes=shapes, norm=norm, linear_positions=positions)
        _close((r.ei, r.determinism, r.degeneracy), want)
        assert sum(row.inputs for row in r.layers) == sum(m.shape[0] for m in mats)
        assert sum(row.outputs for row in r.layers) == sum(m.shape[1] for m in mats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        direct = fei.ei(model, inputs, linear_positions=positions)  # input= (no get_shapes)
        reused = fei.ei(model, shapes=shapes, linear_positions=positions)
    assert direct == reused
    _close(direct, ei_from_matrices(mats, "lin")[0])


def test_custom_norm_matches_the_matrix_free_path_on_real_models():
    for name in ("gpt2", "linear_subclass", "transformer_encoder"):
        model, inputs = _make(name)
        custom = lambda W: fei.soft_norm(W)  # noqa: E731 - a callable: the dense path
        _close(fei.ei(model, inputs, norm=custom), fei.ei(model, inputs, norm=fei.soft_norm))
        assert fei.ei(model, inputs, device="cpu") == fei.ei(model, inputs)


@pytest.mark.parametrize("name", zoo.NAMES)
def test_zoo_skips_nothing_falsely(name):
    model, inputs = _make(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = fei.report(model, inputs)
    ei_warnings = [str(w.message) for w in caught if "foresight.ei" in str(w.message)]
    if name == "cnn":  # LayerScale: an elementwise scale outside a normalisation
        assert r.skipped == ["3.ls (LayerScale)"]
        assert len(ei_warnings) == 1 and "3.ls (LayerScale)" in ei_warnings[0]
    else:
        assert r.skipped == [] and ei_warnings == []
    assert not any("parametrizations" in s or "ParametrizationList" in s for s in r.skipped)


def test_report_rows_of_gpt2():
    pytest.importorskip("transformers")
    model, inputs = zoo.make("gpt2")
    r = fei.report(model, inputs)
    names = [row.name for row in r.layers]
    assert names[0] == "transformer.wte" and names[-1] == "lm_head"
    assert "transformer.h.0.attn.c_attn" in names and "transformer.wpe" not in names
    conv1d = [row for row in r.layers if row.type == "Conv1D"]
    assert len(conv1d) == 8 and (conv1d[0].inputs, conv1d[0].outputs) == (8, 24)
    wte = r.layers[0]
    assert (wte.type, wte.inputs, wte.outputs) == ("Embedding", zoo.VOCAB, 8)
    assert r.passed_over["bias"] == 1  # the position embedding, added
    assert r.passed_over["norm"] == 5 and r.passed_over["attention"] == 2
    text = str(r)
    assert "linear_positions=once" in text and "passed over" in text


def test_tied_and_shared_tables_are_counted_per_operation():
    pytest.importorskip("transformers")
    model, inputs = zoo.make("t5")  # shared.weight: encoder, decoder embeddings and lm_head
    r = fei.report(model, inputs)
    tables = [row for row in r.layers if row.type == "Embedding"]
    assert len(tables) == 1  # one lookup graph for the one shared table
    assert [row.name for row in r.layers][-1] == "lm_head"  # and the output layer
    m = zoo.TiedLM()
    assert [row.name for row in fei.report(m, torch.randint(0, 11, (2, 4))).layers] == [
        "emb", "mix", "head"]


def test_mha_with_separate_projections_and_unbatched_positions():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(6, 2, kdim=4, vdim=5, batch_first=True).double()

    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = mha

        def forward(self, q, kv):
            return self.att(q, kv[..., :4], kv)[0]

    q, kv = torch.randn(2, 3, 6, dtype=torch.float64), torch.randn(2, 4, 5, dtype=torch.float64)
    r = fei.report(Cross(), (q, kv))
    assert [row.name for row in r.layers] == ["att.q_proj", "att.k_proj", "att.v_proj",
                                              "att.out_proj"]
    mats = [mha.q_proj_weight.detach().T, mha.k_proj_weight.detach().T,
            mha.v_proj_weight.detach().T, mha.out_proj.weight.detach().T]
    _close((r.ei, r.determinism, r.degeneracy), ei_from_matrices(mats, "lin"))
    each = fei.report(Cross(), (q, kv), linear_positions="each")
    assert [row.inputs for row in each.layers] == [18, 12, 15, 18]  # T_query = 3
    seq_first = nn.MultiheadAttention(4, 2).double()  # (T, B, E) inputs
    x = torch.randn(5, 2, 4, dtype=torch.float64)

    class Self(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = seq_first

        def forward(self, x):
            return self.att(x, x, x)[0]

    rows = fei.report(Self(), x, linear_positions="each").layers
    assert [(row.inputs, row.outputs) for row in rows] == [(20, 60), (20, 20)]  # T = 5


# ------------------------------------------------------------------ the plan and the module walk


def _nested() -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="reflect"), nn.BatchNorm2d(4),
        nn.ReLU(), nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 6, 1), nn.Dropout(0.3)),
        nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(54, 10), nn.Tanh(), nn.Linear(10, 3),
    ).double()
    with torch.no_grad():
        net[1].running_mean.normal_()
    return net


@pytest.mark.parametrize("name", ["nested", "orthogonal", "transformer_encoder", "weight_norm"])
def test_plan_path_equals_the_module_walk(name):
    if name == "nested":
        net, x = _nested(), torch.randn(2, 3, 12, 12, dtype=torch.float64)
    else:
        net, x = zoo.make(name)
    with preserved(net), torch.no_grad():
        net.eval()
        walk = find_layers(net, x)
        planned = find_layers(net, x, plan=True)
    assert walk.plan is None and planned.plan is not None
    assert list(walk.modules.items()) == list(planned.modules.items()) and not planned.ops
    assert walk.skipped == planned.skipped and walk.passed_over == planned.passed_over
    for _, norm in NORMS:
        a = fei.report(net, shapes=fei.Shapes(walk), norm=norm)
        b = fei.report(net, shapes=fei.Shapes(planned), norm=norm)
        assert (a.ei, a.determinism, a.degeneracy) == (b.ei, b.determinism, b.degeneracy)
        assert [r.name for r in a.layers] == [r.name for r in b.layers]


def test_reflect_padded_conv_is_its_module_jacobian():
    net = _nested()
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    assert fei.ei(net, x) == pytest.approx(dense_ei(net, x)[0], rel=REL)


# ------------------------------------------------------------------ skipped and passed over


class Mixer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4, dtype=torch.float64))

    def forward(self, x):
        return torch.einsum("bi,ij->bj", x, self.w)


def test_skipped_names_each_leaf_use_once_with_its_reason():
    mixer = Mixer()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4).double()
            self.mix = mixer
            self.head = nn.Linear(4, 2).double()
            self.unused = nn.Linear(3, 3)

        def forward(self, x):
            return self.head(self.mix(self.mix(self.fc(x))))  # mix twice: named once

    with pytest.warns(UserWarning, match="mix") as caught:
        r = fei.report(Net(), torch.randn(2, 4, dtype=torch.float64))
    assert [str(w.message).count("mix (Mixer, einsum)") for w in caught
            if "foresight.ei" in str(w.message)] == [1]
    assert sorted(r.skipped) == ["mix (Mixer, einsum)",
                                 "unused (Linear, not called by the forward pass)"]
    assert [row.name for row in r.layers] == ["fc", "head"]
    with pytest.raises(ValueError, match="einsum"):
        fei.ei(Net(), torch.randn(2, 4, dtype=torch.float64), strict=True)


def test_attention_with_a_parameter_bias_is_passed_over_not_skipped():
    class Biased(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(8, 8).double()
            self.bias = nn.Parameter(torch.randn(1, 1, 5, 5, dtype=torch.float64))

        def forward(self, x):
            q = self.q(x).reshape(x.shape[0], 5, 2, 4).transpose(1, 2)
            return F.scaled_dot_product_attention(q, q, q, attn_mask=self.bias)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = fei.report(Biased(), torch.randn(2, 5, 8, dtype=torch.float64))
    assert r.skipped == [] and r.passed_over["attention"] == 1
    assert [row.name for row in r.layers] == ["q"]


def test_normalisation_scales_are_passed_over_standalone_scales_are_skipped():
    class RMS(nn.Module):  # a hand-written RMSNorm: weight * normalised x
        def __init__(self, n):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(n, dtype=torch.float64))

        def forward(self, x):
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    class Gamma(nn.Module):  # LayerScale on features (last dim)
        def __init__(self, n):
            super().__init__()
            self.gamma = nn.Parameter(torch.full((n,), 0.1, dtype=torch.float64))

        def forward(self, x):
            return x * self.gamma

    net = nn.Sequential(nn.Linear(4, 4).double(), RMS(4), nn.Linear(4, 2).double(), Gamma(2))
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"3 \(Gamma\)"):
        r = fei.report(net, x)
    assert r.passed_over.get("scale") == 1
    assert r.skipped == ["3 (Gamma)"]
    assert [row.name for row in r.layers] == ["0", "2"]


# ------------------------------------------------------------------ linear_positions


def test_linear_positions_closed_form_and_bad_values():
    n, t = 4, 3
    m = nn.Linear(n, n, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.eye(n))
    x = torch.randn(2, t, n)
    assert fei.ei(m, x) == pytest.approx(math.log2(n))
    assert fei.ei(m, x, linear_positions="each") == pytest.approx(math.log2(n * t))
    r = fei.report(m, x, linear_positions="each")
    assert (r.layers[0].inputs, r.layers[0].outputs) == (n * t, n * t)
    assert r.linear_positions == "each" and "linear_positions=each" in str(r)
    assert r.to_dict()["linear_positions"] == "each"
    conv = nn.Conv1d(2, 2, 1)
    y = torch.randn(1, 2, 5)
    assert fei.ei(conv, y, linear_positions="each") == fei.ei(conv, y)  # always every position
    with pytest.raises(ValueError, match="linear_positions"):
        fei.ei(m, x, linear_positions="all")
    shapes = fei.get_shapes(m, x)
    assert fei.ei(m, shapes=shapes, linear_positions="each") == pytest.approx(math.log2(n * t))


# ------------------------------------------------------------------ meta and zero-size layers


def test_meta_weights_are_a_clear_error():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2, device="meta"))
    with pytest.raises(ValueError, match=r"'2\.weight'.*weights on the meta device have no values"):
        fei.ei(net, torch.randn(1, 3))
    with pytest.raises(ValueError, match="meta device"):
        fei.report(net, shapes={net[0]: ((1, 3), (1, 3))})


def test_zero_size_layers_have_no_connections():
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 0), nn.Linear(0, 2)).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    mats = [net[0].weight.detach().T, torch.zeros(3, 0, dtype=torch.float64),
            torch.zeros(0, 2, dtype=torch.float64)]
    for name, norm in NORMS:
        r = fei.report(net, x, norm=norm)
        _close((r.ei, r.determinism, r.degeneracy), ei_from_matrices(mats, name))
    assert [(row.inputs, row.outputs, row.ei) for row in r.layers[1:]] == [(3, 0, 0.0),
                                                                          (0, 2, 0.0)]
    alone = nn.Linear(3, 0)
    assert fei.report(alone, torch.randn(1, 3)).ei == 0.0  # no connections at all: 0


# ------------------------------------------------------------------ reuse and safety


def test_get_shapes_reuse_follows_the_weights():
    for name in ("gpt2", "linear_subclass", "weight_norm_old"):
        model, inputs = _make(name)
        shapes = fei.get_shapes(model, inputs)
        assert fei.ei(model, shapes=shapes) == fei.ei(model, inputs)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.3).add_(0.1)
        assert fei.ei(model, shapes=shapes) == pytest.approx(
            ei_from_matrices(op_matrices(model, inputs), "lin")[0], rel=REL)


@pytest.mark.parametrize("name", ["gpt2", "linear_subclass", "weight_norm_old", "parametrized"])
def test_models_untouched(name):
    model, inputs = _make(name)
    model.train()
    out = zoo.first_tensor(model(**inputs) if isinstance(inputs, dict) else model(inputs))
    out.sum().backward()
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fei.report(model, inputs)
        fei.report(model, shapes=fei.get_shapes(model, inputs), norm=lambda W: fei.lin_norm(W))
    assert_unchanged(model, before)
    with pytest.raises(ValueError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fei.ei(model, inputs, strict=True, max_dense_bytes=1, norm=lambda W: W)
    assert_unchanged(model, before)


def test_embedding_module_dense_builder_is_the_table():
    emb = nn.Embedding(7, 3, padding_idx=2).double()
    ids = torch.randint(0, 7, (2, 5))
    shapes = fei.get_shapes(emb, ids)
    assert shapes[emb] == ((2, 5), (2, 5, 3))
    W = fei.VALID_MODULES[nn.Embedding](emb, *shapes[emb])
    assert torch.equal(W, emb.weight.detach())
    _close(fei.ei(emb, ids), ei_from_matrices([emb.weight.detach()], "lin")[0])


# ------------------------------------------------------------------ a rule of your own


def test_a_rule_for_your_own_operation():
    """The example of docs/architecture.rst: einsum as a linear map with an (in, out) weight."""
    import foresight.causal as fc
    from foresight.layers import Rule, register_rule, unregister_rule
    from foresight.layers.contrib import Outer
    from foresight.layers.graphs import MatrixGraph
    from foresight.layers.rules._common import flat_batch, is_batched, is_tracked, pos

    class EinsumLinear(Rule):
        """``torch.einsum("bi,ij->bj", x, w)``."""

        name, role, funcs = "linear", "weight", (torch.einsum,)
        signature = ("equation", "input", "weight")

        def match(self, call, tracked, batched, out_layout):
            b = self.bound(call)
            if b["equation"].replace(" ", "") != "bi,ij->bj":
                return None
            if not (is_batched(b["input"], batched) and is_tracked(b["weight"], tracked)):
                return None
            return pos(b["input"]), {"weight": pos(b["weight"])}, {}

        def per_example(self, use, act, grad, operands, batch):  # for foresight.gns
            a = flat_batch(act, use.in_layout, batch, 1)
            g = flat_batch(grad, use.out_layout, batch, 1)
            return {"weight": Outer(a, g)}

        def ei_graph(self, use, operands, device, dtype):  # for foresight.ei
            return MatrixGraph(operands["weight"], "in_out", device, dtype)

        def ei_dense(self, use, operands):
            return MatrixGraph(operands["weight"], "in_out").dense()

        def affine(self, use, operands, input_shape=None):  # for foresight.causal
            w = operands["weight"].detach()
            return w.clone(), torch.zeros(w.shape[1], dtype=w.dtype), (w.shape[0],)

    rule = register_rule(EinsumLinear(), first=True)
    try:
        net = nn.Sequential(nn.Linear(4, 4).double(), Mixer())
        x = torch.randn(3, 4, dtype=torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing skipped any more
            r = fei.report(net, x)
        assert [row.name for row in r.layers] == ["0", "1"] and r.layers[1].type == "Mixer"
        _close(r.ei, ei_from_matrices([net[0].weight.detach().T, net[1].w.detach()], "lin")[0])
        rep = fc.report(net, x, bins=4, samples=200, seed=0)
        assert [(row.name, row.layer) for row in rep.layers] == [("0", "Linear"), ("1", "Mixer")]
    finally:
        unregister_rule(rule)
    with pytest.warns(UserWarning, match="einsum"):
        fei.ei(net, x)
