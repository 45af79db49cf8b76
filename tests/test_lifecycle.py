"""One tracker lifecycle: the Monitor and the standalone trackers drive every metric through
foresight.monitor.metrics.Metric (when it runs, what it needs, what it records)."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

import foresight.causal as fc
from foresight.ib import InformationPlaneTracker
from foresight.monitor import (
    EI,
    CausalEI,
    CSVSink,
    Function,
    GradientNoise,
    History,
    InformationPlane,
    Monitor,
)
from foresight.monitor.metrics import Context, Metric, collect, needs_of
from foresight.monitor.tracker import Tracker
from foresight.results import Record, tidy
from foresight.schedule import at, every, never
from tests.reference.model_state import assert_unchanged, snapshot

pytestmark = pytest.mark.filterwarnings("ignore:foresight.causal:RuntimeWarning",
                                        "ignore:information_plane:RuntimeWarning")


class Probe(Metric):
    """Counts every call of the lifecycle; records the step it was measured at."""

    name = "probe"
    needs = frozenset({"steps"})
    model_fields = ("seen",)

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls: list[tuple[str, int]] = []

    def attach(self, model, wrapper=None):
        self.calls.append(("attach", -1))

    def after_step(self, model, context):
        self.calls.append(("after_step", context.step))

    def compute(self, model, context):
        self.calls.append(("compute", context.step))
        return _Seen(context.step)

    def close(self):
        self.calls.append(("close", -1))


class _Seen:
    def __init__(self, step):
        self.step = step

    def to_records(self):
        return [Record("probe", None, "seen", float(self.step)),
                Record("probe", None, "dropped", 1.0)]  # not in model_fields: not kept


def test_the_monitor_drives_a_metric_through_its_lifecycle():
    probe = Probe()
    mon = Monitor(nn.Linear(2, 2), [probe], schedule=every(2), unit="step")
    for _ in range(4):
        mon.step()
    mon.close()
    assert probe.calls == [("attach", -1), ("after_step", 0), ("compute", 0),
                           ("after_step", 1), ("after_step", 2), ("compute", 2),
                           ("after_step", 3), ("close", -1)]
    assert [{k: r[k] for k in r if k != "epoch"} for r in mon.history] == [
        {"step": 0, "seen": 0.0}, {"step": 2, "seen": 2.0}]


def test_metrics_with_schedules_of_their_own_in_one_monitor():
    model = nn.Linear(3, 2)
    fast = Function(lambda m: 1.0, name="fast")
    slow = Function(lambda m: 2.0, name="slow", schedule=at(1, 3))
    epochly = Function(lambda m, c: float(c.epoch), name="epochly", unit="epoch")
    mon = Monitor(model, [fast, slow, epochly], schedule=every(1), unit="step")
    for s in range(4):
        mon.step()
        if s == 1:
            mon.epoch_end()
    keys = [sorted(k for k in r if k not in ("step", "epoch")) for r in mon.history]
    assert keys == [["fast"], ["fast", "slow"], ["epochly"], ["fast"], ["fast", "slow"]]
    assert mon.history[2]["epoch"] == 0 and mon.history[2]["step"] == 2
    # metrics that all have their own schedule: the Monitor writes only when one is due
    only = Monitor(model, [Function(lambda m: 1.0, name="x", schedule=at(2))], unit="step")
    assert [only.step() is not None for _ in range(4)] == [False, False, True, False]
    # measure() runs every metric whatever the schedules
    assert set(Monitor(model, [slow], schedule=never, unit="step").measure()) == {
        "step", "epoch", "slow"}


def test_what_a_metric_needs():
    x = torch.randn(4, 5)
    assert needs_of(EI()) == {"batch"} and needs_of(EI(input=x)) == frozenset()
    assert needs_of(GradientNoise()) == {"steps"}
    assert needs_of(GradientNoise(nn.functional.mse_loss, x, x)) == frozenset()
    assert needs_of(InformationPlane(x, torch.zeros(4, dtype=torch.long))) == frozenset()
    assert needs_of(CausalEI()) == frozenset()

    class Old:  # the 0.2 adapter protocol: an after_step method means every step
        name = "old"

        def measure(self, model, context):
            return {"old/a": 1.0}

        def after_step(self, model, context):
            pass

    assert needs_of(Old()) == {"steps"}
    model = nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))
    mon = Monitor(model, [EI(), Old()], unit="epoch")
    with pytest.raises(ValueError, match="needs an example input"):
        mon.epoch_end()
    mon.step(batch=(x, None))
    record = mon.epoch_end()  # the last step's batch: the shapes are found, then cached
    assert record["old/a"] == 1.0 and "ei" in record
    assert needs_of(mon.metrics[0]) == frozenset()
    assert "ei" in mon.epoch_end(batch=None)


def test_collect_gives_the_result_and_the_kept_records():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    x = torch.randn(2, 5)
    ctx = Context(step=0, epoch=0)
    result, rows = collect(EI(input=x, layers=True), model, ctx)
    assert [r.key for r in rows] == ["ei", "determinism", "degeneracy", "ei/0", "ei/2"]
    assert [(r.layer, r.field) for r in rows] == [
        (r.layer, r.field) for r in result.to_records()
        if r.layer is None or r.field == "ei"]
    assert EI(input=x, layers=True).measure(model, ctx) == {r.key: r.value for r in rows}
    _, plain = collect(EI(input=x), model, ctx)
    assert [r.key for r in plain] == ["ei", "determinism", "degeneracy"]
    _, fn_rows = collect(Function(lambda m: {"a": 1, "b": 2.5}, name="f"), model, ctx)
    assert [(r.key, r.value) for r in fn_rows] == [("f/a", 1.0), ("f/b", 2.5)]


def test_trackers_are_shells_with_one_history_type_and_one_schedule_name():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Linear(3, 2), nn.Sigmoid())
    x, y = torch.rand(64, 3), torch.randint(0, 2, (64,))
    ib = InformationPlaneTracker(net, x, y, schedule=at(0, 2), bins=8)
    causal = fc.CausalTracker(net, schedule=at(0, 2), bins=8, samples=500, seed=0)
    mon = Monitor(net, [InformationPlane(x, y, bins=8), CausalEI(bins=8, samples=500, seed=0)],
                  schedule=at(0, 2), unit="epoch")
    before = snapshot(net)
    for epoch in range(3):
        a = ib.update(epoch, loss=0.1 * epoch)
        b = causal.update(epoch, loss=0.1 * epoch)
        m = mon.epoch_end(loss=0.1 * epoch)
        assert (a is None) == (b is None) == (m is None) == (epoch == 1)
    assert_unchanged(net, before)
    for tracker in (ib, causal, mon):
        assert isinstance(tracker.history, History)
        assert [r["epoch"] for r in tracker.history] == [0, 2]
        assert [r["loss"] for r in tracker.history] == [0.0, pytest.approx(0.2)]
    # the trackers' records are the Monitor's, key for key and value for value
    for i in range(2):
        merged = {**ib.history[i], **causal.history[i]}
        assert merged == {k: v for k, v in mon.history[i].items() if k != "step"}
    assert ib.planes[2].row("1").i_xt == mon.history[1]["i_xt/1"]
    assert causal.reports[1][1].record() == {k: v for k, v in causal.history[1].items()
                                            if k not in ("epoch", "loss")}
    for tracker in (ib, causal):
        assert isinstance(tracker, Tracker) and callable(tracker.schedule)
        assert tracker.to_records() == tracker.history.to_records()


def test_tracker_base_and_its_errors():
    net = nn.Linear(2, 1)
    weight = Function(lambda m: float(m.weight.detach().sum()), name="w")
    t = Tracker(net, weight, every(3), key="step")
    t.update(0, note="text")
    t.update(1)
    t.measure(4)
    assert [r["step"] for r in t.history] == [0, 4] and t.history[0]["note"] == "text"
    assert all(r.step in (0, 4) for r in t.to_records())
    with pytest.raises(TypeError, match="nn.Module"):
        Tracker("net", Function(len, name="n"), every(1))
    with pytest.raises(TypeError, match="callable"):
        Tracker(net, Function(len, name="n"), 3)
    with pytest.raises(ValueError, match="key"):
        Tracker(net, Function(len, name="n"), every(1), key="")
    with pytest.raises(ValueError, match="unit"):
        Function(lambda m: 1.0, name="f", unit="batch")
    with pytest.raises(TypeError, match="callable"):
        EI(schedule=5)


def test_sinks_and_history_speak_records(tmp_path):
    history = History([{"step": 0, "epoch": 0, "ei": 1.5, "i_xt/1": 2.0,
                        "causal_ei_converged/1": True, "note": "x"}])
    recs = history.to_records()
    assert [(r.metric, r.layer, r.field, r.value) for r in recs] == [
        ("ei", None, "ei", 1.5), ("ib", "1", "i_xt", 2.0),
        ("causal", "1", "causal_ei_converged", True)]
    path = tmp_path / "tidy.csv"
    sink = CSVSink(path, layout="tidy")
    for r in history:
        sink.write(r)
    sink.close()
    rows = list(csv.DictReader(open(path)))
    assert list(rows[0]) == ["step", "epoch", "metric", "layer", "field", "value"]
    assert [(r["metric"], r["layer"], r["field"], r["value"]) for r in rows] == [
        ("ei", "", "ei", "1.5"), ("ib", "1", "i_xt", "2.0"),
        ("causal", "1", "causal_ei_converged", "True")]
    assert [r["value"] for r in rows] == [str(r.value) for r in recs]
    assert tidy(rows) == []  # strings are not values: a CSV read back needs its numbers parsed
    with pytest.raises(ValueError, match="tidy"):
        CSVSink(path, layout="nope")
