"""foresight.plot: the EI figure and the dashboard return figures, headless, from any history."""

from __future__ import annotations

import math

import matplotlib
import pytest

import foresight.plot as fplot
from foresight._progress import SimpleBar, progress
from foresight.plot._history import columns

matplotlib.use("Agg")


def records(n: int = 6) -> list[dict]:
    out = []
    for e in range(n):
        out.append({
            "step": 10 * e, "epoch": e, "ei": 1.0 + 0.1 * e, "determinism": 2.0 - 0.1 * e,
            "degeneracy": 3.0, "train_loss": 1.0 / (e + 1), "test_loss": 1.2 / (e + 1),
            "b_simple": 5.0 + e, "i_xt/fc1": 3.0 + e, "i_ty/fc1": 0.5, "i_xt/fc2": 2.0,
            "i_ty/fc2": 0.4, "sensitivity/fc1": 4.0, "causal_degeneracy/fc1": 1.0,
            "lr": 0.1, "note": "text is ignored",
        })
    return out


def test_columns_from_records_dataframe_and_dict():
    pd = pytest.importorskip("pandas")
    recs = [{"epoch": 0, "a": 1.0}, {"epoch": 1, "b": 2}]
    cols = columns(recs)
    assert cols["epoch"] == [0.0, 1.0] and cols["b"][1] == 2.0 and math.isnan(cols["b"][0])
    from_df = columns(pd.DataFrame(recs))
    assert from_df["a"][0] == 1.0 and math.isnan(from_df["a"][1])
    assert columns({"epoch": [0, 1], "a": [1, 2]}) == {"epoch": [0.0, 1.0], "a": [1.0, 2.0]}
    with pytest.raises(TypeError, match="history"):
        columns(42)


def test_ei_training_figure(tmp_path):
    fig = fplot.ei_training(records(), logx=True)
    loss_ax, ei_ax = fig.axes
    assert ei_ax.get_ylabel() == "EI (bits)" and loss_ax.get_ylabel() == "loss"
    expected = [1.0 + 0.1 * e for e in range(6)]
    ei_line = next(ln for ln in ei_ax.get_lines() if ln.get_label() == "EI")
    assert list(ei_line.get_ydata()) == pytest.approx(expected)
    assert list(ei_line.get_xdata()) == [10.0 * e for e in range(6)]  # x defaults to "step"
    assert ei_line.get_marker() == "o"  # every measurement is visible
    assert {ln.get_label() for ln in loss_ax.get_lines()} >= {"train", "test"}
    assert ei_ax.get_xscale() == "symlog"
    fig.savefig(tmp_path / "ei.png")
    assert (tmp_path / "ei.png").stat().st_size > 1000


def overfitting_records() -> list[dict]:
    out = []
    for s in range(0, 2001, 50):
        test = 1.0 / (1 + s / 100) + 0.0004 * max(0, s - 600)  # minimum at step 600
        out.append({"step": s, "ei": 1.0 + (0.3 if s == 50 else 0.0) + 0.0001 * s,
                    "train_loss": 1.0 / (1 + s / 50), "test_loss": test,
                    "train_accuracy": min(1.0, 0.1 + s / 500), "test_accuracy": 0.8})
    return out


def test_ei_training_panels_minimum_zoom_and_phases():
    from foresight.demo import phases

    recs = overfitting_records()
    p = phases(recs)
    fig = fplot.ei_training(recs, phases=p, zoom=300, title="t")
    labels = [a.get_ylabel() for a in fig.axes]
    assert labels == ["accuracy", "accuracy", "loss", "loss", "EI (bits)", "EI (bits)"]
    best = min(recs, key=lambda r: r["test_loss"])["step"]
    assert best == p["test_loss_min"]["step"]
    for ax in fig.axes[0::2]:  # the whole-run column marks the test-loss minimum in every panel
        vlines = [ln for ln in ax.get_lines() if ln.get_label() == "test-loss minimum"]
        assert len(vlines) == 1 and list(vlines[0].get_xdata()) == [best, best]
    zoom_ei = fig.axes[5]
    assert max(next(ln for ln in zoom_ei.get_lines() if ln.get_label() == "EI").get_xdata()) <= 300
    texts = " ".join(t.get_text() for a in fig.axes for t in a.texts)
    assert "1 jump (step 50)" in texts and "2 decay (step 100)" in texts
    assert "3 EI climbs" in texts and "test-loss minimum" in texts
    legend = fig.axes[0].get_legend()
    assert legend is not None and legend.get_bbox_to_anchor() is not None  # above the panel
    assert {t.get_text() for t in legend.get_texts()} >= {"train", "test", "EI",
                                                          "test-loss minimum"}


def test_ei_training_into_given_axes_and_missing_column():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    assert fplot.ei_training(records(), ax=ax, losses=()) is fig
    fig, ax = plt.subplots()
    assert fplot.ei_training(records(), ax=ax, x="epoch") is fig
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "loss"
    with pytest.raises(ValueError, match="'ei'"):
        fplot.ei_training([{"epoch": 0, "loss": 1.0}])
    with pytest.raises(ValueError, match="zoom"):
        fplot.ei_training(records(), zoom=-1)


def test_dashboard_has_one_panel_per_metric_and_the_planes(tmp_path):
    fig = fplot.training_dashboard(records())
    titles = [a.get_title() for a in fig.axes if a.get_title() and a.get_visible()]
    assert titles == [
        "Effective information (weight graph)", "Determinism and degeneracy",
        "Gradient noise scale", "I(X;T) per layer", "I(T;Y) per layer",
        "Sensitivity per layer", "Causal degeneracy per layer", "lr",
        "Information plane", "Causal plane",
    ]
    ixt = next(a for a in fig.axes if a.get_title() == "I(X;T) per layer")
    assert sorted(line.get_label() for line in ixt.get_lines()) == ["fc1", "fc2"]
    fig.savefig(tmp_path / "dash.png")
    assert (tmp_path / "dash.png").stat().st_size > 1000


def test_dashboard_without_planes_and_errors():
    fig = fplot.training_dashboard(records(), planes=False, x="step", ncols=3)
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert "Information plane" not in titles
    with pytest.raises(ValueError, match="'epoch'"):
        fplot.training_dashboard([{"step": 0, "ei": 1.0}])


def test_plot_exports_are_lazy_and_complete():
    assert callable(fplot.ei_training) and callable(fplot.training_dashboard)
    with pytest.raises(AttributeError):
        fplot.no_such_plot  # noqa: B018


def test_progress_fallback_and_silent(capsys):
    import io

    out = io.StringIO()
    bar = SimpleBar(range(4), desc="x", file=out, min_interval=0)
    bar.set_postfix({"ei": 1.23456})
    assert list(bar) == [0, 1, 2, 3]
    assert out.getvalue().rstrip().endswith("x [##############################] 4/4 ei=1.235")
    silent = progress(range(3), enabled=False)
    silent.set_postfix({"a": 1})
    assert list(silent) == [0, 1, 2]
    assert capsys.readouterr().err == ""
