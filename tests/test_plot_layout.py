"""What a reader trips over in a figure, checked on the rendered pixels: overlapping tick labels,
legends over data, colour bars that squeeze one column, one epoch colour scale across figures,
and unresolved noise-scale estimates drawn as batch sizes.

Each checker is first shown to catch the fault it looks for on a figure that has it.
"""

from __future__ import annotations

import math
import random

import matplotlib
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from foresight.plot import _style  # noqa: E402
from foresight.plot.dashboard import training_dashboard  # noqa: E402
from foresight.plot.gns import noise_scale_over_training  # noqa: E402
from foresight.plot.ib import information_plane_plot  # noqa: E402


def overlapping_tick_labels(fig) -> list[tuple[str, str, str]]:
    """Pairs of visible tick labels (major and minor) of one axis whose boxes intersect."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    bad = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t for t in axis.get_ticklabels() + axis.get_ticklabels(minor=True)
                      if t.get_visible() and t.get_text().strip()]
            boxes = [(t.get_text(), t.get_window_extent(renderer).shrunk(0.98, 0.98))
                     for t in labels]
            for i, (ta, a) in enumerate(boxes):
                for tb, b in boxes[i + 1:]:
                    if a.overlaps(b):
                        bad.append((ax.get_title() or ax.get_ylabel(), ta, tb))
    return bad


def legends_over_data(fig) -> list[tuple[str, int]]:
    """Legends inside an axes that cover some point or line of it (or of its twin)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    bad = []
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None or not ax.get_visible():
            continue
        box = legend.get_window_extent(renderer)
        if not box.overlaps(ax.bbox):  # placed outside the axes
            continue
        n = _style.covered(box, _style.data_points(_style.twins_of(ax)), pad=0.0)
        if n:
            bad.append((ax.get_title(), n))
    return bad


def records(n: int = 120, seed: int = 0) -> list[dict]:
    """A demo-like history: the noise-scale estimates turn negative once the model converges."""
    rng = random.Random(seed)
    out = []
    for e in range(n):
        g2 = 10.0 * math.exp(-e / 6) + rng.gauss(0, 1e-5)  # falls below its noise near the end
        tr = 5.0 * math.exp(-e / 40)
        rec = {"epoch": e, "step": 4 * e, "ei": 1.3 + 0.3 * (1 - math.exp(-e)) + 0.001 * e,
               "determinism": 2.0 - 0.001 * e, "degeneracy": 3.3,
               "train_loss": 2 * math.exp(-e / 9),
               "test_loss": 0.3 + 2 * math.exp(-e / 9) + 0.001 * e, "grad_sq_norm": g2,
               "trace_sigma": tr}
        if e:
            rec["b_simple"] = tr / g2
        if e in (0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 119):
            for i, layer in enumerate(("tanh", "output")):
                rec[f"i_xt/{layer}"] = 7 + i + math.log1p(e) * (0.3 - 0.1 * i)
                rec[f"i_ty/{layer}"] = 1.7 + 1.4 * (1 - math.exp(-e / 4)) + 0.05 * i
                rec[f"sensitivity/{layer}"] = 40 + 2 * e * (1 - i)
                rec[f"causal_degeneracy/{layer}"] = 20 + 1.9 * e * (1 - i)
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def dashboard():
    fig = training_dashboard(records(), logx=True, ncols=3, title="a title")
    yield fig
    plt.close(fig)


# -- the checkers catch what they look for -------------------------------------------------------


def test_checkers_catch_overlapping_ticks_and_covering_legends():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(range(10), [10.0, 1e-6, -1e-6, 5.0, 1e-6, -2e-6, 3.0, 0.0, 1.0, 2.0])
    ax.set_yscale("symlog", linthresh=1e-6)  # the old |G|² axis: 10⁻⁶ / 0 / -10⁻⁶ overprint
    ax.set_ylim(-3e-6, 3e-6)
    ax.set_yticks([-1e-6, -1e-7, 0, 1e-7, 1e-6])
    assert overlapping_tick_labels(fig)
    ax.cla()
    ax.plot(range(10), [5] * 10, label="a")
    ax.plot(range(10), range(10), label="b")
    ax.legend(loc="center")  # over both lines
    assert legends_over_data(fig)
    plt.close(fig)


# -- the dashboard ---------------------------------------------------------------------------------


def test_dashboard_has_no_overlapping_ticks(dashboard):
    assert overlapping_tick_labels(dashboard) == []


def test_dashboard_legends_cover_no_curve(dashboard):
    assert legends_over_data(dashboard) == []
    losses = dashboard.legends  # the loss curves are named once, for the whole figure
    assert len(losses) == 1
    assert [t.get_text() for t in losses[0].get_texts()] == ["train loss", "test loss"]
    renderer = dashboard.canvas.get_renderer()
    box = losses[0].get_window_extent(renderer)
    assert not any(box.overlaps(a.bbox) for a in dashboard.axes if a.get_visible())


def test_dashboard_columns_and_rows_are_aligned(dashboard):
    dashboard.canvas.draw()
    panels = [a for a in dashboard.axes if a.get_visible() and a.get_subplotspec() is not None
              and a.get_label() != "<colorbar>" and a.bbox.width > 100]
    by_col: dict[int, set] = {}
    by_row: dict[int, set] = {}
    for a in panels:
        spec = a.get_subplotspec()
        by_col.setdefault(spec.colspan.start, set()).add(round(a.bbox.width))
        by_row.setdefault(spec.rowspan.start, set()).add(round(a.bbox.height))
    widths = {c: w for c, w in by_col.items()}
    assert all(len(w) == 1 for w in widths.values()), widths  # no colour bar squeezes a panel
    assert max(min(w) for w in widths.values()) - min(min(w) for w in widths.values()) <= 2
    assert all(len(h) == 1 for h in by_row.values()), by_row


def test_unresolved_noise_scale_is_not_drawn_as_a_batch_size(dashboard):
    recs = records()
    ax = next(a for a in dashboard.axes if a.get_title() == "Gradient noise scale")
    assert ax.get_yscale() == "log"
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "b simple"]
    drawn = [y for y in line.get_ydata() if math.isfinite(y)]
    assert drawn and min(drawn) > 0  # nothing <= 0 drawn as a number of examples
    negative = [r["epoch"] for r in recs if "b_simple" in r and r["b_simple"] <= 0]
    assert negative, "the fixture must have unresolved estimates"
    assert [x for x, y in zip(line.get_xdata(), line.get_ydata()) if math.isnan(y)] == negative
    spans = [p for p in ax.patches if p.get_alpha() is not None]  # the shaded stretches
    assert spans
    covered_x = [(p.get_x(), p.get_x() + p.get_width()) for p in spans]
    assert all(any(lo <= e <= hi for lo, hi in covered_x) for e in negative)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert _style.UNRESOLVED_LABEL in labels
    g2 = next(a for a in dashboard.axes if a.get_title() == "|G|² and tr(Σ)")
    assert g2.get_yscale() == "log"
    assert all(y > 0 for ln in g2.get_lines() for y in ln.get_ydata() if math.isfinite(y))


def test_dashboard_planes_share_the_information_plane_colour_scale(dashboard):
    recs = records()
    rows = [{"epoch": r["epoch"], "layer": k[5:], "i_xt": v, "i_ty": r["i_ty/" + k[5:]]}
            for r in recs for k, v in r.items() if k.startswith("i_xt/")]
    alone = information_plane_plot(rows)
    (ref,) = [c for c in alone.axes[0].collections if c.get_label() == "layer tanh"]
    plane = next(a for a in dashboard.axes if a.get_title() == "Information plane")
    (mine,) = [c for c in plane.collections if c.get_label() == "tanh"]
    assert type(mine.norm) is type(ref.norm)
    assert (mine.norm.vmin, mine.norm.vmax) == (ref.norm.vmin, ref.norm.vmax)
    assert mine.get_cmap().name == ref.get_cmap().name == _style.EPOCH_CMAP
    assert list(mine.get_array()) == list(ref.get_array())  # coloured by the epoch itself
    assert (mine.get_facecolors() == ref.get_facecolors()).all()
    causal = next(a for a in dashboard.axes if a.get_title() == "Causal plane")
    assert all(c.norm is mine.norm for c in causal.collections if c.get_array() is not None)
    bars = [a for a in dashboard.axes if a.get_label() == "<colorbar>"]
    assert len(bars) == 1  # one colour bar for both planes
    assert overlapping_tick_labels(alone) == [] and legends_over_data(alone) == []
    plt.close(alone)


def test_epoch_range_gives_figures_the_same_scale():
    recs = records(30)
    rows = [{"epoch": r["epoch"], "layer": k[5:], "i_xt": v, "i_ty": r["i_ty/" + k[5:]]}
            for r in recs for k, v in r.items() if k.startswith("i_xt/")]
    fig = information_plane_plot(rows, epoch_range=(0, 299))
    assert (fig.axes[0].collections[-1].norm.vmax) == 299
    dash = training_dashboard(recs, epoch_range=(0, 299))
    plane = next(a for a in dash.axes if a.get_title() == "Information plane")
    assert plane.collections[0].norm.vmax == 299
    plt.close(fig)
    plt.close(dash)


# -- the noise-scale figure ------------------------------------------------------------------------


def test_noise_scale_figure_marks_unresolved_estimates():
    values = [40.0, 55.0, -300.0, float("nan"), 80.0, float("inf"), -5.0, 120.0]
    fig = noise_scale_over_training(range(len(values)), values)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    line = ax.get_lines()[0]
    assert [y for y in line.get_ydata() if math.isfinite(y)] == [40.0, 55.0, 80.0, 120.0]
    assert [x for x, y in zip(line.get_xdata(), line.get_ydata()) if math.isnan(y)] == [2, 3, 5,
                                                                                        6]
    suggested = [ln for ln in ax.get_lines() if ln.get_label().startswith("suggested")]
    assert suggested and suggested[0].get_ydata()[0] == 120
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"{_style.UNRESOLVED_LABEL}: 4 of 8 estimates" in texts
    assert overlapping_tick_labels(fig) == [] and legends_over_data(fig) == []
    plt.close(fig)
    fig = noise_scale_over_training([0, 1], [-1.0, -2.0])  # nothing resolved: said, not drawn
    assert "no resolved estimate" in [t.get_text() for t in fig.axes[0].texts]
    plt.close(fig)


def test_split_resolved_and_epoch_norm():
    xs, ys, bad = _style.split_resolved([1, 2, 3], [0.0, 2.0, -1.0])
    assert bad == [1, 3] and math.isnan(ys[0]) and ys[1] == 2.0
    norm = _style.epoch_norm([0, 10, 100])
    assert norm(0) == 0 and norm(100) == 1 and 0 < norm(1) < norm(10) < 1
    assert float(norm(1)) == pytest.approx(1 / 3)  # 0-1, 1-10 and 10-100 share the scale
    assert _style.epoch_norm([5]).vmax == 6  # one epoch: a non-empty scale
