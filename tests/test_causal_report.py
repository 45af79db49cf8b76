"""foresight.causal.report: layer and activation detection, range chaining, safety, results."""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import foresight.causal as fc
from tests.reference.model_state import assert_unchanged, snapshot

#: Sample-limited estimates warn; tests that care check with pytest.warns.
pytestmark = pytest.mark.filterwarnings("ignore:foresight.causal:RuntimeWarning")

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: on the shared 2-core test machine a second thread only waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(4, 3)), ("act1", nn.Sigmoid()),
        ("fc2", nn.Linear(3, 3)), ("drop", nn.Dropout(0.1)), ("act2", nn.Tanh()),
        ("fc3", nn.Linear(3, 2)),
    ]))


def test_rows_activations_and_chained_ranges() -> None:
    model = net()
    with pytest.warns(RuntimeWarning, match="layer 'fc1'"):  # 16^4 states, 1500 samples
        rep = fc.report(model, bins=16, samples=1500, seed=4)
    assert [r.name for r in rep.layers] == ["fc1", "fc2", "fc3"]
    assert [r.activation for r in rep.layers] == ["Sigmoid", "Tanh", "identity"]
    assert [(r.n_in, r.n_out) for r in rep.layers] == [(4, 3), (3, 3), (3, 2)]
    assert rep.layers[0].in_range == (0.0, 1.0) and rep.layers[0].out_range == (0.0, 1.0)
    assert rep.layers[1].in_range == (0.0, 1.0) and rep.layers[1].out_range == (-1.0, 1.0)
    assert rep.layers[2].in_range == (-1.0, 1.0)
    acts = {"fc1": nn.Sigmoid(), "fc2": nn.Tanh(), "fc3": None}
    ranges = [(0.0, 1.0), (0.0, 1.0), (-1.0, 1.0)]
    for row, rng in zip(rep.layers, ranges):
        m = fc.layer_measures(getattr(model, row.name), in_range=rng, bins=16, samples=1500,
                              seed=4, activation=acts[row.name])
        assert (row.ei, row.ei_parts, row.sensitivity, row.degeneracy) == (
            m.ei, m.ei_parts, m.sensitivity, m.degeneracy)
        assert row.samples_ei == 1500
        assert row.samples_ei_parts is None and row.samples_sensitivity is None  # exact
        assert (row.method_ei_parts, row.method_sensitivity) == ("exact", "exact")
        assert (row.converged, row.limited_by, row.unconverged) == (
            m.converged, m.limited_by, m.unconverged)
        assert row.degeneracy == pytest.approx(row.sensitivity - row.ei_parts)


def test_to_dict_and_dataframe() -> None:
    rep = fc.report(net(), bins=8, samples=500, seed=0)
    d = rep.to_dict()
    assert d["seed"] == 0 and len(d["layers"]) == 3 and d["layers"][0]["in_range"] == [0.0, 1.0]
    pytest.importorskip("pandas")
    df = rep.to_dataframe()
    assert list(df["name"]) == ["fc1", "fc2", "fc3"]
    assert {"ei", "ei_parts", "sensitivity", "degeneracy", "samples_ei"} <= set(df.columns)
    assert rep.row("fc2").activation == "Tanh"
    with pytest.raises(KeyError):
        rep.row("nope")


def test_model_untouched() -> None:
    model = net()
    model.train()
    model(torch.rand(2, 4)).sum().backward()
    model.fc2.register_forward_hook(lambda *a: None)
    model.fc2.weight.requires_grad_(False)
    before = snapshot(model)
    fc.report(model, bins=8, samples=300, seed=0)
    assert_unchanged(model, before)
    with pytest.raises(ValueError):
        fc.report(model, bins=1)
    assert_unchanged(model, before)


def test_activation_overrides_and_functional_nets() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 2)
            self.b = nn.Linear(2, 2)

        def forward(self, x):
            return self.b(torch.sigmoid(self.a(x)))

    model = Net()
    rep = fc.report(model, samples=300, bins=8, seed=0, activations={"a": torch.sigmoid})
    assert [r.activation for r in rep.layers] == ["sigmoid", "identity"]
    assert rep.layers[1].in_range == (0.0, 1.0)
    with pytest.raises(ValueError, match="unknown weight layers"):
        fc.report(model, samples=300, activations={"zz": torch.tanh})


def test_conv_layers_use_one_receptive_field() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    rep = fc.report(model, bins=8, samples=300, seed=0)
    conv = rep.layers[0]
    assert (conv.layer, conv.activation, conv.n_in, conv.n_out) == ("Conv2d", "ReLU", 9, 2)
    assert conv.out_range[0] == 0.0  # ReLU's exact range starts at 0
    rep2 = fc.report(model, bins=8, samples=300, seed=0, input_shapes={"0": (1, 4, 4)})
    assert (rep2.layers[0].n_in, rep2.layers[0].n_out) == (16, 8)


def test_skipped_layers_warn_and_empty_models_fail() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Bilinear(3, 3, 2))
    with pytest.warns(RuntimeWarning, match="Bilinear"):
        rep = fc.report(model, samples=200, bins=8, seed=0)
    assert [r.name for r in rep.layers] == ["0"]
    with pytest.raises(ValueError, match="no layer"):
        fc.report(nn.Sequential(nn.ReLU()), samples=200)
    with pytest.raises(TypeError):
        fc.report("not a model")  # type: ignore[arg-type]


def test_single_layer_model_and_adaptive_samples() -> None:
    layer = nn.Linear(2, 2, bias=False)
    rep = fc.report(layer, bins=8, seed=0)
    row = rep.layers[0]
    assert row.name == "" and row.converged
    assert row.samples_ei >= fc.measures.START_SAMPLES


# ------------------------------------------------------------------ sample-limited estimates
def test_issue_case_is_not_converged_and_warns() -> None:
    # 64 inputs x 8 bins: every sampled joint state is new, and the plug-in EI is log2(N)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10), nn.Tanh())
    with pytest.warns(RuntimeWarning, match=r"layer '0' \(Linear 64->32\).*limited by the sample"
                      ) as caught:
        rep = fc.report(model, bins=8, seed=0)
    first = rep.layers[0]
    assert not first.converged and first.limited_by == "samples" and first.unconverged == ("ei",)
    assert abs(first.ei - math.log2(first.samples_ei)) < 1  # what it measures: the sampler
    assert first.samples_ei == fc.measures.START_SAMPLES  # stopped: more samples cannot help
    text = " ".join(str(w.message) for w in caught)
    assert "EI_parts and sensitivity" in text and "fewer bins" in text
    # the pairwise measures are exact and fine
    assert (first.method_ei_parts, first.method_sensitivity) == ("exact", "exact")
    rec = rep.record()
    assert rec["causal_ei_converged/0"] is False and rec["ei_parts_converged/0"] is True
    assert not rep.converged


@settings(max_examples=40, deadline=None)
@given(
    n_in=st.integers(1, 6),
    n_out=st.integers(1, 3),
    bins=st.sampled_from([2, 4, 8, 16, 64]),
    samples=st.sampled_from([None, 20, 150, 1000, 12_000]),
    act=st.sampled_from([None, "sigmoid", "tanh", "gelu"]),
    seed=st.integers(0, 1000),
)
def test_nothing_converged_within_one_bit_of_log2_samples(n_in, n_out, bins, samples, act,
                                                         seed) -> None:
    acts = {None: None, "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(), "gelu": nn.GELU()}
    torch.manual_seed(seed)
    layer = nn.Linear(n_in, n_out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        values = [fc.layer_ei(layer, bins=bins, samples=samples, activation=acts[act], seed=seed,
                              max_samples=40_000)]
        for f in (fc.ei_parts, fc.sensitivity):
            values.append(f(layer, bins=bins, samples=samples, activation=acts[act], seed=seed,
                            max_samples=40_000, method="sampled"))
    for v in values:
        assert v.samples is not None
        ceiling = math.log2(v.samples)
        if v.measure == "ei" and abs(v.value - ceiling) < 1:
            assert not v.converged and v.limited_by == "samples", v
        if v.converged:
            assert v.bias <= max(fc.measures.ABSOLUTE_FLOOR, min(0.05 * abs(v.value), 0.5))
            assert v.limited_by is None and v.note is None
        else:
            assert v.limited_by == "samples" and v.note
