"""The layer core: discovery (layouts, derived tensors, coupling, unseen parameters, activations),
batch layouts, and the per-example contribution algebra against dense references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from foresight.layers import DiscoveryError, Layout, discover
from foresight.layers.contrib import Dense, Outer, Rows, dot, sq_norm_of_sum
from foresight.layers.layout import canonical, detect, per_example_masked
from tests.reference.model_state import assert_unchanged, snapshot

# ----------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("order", ["major", "minor"])
@pytest.mark.parametrize("seed", range(3))
def test_canonical_and_masks_agree_with_an_explicit_owner_map(order, seed):
    g = torch.Generator().manual_seed(seed)
    b, k, c = (int(v) for v in torch.randint(1, 5, (3,), generator=g))
    x = torch.randn(b * k, c, generator=g)
    owner = [i // k if order == "major" else i % b for i in range(b * k)]
    can = canonical(x, Layout(0, order), b)
    for e in range(b):
        rows = [i for i in range(b * k) if owner[i] == e]
        torch.testing.assert_close(can[e], x[rows])
    masked = per_example_masked(x, Layout(0, order), b)
    for e in range(b):
        ref = torch.zeros_like(x)
        ref[[i for i in range(b * k) if owner[i] == e]] = x[[i for i in range(b * k)
                                                             if owner[i] == e]]
        torch.testing.assert_close(masked[e], ref)


def test_detect_reads_the_batch_dimension_and_its_order():
    assert detect((3, 5), (2, 5), 3, 2, None) == Layout(0)
    assert detect((5, 3, 4), (5, 2, 4), 3, 2, None) == Layout(1)
    assert detect((5, 4), (5, 4), 3, 2, None) is None
    changed = torch.zeros(12, 4, dtype=torch.bool)
    changed[:4] = True  # example 0 owns rows 0..3
    assert detect((12, 4), (8, 4), 3, 2, changed) == Layout(0, "major")
    changed = torch.zeros(12, 4, dtype=torch.bool)
    changed[::3] = True  # rows 0, 3, 6, 9
    assert detect((12, 4), (8, 4), 3, 2, changed) == Layout(0, "minor")
    assert isinstance(detect((12, 4), (8, 4), 3, 2, None), str)


# ----------------------------------------------------------------------------- discovery


class FlatAddmm(nn.Module):
    """GPT-2's Conv1D: (B, T, C) flattened to (B*T, C), addmm with an (in, out) weight."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3))
        self.bias = nn.Parameter(torch.randn(3))

    def forward(self, x):
        b, t, c = x.shape
        return torch.addmm(self.bias, x.reshape(-1, c), self.weight).reshape(b, t, 3)


class SeqFirst(nn.Module):
    """A batch-first input made sequence-first inside, flattened T-major (T*B rows)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x.transpose(0, 1))  # (T, B, 4)
        t, b, c = h.shape
        return self.b(h.reshape(t * b, c)).reshape(t, b, 2).transpose(0, 1)


def test_discovery_finds_where_the_batch_sits():
    plan = discover(FlatAddmm(), torch.randn(5, 6, 4))
    (use,) = plan.uses
    assert (use.kind, use.op, use.in_layout, use.in_shape) == ("linear", "addmm",
                                                                Layout(0, "major"), (6, 4))
    plan = discover(SeqFirst(), torch.randn(5, 6, 4))
    assert [u.in_layout for u in plan.uses] == [Layout(1), Layout(0, "minor")]
    assert [u.in_shape for u in plan.uses] == [(6, 4), (6, 4)]


class Derived(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4))
        self.g = nn.Parameter(torch.rand(3))
        self.pos = nn.Embedding(8, 4)

    def forward(self, x):
        pos = self.pos(torch.arange(x.shape[1])[None])  # (1, T, 4): no batch
        return F.linear(x + pos, self.w * self.g[:, None])


def test_derived_tensors_and_their_sources():
    plan = discover(Derived(), torch.randn(5, 6, 4))
    kinds = [(u.kind, [o.slot for o in u.operands]) for u in plan.uses]
    assert kinds == [("bias", ["bias"]), ("linear", ["weight"])]
    sources = [plan.sources(u.operands[0]) for u in plan.uses]
    assert sources == [("pos.weight",), ("g", "w")]
    assert plan.param_uses() == {"w": 1, "g": 1, "pos.weight": 1}


def test_coupling_is_found_where_it_starts():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    plan = discover(net, torch.randn(6, 3))
    assert plan.coupled and "BatchNorm1d" in plan.coupled[0]
    net[1].eval()
    assert not discover(net, torch.randn(6, 3)).coupled


class _Hidden(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s):
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensors
        return g * s, (g * x).sum(0)


class WithHidden(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.s = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return _Hidden.apply(self.lin(x), self.s)


def test_parameters_behind_a_custom_function_are_unseen():
    plan = discover(WithHidden(), torch.randn(4, 3))
    assert list(plan.unseen) == ["s"]
    assert "autograd.Function" in plan.unseen["s"]


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 4)
        self.c = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.sigmoid(self.a(x))
        h = F.dropout(self.b(h).reshape(-1, 4), 0.0)
        return self.c(torch.tanh(h))


def test_the_activation_that_follows_each_use():
    plan = discover(Functional(), torch.randn(4, 3))
    assert [u.followed_by for u in plan.uses] == ["sigmoid", "tanh", None]
    net = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.0), nn.ReLU(), nn.Linear(4, 1))
    assert [u.followed_by for u in discover(net, torch.randn(4, 3)).uses] == ["ReLU", None]


def test_units_have_per_example_shapes():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8, 3))
    plan = discover(net, torch.randn(4, 1, 6, 6))
    units = {u.module: (u.module_type, u.in_shape, u.out_shape) for u in plan.units}
    assert units["0"] == ("Conv2d", (1, 6, 6), (2, 4, 4))
    assert units["1"] == ("AvgPool2d", (2, 4, 4), (2, 2, 2))
    assert units[""] == ("Sequential", (1, 6, 6), (3,))
    assert [u.kind for u in plan.uses] == ["conv", "pool", "linear"]


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)

    def forward(self, x):
        return self.a(x) if x.shape[0] == 3 else self.a(self.a(x))


def test_a_forward_pass_that_depends_on_the_batch_size_is_refused():
    with pytest.raises(DiscoveryError, match="different operations"):
        discover(Branchy(), torch.randn(5, 3))


def test_discovery_leaves_the_model_and_the_random_state_untouched():
    net = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.BatchNorm1d(4), nn.Linear(4, 1))
    net[0].register_forward_hook(lambda *a: None)
    before = snapshot(net)
    x = torch.randn(6, 3)
    rng = torch.get_rng_state()
    discover(net, x)
    assert_unchanged(net, before)
    assert torch.equal(rng, torch.get_rng_state())


def test_bad_inputs_are_named():
    with pytest.raises(TypeError, match="nn.Module"):
        discover(lambda x: x, torch.randn(2, 2))
    with pytest.raises(DiscoveryError, match="batch dimension"):
        discover(nn.Linear(2, 2), 3.0)
    with pytest.raises(DiscoveryError, match="raised"):
        discover(nn.Linear(2, 2), torch.randn(4, 5))


# ----------------------------------------------------------------------------- contributions


def _random_parts(gen, b, m, n):
    t1, t2 = (int(v) for v in torch.randint(1, 6, (2,), generator=gen))
    outer = Outer(torch.randn(b, t1, m, generator=gen, dtype=torch.float64),
                  torch.randn(b, t2 if False else t1, n, generator=gen, dtype=torch.float64))
    outer_t = Outer(torch.randn(b, t2, n, generator=gen, dtype=torch.float64),
                    torch.randn(b, t2, m, generator=gen, dtype=torch.float64), transpose=True)
    rows = Rows(torch.randint(0, m, (b, t2), generator=gen),
                torch.randn(b, t2, n, generator=gen, dtype=torch.float64), rows=m)
    dense = Dense(torch.randn(b, m, n, generator=gen, dtype=torch.float64))
    return [outer, outer_t, rows, dense]


@pytest.mark.parametrize("seed", range(5))
def test_contribution_products_equal_the_dense_ones(seed):
    gen = torch.Generator().manual_seed(seed)
    b, m, n = (int(v) for v in torch.randint(1, 6, (3,), generator=gen))
    parts = _random_parts(gen, b, m, n)
    for x in parts:
        assert x.dense().shape == (b, m, n)
        torch.testing.assert_close(x.sq(), x.dense().square().sum((1, 2)))
        for y in parts:
            ref = (x.dense() * y.dense()).sum((1, 2))
            torch.testing.assert_close(dot(x, y), ref)
    total = sum(p.dense() for p in parts)
    torch.testing.assert_close(sq_norm_of_sum(parts, (m, n)), total.square().sum((1, 2)))
