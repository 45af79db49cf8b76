"""CausalTracker records and the causal figures (foresight.plot.causal)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import foresight.causal as fc
from foresight.schedule import at, every

#: Sample-limited estimates warn; tests that care check with pytest.warns.
pytestmark = pytest.mark.filterwarnings("ignore:foresight.causal:RuntimeWarning")

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: on the shared 2-core test machine a second thread only waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Linear(3, 2), nn.Sigmoid())


def test_tracker_records_match_report_and_leave_training_rng_alone() -> None:
    net = tiny_net()
    tracker = fc.CausalTracker(net, at(0, 2), bins=8, samples=400, seed=3)
    torch.manual_seed(123)
    out = [tracker.update(s, loss=float(s)) for s in range(3)]
    after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(1))  # the tracker drew nothing from the global RNG
    assert out[1] is None and [r["epoch"] for r in tracker.history] == [0, 2]
    rep = fc.report(net, bins=8, samples=400, seed=3)
    expected = rep.record()
    assert {k: tracker.history[0][k] for k in expected} == expected
    prefixes = [*fc.RECORD_KEYS.values(), *fc.CONVERGED_KEYS.values()]
    assert set(expected) == {f"{p}/{n}" for p in prefixes for n in ("0", "2")}
    for key in fc.CONVERGED_KEYS.values():
        assert all(isinstance(expected[f"{key}/{n}"], bool) for n in ("0", "2"))
    assert tracker.reports[0][0] == 0 and tracker.history[1]["loss"] == 2.0
    assert out[0] is tracker.reports[0][1]  # update() returns the report


def test_tracker_deprecated_when_and_step() -> None:
    net = tiny_net()
    with pytest.warns(DeprecationWarning, match="schedule"):
        old = fc.CausalTracker(net, when=at(1), bins=8, samples=400, seed=3)
    new = fc.CausalTracker(net, schedule=at(1), bins=8, samples=400, seed=3)
    with pytest.warns(DeprecationWarning, match="update"):
        assert old.step(0) is None
    with pytest.warns(DeprecationWarning, match="update"):
        record = old.step(1, loss=0.5)  # 0.2: step() returned the record
    new.update(1, loss=0.5)
    assert record == old.history[-1] == new.history[-1]
    with pytest.warns(DeprecationWarning, match="schedule"):
        assert old.when is old.schedule
    with pytest.raises(TypeError, match="not both"), pytest.warns(DeprecationWarning):
        fc.CausalTracker(net, at(1), when=at(1))


def test_tracker_bad_arguments() -> None:
    with pytest.raises(TypeError):
        fc.CausalTracker("net")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        fc.CausalTracker(tiny_net(), seed=None)  # type: ignore[arg-type]


def history() -> list[dict]:
    tracker = fc.CausalTracker(tiny_net(), every(1), bins=8, samples=300)
    for s in range(3):
        tracker.update(s)
    return tracker.history


def test_layer_ei_training_figure() -> None:
    pytest.importorskip("matplotlib")
    from foresight.plot.causal import layer_ei_training

    h = history()
    fig = layer_ei_training(h, measure="sensitivity")
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["layer 0", "layer 2"]
    assert list(lines[0].get_ydata()) == [r["sensitivity/0"] for r in h]
    fig2 = layer_ei_training(h, layers=["2"])
    assert len(fig2.axes[0].get_lines()) == 1
    with pytest.raises(ValueError, match="measure"):
        layer_ei_training(h, measure="nope")
    with pytest.raises(ValueError, match="layers"):
        layer_ei_training(h, layers=["9"])
    with pytest.raises(ValueError, match="step"):
        layer_ei_training(h, x="step")


def test_causal_plane_figure_into_given_axes() -> None:
    plt = pytest.importorskip("matplotlib.pyplot")
    from foresight.plot.causal import causal_plane

    h = history()
    fig, ax = plt.subplots()
    assert causal_plane(h, ax=ax) is fig
    labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["layer 0", "layer 2"]
    path = [line for line in ax.get_lines() if line.get_label() == "layer 0"][0]
    assert list(path.get_xdata()) == [r["sensitivity/0"] for r in h]
    assert list(path.get_ydata()) == [r["causal_degeneracy/0"] for r in h]
    # every point coloured by its epoch, on one scale, with a colour bar
    colored = [c for c in ax.collections if c.get_array() is not None]
    assert [list(c.get_array()) for c in colored] == [[0.0, 1.0, 2.0]] * 2
    assert fig.axes[-1].get_ylabel() == "epoch"
    with pytest.raises(ValueError, match="sensitivity"):
        causal_plane([{"epoch": 0, "loss": 1.0}])
    plt.close("all")


def test_unconverged_points_are_hollow() -> None:
    plt = pytest.importorskip("matplotlib.pyplot")
    from foresight.plot.causal import causal_plane, layer_ei_training

    rows = [{"epoch": e, "sensitivity/0": 5.0 + e, "causal_degeneracy/0": 3.0 - e / 2,
             "causal_ei/0": 2.0 + e, "causal_ei_converged/0": e != 1,
             "sensitivity_converged/0": e != 2, "ei_parts_converged/0": True}
            for e in range(4)]
    fig = causal_plane(rows)
    ax = fig.axes[0]
    filled = [c for c in ax.collections if c.get_array() is not None][0]
    assert list(filled.get_array()) == [0.0, 1.0, 3.0]  # epoch 2's sensitivity is limited
    hollow = [c for c in ax.collections if c.get_array() is None]
    assert len(hollow) == 1 and hollow[0].get_offsets().tolist() == [[7.0, 2.0]]
    assert "not converged" in [t.get_text() for t in ax.get_legend().get_texts()]
    fig2 = layer_ei_training(rows, measure="ei")
    marks = [line for line in fig2.axes[0].get_lines() if line.get_label() == "_nolegend_"]
    assert [list(m.get_xdata()) for m in marks] == [[1.0]]  # EI of epoch 1 is limited
    # flags from a DataFrame (numpy bools) work the same
    pd = pytest.importorskip("pandas")
    fig3 = causal_plane(pd.DataFrame(rows))
    assert len([c for c in fig3.axes[0].collections if c.get_array() is None]) == 1
    plt.close("all")


def test_monitor_records_carry_the_flags() -> None:
    from foresight.monitor import CausalEI, InformationPlane, Monitor

    net = tiny_net()
    x, y = torch.rand(64, 3), torch.randint(0, 2, (64,))
    mon = Monitor(net, [CausalEI(bins=8, samples=300, seed=0),
                        InformationPlane(x, y, bins=30, range=(0, 1))], unit="epoch")
    with pytest.warns(RuntimeWarning):  # 300 samples: EI is sample-limited; I(X;T) saturates
        record = mon.epoch_end(0)
    for name in ("0", "2"):
        assert record[f"causal_ei_converged/{name}"] is False
        assert record[f"ei_parts_converged/{name}"] is True  # exact
        assert record[f"sensitivity_converged/{name}"] is True
    flags = {k: v for k, v in record.items() if k.startswith("i_xt_limited/")}
    assert flags and all(isinstance(v, bool) for v in flags.values())
    assert any(flags.values())  # 64 distinct samples, 30 bins per unit: I(X;T) = log2(64)
    mon.close()
