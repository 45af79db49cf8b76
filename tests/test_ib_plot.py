"""The information-plane figures draw what they are given (headless)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from foresight.ib import InformationPlaneTracker
from foresight.plot.ib import information_plane_plot, mutual_information_curves
from foresight.schedule import every


@pytest.fixture(scope="module")
def tracker():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    x, y = torch.randn(128, 6), torch.randint(0, 2, (128,))
    tr = InformationPlaneTracker(net, x, y, schedule=every(1), bins=10)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for epoch in range(4):
        tr.update(epoch)
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tr


def test_plane_plot_points_and_colours(tracker):
    import matplotlib.pyplot as plt

    fig = information_plane_plot(tracker)
    ax = fig.axes[0]
    scatters = [c for c in ax.collections if hasattr(c, "get_offsets")]
    assert len(scatters) == 3  # one per layer: '1', '3', 'output'
    offsets = scatters[0].get_offsets()
    expected = [v for r in tracker.history for v in (r["i_xt/1"], r["i_ty/1"])]
    assert [float(v) for p in offsets for v in p] == pytest.approx(expected)
    assert len(fig.axes) == 2  # the plane and its colour bar
    plt.close(fig)


def test_curves_accept_axes_records_and_dataframe(tracker):
    import matplotlib.pyplot as plt

    fig = mutual_information_curves(tracker.to_dataframe())
    assert [a.get_ylabel() for a in fig.axes] == ["I(X;T) (bits)", "I(T;Y) (bits)"]
    line = fig.axes[1].get_lines()[0]
    assert list(line.get_ydata()) == pytest.approx(
        [plane.row("1").i_ty for _, plane in sorted(tracker.planes.items())]
    )
    plt.close(fig)
    fig, ax = plt.subplots()
    assert mutual_information_curves(tracker.to_records(), quantity="i_xt", ax=ax) is fig
    assert information_plane_plot(tracker.history, ax=ax) is fig
    plt.close(fig)


def test_plot_errors():
    with pytest.raises(ValueError, match="empty"):
        information_plane_plot([])
    with pytest.raises(ValueError, match="lacks"):
        mutual_information_curves([{"epoch": 0, "layer": "1", "i_xt": 1.0}])
    with pytest.raises(ValueError, match="quantity"):
        mutual_information_curves([{"epoch": 0, "layer": "1", "i_xt": 1, "i_ty": 0}], quantity="x")


def test_the_plots_read_records_in_every_form(tracker):
    """A tracker, its history, monitor.history (x="step"), tidy records, the 0.2 per-layer rows
    and frames of them: the same points."""
    import matplotlib.pyplot as plt

    pd = pytest.importorskip("pandas")

    def points(history, **kw):
        fig = information_plane_plot(history, **kw)
        out = [[tuple(map(float, p)) for p in c.get_offsets()] for c in fig.axes[0].collections
               if c.get_label().startswith("layer ")]
        plt.close(fig)
        return out

    expected = points(tracker)
    assert len(expected) == 3 and all(len(layer) == 4 for layer in expected)
    per_layer = [{"epoch": e, "layer": la.name, "i_xt": la.i_xt, "i_ty": la.i_ty}
                 for e, plane in sorted(tracker.planes.items()) for la in plane]
    as_steps = [{"step": 10 * r["epoch"], **r} for r in tracker.history]
    for form in (tracker.history, tracker.to_records(), per_layer, pd.DataFrame(per_layer),
                 pd.DataFrame([r.to_dict() for r in tracker.to_records()]),
                 pd.DataFrame(list(tracker.history))):
        assert points(form) == expected
    assert points(as_steps, x="step") == expected
    fig = information_plane_plot(as_steps, x="step")
    assert fig.axes[1].get_ylabel() == "step"  # the colour bar names the counter
    plt.close(fig)
    with pytest.raises(ValueError, match="'step'"):
        information_plane_plot(per_layer, x="step")
