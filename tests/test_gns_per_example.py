"""Per-example squared norms against the brute-force per-example autograd loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from foresight.gns import per_example_sq_norms, per_parameter_sq_norms
from foresight.gns.per_example import plan_for
from foresight.layers.rules import conv as conv_rule
from tests.reference.model_state import assert_unchanged, snapshot
from tests.reference.per_example_loop import (
    per_example_param_sq_norms_loop,
    per_example_sq_norms_loop,
)

RTOL = 1e-5


def mse(out, y):
    return (out - y).square().mean()


def check(model, x, y, loss_fn=mse, *, no_fallback=True, monkeypatch=None):
    model = model.double()
    x = x.double() if x.is_floating_point() else x
    y = y.double()
    if no_fallback:
        plan = plan_for(model, x if isinstance(x, tuple) else (x,))
        fallback = [f"{u.module} {u.op}" for u in plan.uses if u.kind == "fallback"]
        assert not fallback, f"fallback used where a rule exists: {fallback}"
    ref = per_example_param_sq_norms_loop(model, loss_fn, x, y)
    got, _ = per_parameter_sq_norms(model, loss_fn, x, y)
    assert set(got) == set(ref)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=RTOL, atol=1e-12, msg=name)
    total = per_example_sq_norms(model, loss_fn, x, y)
    torch.testing.assert_close(total, sum(ref.values()), rtol=RTOL, atol=1e-12)


def head(out_features):
    return nn.Sequential(nn.Tanh(), nn.Flatten(), nn.LazyLinear(out_features))


def seeds(n):
    return list(range(n))


@pytest.mark.parametrize("seed", seeds(4))
def test_linear_any_rank(seed, monkeypatch):
    g = torch.Generator().manual_seed(seed)
    b = int(torch.randint(2, 6, (1,), generator=g))
    i, k = (int(v) for v in torch.randint(1, 9, (2,), generator=g))
    lead = [int(v) for v in torch.randint(1, 5, (seed % 3,), generator=g)]
    bias = bool(seed % 2)
    model = nn.Sequential(nn.Linear(i, k, bias=bias), nn.Tanh(), nn.Linear(k, 3))
    x = torch.randn(b, *lead, i, generator=g)
    y = torch.randn(b, *lead, 3, generator=g)
    check(model, x, y, monkeypatch=monkeypatch)


@pytest.mark.parametrize("t,i,k", [(2, 30, 30), (20, 3, 4)])  # materialised vs Gram branch
def test_linear_sequence_both_branches(t, i, k, monkeypatch):
    model = nn.Sequential(nn.Linear(i, k), nn.ReLU(), nn.Linear(k, 2))
    check(model, torch.randn(4, t, i), torch.randn(4, t, 2), monkeypatch=monkeypatch)


def test_inplace_activation_after_linear(monkeypatch):
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(inplace=True), nn.Linear(6, 2))
    check(model, torch.randn(5, 5), torch.randn(5, 2), monkeypatch=monkeypatch)


CONV_CASES = [
    (nn.Conv1d, dict(kernel_size=3)),
    (nn.Conv1d, dict(kernel_size=2, stride=2, padding=1, dilation=2, groups=2, bias=False)),
    (nn.Conv1d, dict(kernel_size=4, padding="same", padding_mode="reflect")),
    (nn.Conv2d, dict(kernel_size=3, padding=1)),
    (nn.Conv2d, dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0), dilation=(1, 2))),
    (nn.Conv2d, dict(kernel_size=3, groups=2, padding="same", padding_mode="circular")),
    (nn.Conv2d, dict(kernel_size=2, padding="valid", padding_mode="replicate", stride=2)),
    (nn.Conv3d, dict(kernel_size=2, stride=(1, 2, 1), padding=1, groups=2)),
    (nn.Conv3d, dict(kernel_size=(1, 2, 3), dilation=(1, 2, 1), padding="same")),
]


@pytest.mark.parametrize("method", [1, 1 << 23])
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv(case, method, monkeypatch):
    monkeypatch.setattr(conv_rule, "CONV_CHUNK_ELEMENTS", method)
    cls, kw = CONV_CASES[case]
    nd = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[cls]
    g = torch.Generator().manual_seed(case)
    b = int(torch.randint(2, 5, (1,), generator=g))
    size = [int(v) for v in torch.randint(5, 9 if nd < 3 else 7, (nd,), generator=g)]
    conv = cls(4, 6, **kw)
    model = nn.Sequential(conv, head(2))
    x = torch.randn(b, 4, *size, generator=g)
    with torch.no_grad():
        model(x)  # materialise the lazy head
    check(model, x, torch.randn(b, 2, generator=g), monkeypatch=monkeypatch)


def test_conv_large_batch_chunks(monkeypatch):
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), head(2))
    x = torch.randn(33, 3, 6, 6)
    with torch.no_grad():
        model(x)
    check(model, x, torch.randn(33, 2), monkeypatch=monkeypatch)


@pytest.mark.parametrize(
    "kw", [dict(), dict(padding_idx=0), dict(scale_grad_by_freq=True), dict(padding_idx=2)]
)
def test_embedding(kw, monkeypatch):
    model = nn.Sequential(nn.Embedding(5, 3, **kw), nn.Tanh(), nn.Linear(3, 2))
    ids = torch.randint(0, 5, (6, 7))
    ids[0, :3] = 0  # repeated ids within an example
    check(model, ids, torch.randn(6, 7, 2), monkeypatch=monkeypatch)


def test_embedding_bag_of_ids_no_sequence(monkeypatch):
    model = nn.Sequential(nn.Embedding(4, 3), nn.Linear(3, 1))
    check(model, torch.randint(0, 4, (5,)), torch.randn(5, 1), monkeypatch=monkeypatch)


NORMS = [
    lambda: nn.LayerNorm(6),
    lambda: nn.LayerNorm((3, 6)),
    lambda: nn.LayerNorm(6, bias=False),
    lambda: nn.RMSNorm(6),
    lambda: nn.RMSNorm((3, 6), eps=1e-3),
]


@pytest.mark.parametrize("make", range(len(NORMS)))
def test_trailing_norms(make, monkeypatch):
    norm = NORMS[make]()
    model = nn.Sequential(nn.Linear(6, 6), norm, nn.Tanh(), nn.Linear(6, 2))
    with torch.no_grad():
        for p in norm.parameters():
            p.normal_()
    check(model, torch.randn(4, 3, 6), torch.randn(4, 3, 2), monkeypatch=monkeypatch)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.GroupNorm(2, 4),
        lambda: nn.GroupNorm(4, 4),
        lambda: nn.BatchNorm2d(4).eval(),
    ],
)
def test_channel_norms(make, monkeypatch):
    norm = make()
    with torch.no_grad():
        for p in norm.parameters():
            p.normal_()
        if isinstance(norm, nn.BatchNorm2d):
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), norm, head(2))
    x = torch.randn(5, 3, 6, 5)
    with torch.no_grad():
        model(x)
    check(model, x, torch.randn(5, 2), monkeypatch=monkeypatch)


def test_batchnorm1d_eval(monkeypatch):
    bn = nn.BatchNorm1d(4)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.weight.normal_()
    model = nn.Sequential(nn.Linear(3, 4), bn, nn.Tanh(), nn.Linear(4, 2)).eval()
    check(model, torch.randn(6, 3), torch.randn(6, 2), monkeypatch=monkeypatch)


class Scale(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.s = nn.Parameter(torch.randn(n))

    def forward(self, x):
        return x * self.s + self.s.square()


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Sequential(nn.Linear(4, 4), Scale(4), nn.Tanh(), nn.Linear(4, 2)),
        lambda: nn.Sequential(nn.Linear(4, 4), nn.PReLU(4), nn.Linear(4, 2)),
    ],
)
def test_fallback_for_layers_without_rule(make):
    check(make(), torch.randn(5, 4), torch.randn(5, 2), no_fallback=False)


class Attn(nn.Module):
    def __init__(self, batch_first):
        super().__init__()
        self.batch_first = batch_first
        self.mha = nn.MultiheadAttention(4, 2, batch_first=batch_first)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = x if self.batch_first else x.transpose(0, 1)
        a, _ = self.mha(h, h, h)
        a = a if self.batch_first else a.transpose(0, 1)
        return self.out(a)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_fallback(batch_first):
    check(Attn(batch_first), torch.randn(4, 3, 4), torch.randn(4, 3, 2), no_fallback=False)


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.mid = nn.Linear(4, 4)
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.mid(self.emb(ids))))


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


class Functional(nn.Module):
    """The weight of ``lin`` is also used outside ``lin`` (invisible to module hooks)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        return self.out(F.linear(h, self.lin.weight))


def test_tied_embedding_and_head(monkeypatch):
    check(TiedLM(), torch.randint(0, 7, (5, 3)), torch.randn(5, 3, 7), monkeypatch=monkeypatch)


def test_module_called_twice(monkeypatch):
    check(Twice(), torch.randn(5, 4), torch.randn(5, 2), monkeypatch=monkeypatch)


def test_parameter_used_outside_its_layer():
    check(Functional(), torch.randn(5, 4), torch.randn(5, 2), no_fallback=False)


def test_sum_reduction_and_cross_entropy():
    model = nn.Sequential(nn.Linear(5, 8), nn.GELU(), nn.Linear(8, 3)).double()
    x, y = torch.randn(6, 5).double(), torch.randint(0, 3, (6,))
    for red in ("mean", "sum"):

        def loss_fn(out, t, red=red):
            return F.cross_entropy(out, t, reduction=red)

        ref = per_example_sq_norms_loop(model, loss_fn, x, y)
        got = per_example_sq_norms(model, loss_fn, x, y, loss_reduction=red)
        torch.testing.assert_close(got, ref, rtol=RTOL, atol=0)


def test_frozen_parameters_are_excluded():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    model[0].weight.requires_grad_(False)
    x, y = torch.randn(4, 3).double(), torch.randn(4, 2).double()
    got, _ = per_parameter_sq_norms(model, mse, x, y)
    assert "0.weight" not in got
    torch.testing.assert_close(
        per_example_sq_norms(model, mse, x, y),
        per_example_sq_norms_loop(model, mse, x, y),
        rtol=RTOL,
        atol=0,
    )


def test_float32_default_dtype():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), head(2))
    x, y = torch.randn(4, 2, 6, 6), torch.randn(4, 2)
    with torch.no_grad():
        model(x)
    ref = per_example_sq_norms_loop(model, mse, x, y).float()
    torch.testing.assert_close(per_example_sq_norms(model, mse, x, y), ref, rtol=1e-4, atol=0)


def test_model_untouched_including_grads_and_hooks():
    model = nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), Scale(4), nn.Linear(4, 2)
    ).eval()
    model[0].register_forward_hook(lambda *a: None)
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    mse(model(x), y).backward()
    model[1].train()  # mixed modes
    model[1].eval()
    before = snapshot(model)
    per_example_sq_norms(model, mse, x, y)
    assert_unchanged(model, before)


def test_train_mode_batchnorm_raises_and_leaves_model_alone():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    before = snapshot(model)
    with pytest.raises(ValueError, match="eval"):
        per_example_sq_norms(model, mse, torch.randn(5, 3), torch.randn(5, 2))
    assert_unchanged(model, before)


def test_bad_arguments():
    model = nn.Linear(3, 1)
    x, y = torch.randn(4, 3), torch.randn(4, 1)
    with pytest.raises(ValueError, match="loss_reduction"):
        per_example_sq_norms(model, mse, x, y, loss_reduction="none")
    with pytest.raises(ValueError, match="scalar"):
        per_example_sq_norms(model, lambda o, t: (o - t).square(), x, y)
    with pytest.raises(TypeError, match="inputs"):
        per_example_sq_norms(model, mse, [x], y)


class ConvTwice(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, **kw)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.conv(torch.tanh(self.conv(x)))
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize("method", [1, 1 << 23])
@pytest.mark.parametrize(
    "kw", [dict(padding=1), dict(padding="same", groups=2, padding_mode="reflect", dilation=2)]
)
def test_conv_called_twice_materialised(method, kw, monkeypatch):
    monkeypatch.setattr(conv_rule, "CONV_CHUNK_ELEMENTS", method)
    check(ConvTwice(**kw), torch.randn(3, 4, 9, 9), torch.randn(3, 2), monkeypatch=monkeypatch)


class Flattened(nn.Module):
    """A Linear applied to ``[B*T, I]``: its leading size is not the batch, so it must not use the
    batch-first rule (it goes to the exact fallback)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        b, t, i = x.shape
        return self.out(torch.tanh(self.lin(x.reshape(b * t, i))).reshape(b, t, 4))


def test_layer_without_batch_first_input_goes_to_fallback():
    check(Flattened(), torch.randn(4, 5, 3), torch.randn(4, 5, 2), no_fallback=False)
