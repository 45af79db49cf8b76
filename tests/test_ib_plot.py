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
    expected = [v for r in tracker.history if r.layer == "1" for v in (r.i_xt, r.i_ty)]
    assert [float(v) for p in offsets for v in p] == pytest.approx(expected)
    assert len(fig.axes) == 2  # the plane and its colour bar
    plt.close(fig)


def test_curves_accept_axes_records_and_dataframe(tracker):
    import matplotlib.pyplot as plt

    fig = mutual_information_curves(tracker.to_dataframe())
    assert [a.get_ylabel() for a in fig.axes] == ["I(X;T) (bits)", "I(T;Y) (bits)"]
    line = fig.axes[1].get_lines()[0]
    assert list(line.get_ydata()) == pytest.approx(
        [r.i_ty for r in tracker.history if r.layer == "1"]
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
