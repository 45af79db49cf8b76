"""``foresight.ib.information_plane`` and the tracker: bounds, references, model untouched."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from foresight.ib import InformationPlaneTracker, information_plane
from foresight.ib.layers import default_layers
from foresight.schedule import at, every
from tests.reference import mi_reference as ref
from tests.reference.model_state import assert_unchanged, snapshot

#: I(X;T) at log2 N warns; tests that care check with pytest.warns.
pytestmark = [
    pytest.mark.filterwarnings("ignore:information_plane:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:foresight.ib:RuntimeWarning"),
]

WIDTHS = [12, 10, 7, 5, 4, 3, 2]


def tishby_net(act: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    mods: list[nn.Module] = []
    for a, b in zip(WIDTHS[:-1], WIDTHS[1:]):
        mods += [nn.Linear(a, b), act()]
    mods[-1] = nn.Softmax(dim=1)
    return nn.Sequential(*mods)


def patterns(n: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (n, 12), generator=g).float()
    y = (x[:, :6].sum(1) > x[:, 6:].sum(1)).long()
    return x, y


def manual_layers(net: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the Sequential by hand, keeping each module's output (independent of hooks)."""
    out, h = {}, x
    with torch.no_grad():
        for name, m in net.named_children():
            h = m(h)
            out[name] = h
    return out


def test_default_layers_follow_weight_layers():
    net = tishby_net()
    assert default_layers(net) == ["1", "3", "5", "7", "9", "11"]
    x, y = patterns(64)
    plane = information_plane(net, x, y)
    # the last activation (Softmax) is the model's output: not listed twice
    assert [la.name for la in plane.layers] == ["1", "3", "5", "7", "9", "11"]
    no_final_act = nn.Sequential(nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 2))
    plane = information_plane(no_final_act, x, y)
    assert [la.name for la in plane.layers] == ["1", "output"]
    assert plane["output"].width == 2 and plane["1"].width == 4


def test_functional_activations_fall_back_to_weight_layers_with_warning():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(12, 5)
            self.b = nn.Linear(5, 2)

        def forward(self, x):
            return self.b(torch.tanh(self.a(x)))

    x, y = patterns(64)
    with pytest.warns(UserWarning, match="no activation modules"):
        plane = information_plane(Functional(), x, y)
    assert [la.name for la in plane.layers] == ["a", "output"]


@pytest.mark.parametrize(
    "options",
    [{"bins": 30, "range": (-1.0, 1.0)}, {"bin_size": 0.07}, {"bins": 10}],
)
def test_binning_plane_matches_reference_and_bounds(options):
    net = tishby_net()
    x, y = patterns(512)
    plane = information_plane(net, x, y, **options)
    reps = manual_layers(net, x)
    log2n = math.log2(512)
    h_y = ref.plugin_entropy(y.numpy())
    assert plane.h_y == pytest.approx(h_y, abs=1e-12)
    for la in plane.layers:
        t = reps[la.name].numpy()
        x_index = np.arange(512)
        assert la.i_xt == pytest.approx(ref.binned_mi(x_index, t, **options), abs=1e-10)
        assert la.i_ty == pytest.approx(ref.binned_mi(t, y.numpy(), **options), abs=1e-10)
        assert la.i_xt == pytest.approx(la.h_t, abs=1e-12)
        assert 0.0 <= la.i_xt <= log2n + 1e-12
        assert -1e-12 <= la.i_ty <= h_y + 1e-12
        assert 1 <= la.n_states <= 512
        assert la.method == "binning"
    assert plane.layers[0].options == plane.options


@pytest.mark.parametrize("bound", ["upper", "lower"])
def test_kde_plane_matches_loop_reference_and_bounds(bound):
    net = tishby_net(nn.ReLU)
    x, y = patterns(96, seed=2)
    plane = information_plane(net, x, y, method="kde", noise_var=0.01, bound=bound, chunk_size=17)
    reps = manual_layers(net, x)
    for la in plane.layers:
        t = reps[la.name].numpy()
        assert la.i_xt == pytest.approx(ref.kde_mi_loop(t, np.arange(96), 0.01, bound), abs=1e-9)
        assert la.i_ty == pytest.approx(ref.kde_mi_loop(t, y.numpy(), 0.01, bound), abs=1e-9)
        assert la.h_t == pytest.approx(ref.kde_entropy_loop(t, 0.01, bound), abs=1e-9)
        assert la.i_xt <= math.log2(96) + 1e-9
        assert la.i_ty <= plane.h_y + 1e-9
    assert plane.options == {"noise_var": 0.01, "bound": bound}


def test_batches_give_the_same_plane():
    net = tishby_net()
    x, y = patterns(300)
    full = information_plane(net, x, y, bin_size=0.05)
    batched = information_plane(net, x, y, bin_size=0.05, batch_size=64)
    assert full.to_dict() == batched.to_dict()


def test_named_layers_and_output():
    net = tishby_net()
    x, y = patterns(64)
    plane = information_plane(net, x, y, layers=["0", "output"], bins=5)
    assert [la.name for la in plane.layers] == ["0", "output"]
    with pytest.raises(ValueError, match="no module named 'nope'"):
        information_plane(net, x, y, layers=["nope"])


def test_model_untouched_including_on_error():
    net = nn.Sequential(
        nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 2)
    )
    x, y = patterns(128)
    net(x).sum().backward()  # grads present
    net.train()
    net[0].register_forward_hook(lambda m, a, o: None)
    before = snapshot(net)
    plane = information_plane(net, x, y, method="kde", noise_var=0.1)
    information_plane(net, x, y, bins=30, batch_size=50)
    assert_unchanged(net, before)
    assert [la.name for la in plane.layers] == ["2", "output"]
    # eval mode was used: dropout off, so the result is deterministic
    again = information_plane(net, x, y, method="kde", noise_var=0.1)
    assert again.to_dict() == plane.to_dict()

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(12, 12)
            self.act = nn.Tanh()

        def forward(self, x):
            return self.act(self.lin(self.act(self.lin(x))))

    shared = Shared()
    before = snapshot(shared)
    with pytest.raises(ValueError, match="'act' ran 2 times"):
        information_plane(shared, x, y)
    assert_unchanged(shared, before)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "ksg"}, "supports method"),
        ({"method": "binning", "noise_var": 1.0}, "option"),
        ({"labels": torch.rand(64)}, "integer class labels"),
        ({"labels": torch.zeros(63, dtype=torch.long)}, "same number of samples"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_plane_errors(kwargs, match):
    net = tishby_net()
    x, y = patterns(64)
    labels = kwargs.pop("labels", y)
    with pytest.raises(ValueError, match=match):
        information_plane(net, x, labels, **kwargs)


def test_tracker_follows_schedule_and_records():
    net = tishby_net()
    x, y = patterns(128)
    tracker = InformationPlaneTracker(net, x, y, schedule=at(0, 3), bins=30, range=(-1, 1))
    results = [tracker.update(e) for e in range(5)]
    assert [r is not None for r in results] == [True, False, False, True, False]
    assert sorted(tracker.planes) == [0, 3]
    # one flat record per measurement, the Monitor's keys (the same history type as every tracker)
    assert [r["epoch"] for r in tracker.history] == [0, 3]
    names = [la.name for la in tracker.planes[0].layers]
    assert len(names) == 6
    rec = tracker.history[0]
    assert list(rec) == ["epoch"] + [f"{k}/{n}" for n in names
                                     for k in ("i_xt", "i_ty", "i_xt_limited")]
    assert rec["i_xt/1"] == tracker.planes[0].row("1").i_xt == results[0].layers[0].i_xt
    with pytest.raises(AttributeError, match="one flat record"):
        rec.layer  # noqa: B018 - the 0.2 per-layer row says what to read instead
    frame = tracker.to_dataframe()
    assert list(frame.columns) == list(rec) and list(frame["epoch"]) == [0, 3]
    tidy = tracker.to_records()  # per layer and field, with the epoch
    assert [(r.epoch, r.layer, r.field) for r in tidy[:2]] == [(0, "1", "i_xt"), (0, "1", "i_ty")]
    assert {r.metric for r in tidy} == {"ib"} and len(tidy) == 2 * 6 * 3
    default = InformationPlaneTracker(net, x, y)
    assert [e for e in range(200) if default.schedule(e)][:12] == list(range(11)) + [11]
    with pytest.raises(ValueError, match="supports method"):
        InformationPlaneTracker(net, x, y, method="discrete")
    assert every(1)(0)


def test_saturated_i_xt_is_flagged_and_warned():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 1), nn.Tanh())
    x = torch.rand(256, 12)
    y = (x.sum(1) > 6).long()
    with pytest.warns(RuntimeWarning, match=r"layer\(s\) \['1'\].*log2\(N\) = 8"):
        plane = information_plane(net, x, y, bins=30, range=(-1, 1))
    wide, narrow = plane["1"], plane["3"]
    assert wide.i_xt == pytest.approx(8.0) and wide.limited_by == "samples"  # every sample apart
    assert narrow.limited_by is None and narrow.i_xt <= 7.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        coarse = information_plane(net, x, y, bins=2, range=(-1, 1))
    assert all(la.limited_by is None for la in coarse.layers)
