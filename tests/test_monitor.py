"""foresight.monitor: schedules, sinks read back, model untouched, bit-identical training."""

from __future__ import annotations

import csv
import importlib
import importlib.util
import inspect
import sys
import types

import pytest
import torch
from torch import nn

import foresight
from foresight.monitor import (
    EI,
    CausalEI,
    CSVSink,
    Function,
    GradientNoise,
    History,
    InformationPlane,
    Monitor,
    TensorBoardSink,
    WandbSink,
)
from foresight.schedule import at, every, log_spaced
from tests.reference.model_state import assert_unchanged, snapshot


class Counter:
    """A metric that counts how often it is measured."""

    name = "count"

    def __init__(self) -> None:
        self.calls = 0

    def measure(self, model, context):
        self.calls += 1
        return {"count": float(self.calls)}


class Meddler:
    """A metric that does everything a careless metric could do to the model and the RNG."""

    name = "meddler"

    def measure(self, model, context):
        model.eval()
        model.register_forward_hook(lambda *a: None)
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = torch.full_like(p, 7.0)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.train()
                m(torch.randn(5, m.num_features))  # moves the running statistics
        noise = torch.rand(1000)  # consumes the global RNG
        return {"noise": float(noise.mean())}


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(8, 3))


def train(model: nn.Module, steps: int, monitor: Monitor | None = None) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = torch.randn(40, 6)
    labels = torch.randint(0, 3, (40,))
    for s in range(steps):
        idx = torch.randint(0, 40, (8,))  # data order from the global RNG
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(data[idx]), labels[idx])
        loss.backward()
        opt.step()
        if monitor is not None:
            monitor.step(batch=(data[idx], labels[idx]), loss=loss)
            if s % 4 == 3:
                monitor.epoch_end()


# -- schedules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "n", "expected"),
    [
        (every(3), 10, [0, 3, 6, 9]),
        (every(4, start=2), 12, [2, 6, 10]),
        (log_spaced(dense_until=2, per_decade=1), 150, [0, 1, 2, 10, 100]),
        (at(1, 5), 8, [1, 5]),
    ],
)
@pytest.mark.parametrize("unit", ["step", "epoch"])
def test_schedule_fires_exactly_when_due(schedule, n, expected, unit):
    counter = Counter()
    mon = Monitor(nn.Linear(2, 2), [counter], schedule=schedule, unit=unit)
    for _ in range(n):
        if unit == "step":
            mon.step()
        else:
            mon.epoch_end()
    key = "step" if unit == "step" else "epoch"
    assert [r[key] for r in mon.history] == expected
    assert counter.calls == len(expected)  # nothing measured between scheduled calls


def test_steps_do_not_measure_in_epoch_mode_and_vice_versa():
    counter = Counter()
    mon = Monitor(nn.Linear(2, 2), [counter], schedule=every(1), unit="epoch")
    for _ in range(7):
        assert mon.step() is None
    assert counter.calls == 0
    record = mon.epoch_end(val=2)
    assert record["step"] == 7 and record["epoch"] == 0 and record["val"] == 2
    mon2 = Monitor(nn.Linear(2, 2), [Counter()], schedule=every(1), unit="step")
    assert mon2.epoch_end() is None and mon2.history == []


def test_explicit_indices_and_measure_now():
    mon = Monitor(nn.Linear(2, 2), [Counter()], schedule=every(5), unit="epoch")
    mon.measure(note="init")
    assert mon.history[0]["epoch"] == 0 and mon.history[0]["note"] == "init"
    assert mon.epoch_end(epoch=10) is not None
    assert mon.epoch_end() is None  # epoch 11
    assert mon.next_epoch == 12


def test_values_are_read_only_when_measuring():
    class Exploding:
        def item(self):  # pragma: no cover - must not be called
            raise AssertionError("read between measurements")

        def __float__(self):
            raise AssertionError("read between measurements")

    mon = Monitor(nn.Linear(2, 2), [Counter()], schedule=every(2), unit="step")
    mon.step(loss=torch.tensor(1.5))
    mon.step(loss=Exploding())
    assert mon.history[0]["loss"] == 1.5


# -- training is unchanged -----------------------------------------------------------------------


def test_training_with_monitor_is_bit_identical():
    torch.manual_seed(1)
    plain = make_model()
    torch.manual_seed(1)
    watched = make_model()
    torch.manual_seed(2)
    train(plain, 12)
    torch.manual_seed(2)
    mon = Monitor(watched, [Meddler(), Counter(), Function(lambda m: 1.0, name="one")],
                  schedule=every(1), unit="step")
    train(watched, 12, mon)
    mon.close()
    assert len(mon.history) == 12
    for (name, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), f"{name} differs after training with a Monitor"


def test_measurement_leaves_model_untouched():
    model = make_model()
    model(torch.randn(4, 6)).sum().backward()
    before = snapshot(model)
    mon = Monitor(model, [Meddler()], schedule=every(1), unit="step")
    mon.step()
    assert_unchanged(model, before)


def test_metric_error_propagates_and_model_is_restored():
    def broken(model):
        model.eval()
        raise RuntimeError("boom")

    model = make_model()
    before = snapshot(model)
    mon = Monitor(model, [broken], unit="step")
    with pytest.raises(RuntimeError, match="boom"):
        mon.step()
    assert_unchanged(model, before)


# -- user metrics ----------------------------------------------------------------------------------


def test_user_callables_number_dict_and_context():
    def norm(model):
        return model.weight.norm()

    def stats(model, context):
        return {"step_seen": context.step, "mean": model.weight.mean()}

    model = nn.Linear(3, 2)
    mon = Monitor(model, [norm, stats], unit="step")
    record = mon.step()
    assert record["norm"] == pytest.approx(float(model.weight.detach().norm()))
    assert record["stats/step_seen"] == 0.0
    assert record["stats/mean"] == pytest.approx(float(model.weight.detach().mean()))


def test_bad_arguments_raise_clear_errors():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="unit"):
        Monitor(model, [], unit="batch")
    with pytest.raises(TypeError, match="nn.Module"):
        Monitor("model", [])
    with pytest.raises(ValueError, match="unknown metric"):
        Monitor(model, ["nope"])
    with pytest.raises(ValueError, match="InformationPlane"):
        Monitor(model, ["ib"])
    with pytest.raises(ValueError, match="needs a name"):
        Monitor(model, [lambda m: 1.0])
    with pytest.raises(ValueError, match="unique"):
        Monitor(model, [Counter(), Counter()])
    with pytest.raises(TypeError, match="write"):
        Monitor(model, [], sinks=[object()])
    with pytest.raises(TypeError, match="not a number"):
        Monitor(model, [Function(lambda m: "x", name="x")], unit="step").step()
    with pytest.raises(ValueError, match="scalar"):
        Monitor(model, [], unit="step").step(loss=torch.ones(3))
    mon = Monitor(model, [])
    mon.close()
    with pytest.raises(RuntimeError, match="closed"):
        mon.step()


def test_foresight_monitor_is_exported():
    assert foresight.Monitor is Monitor


# -- sinks -----------------------------------------------------------------------------------------


def test_csv_sink_round_trip_with_growing_columns(tmp_path):
    path = tmp_path / "sub" / "log.csv"
    sink = CSVSink(path)
    mon = Monitor(nn.Linear(2, 2), [Counter()], unit="step", sinks=[sink])
    mon.step(loss=0.5)
    mon.step(loss=0.25, acc=0.75)  # a new column appears
    mon.step(loss=torch.tensor(0.125))
    mon.close()
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "epoch", "loss", "count", "acc"]
    assert [float(r["loss"]) for r in rows] == [0.5, 0.25, 0.125]
    assert [r["acc"] for r in rows] == ["", "0.75", ""]
    assert [int(r["step"]) for r in rows] == [0, 1, 2]


def test_csv_sink_long_layout_round_trip(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "long.csv"
    wide_path = tmp_path / "wide.csv"

    def per_layer(model):
        return {"fc/0": 1.0, "fc/1": 2.0}

    mon = Monitor(nn.Linear(2, 2), [Counter(), per_layer], unit="epoch",
                  sinks=[CSVSink(path, layout="long"), CSVSink(wide_path)])
    for e in range(3):
        mon.step()
        mon.step()
        mon.epoch_end(train_loss=1.0 / (e + 1), tag="text is left out")
    mon.close()
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "epoch", "metric", "layer", "value"]
    assert len(rows) == 3 * 4  # train_loss, count, per_layer/fc/0, per_layer/fc/1 per epoch
    got = {(int(r["step"]), int(r["epoch"]), r["metric"], r["layer"]): float(r["value"])
           for r in rows}
    assert got[(2, 0, "train_loss", "")] == 1.0
    assert got[(6, 2, "count", "")] == 3.0
    assert got[(4, 1, "per_layer", "fc/0")] == 1.0 and got[(4, 1, "per_layer", "fc/1")] == 2.0
    # the long file holds exactly the numbers of the wide one
    wide = pd.read_csv(wide_path)
    long = pd.read_csv(path, keep_default_na=False)
    for _, r in long.iterrows():
        key = r["metric"] + ("/" + r["layer"] if r["layer"] else "")
        match = wide[(wide["step"] == r["step"]) & (wide["epoch"] == r["epoch"])]
        assert float(match[key].iloc[0]) == pytest.approx(float(r["value"]))
    with pytest.raises(ValueError, match="layout"):
        CSVSink(tmp_path / "x.csv", layout="tall")


def test_tensorboard_sink_round_trip(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = TensorBoardSink(tmp_path / "e", step_key="epoch", prefix="fs/")
    mon = Monitor(nn.Linear(2, 2), [Counter()], unit="epoch", sinks=[sink])
    for e in range(3):
        mon.step()
        mon.step()
        mon.epoch_end(loss=1.0 / (e + 1))
    mon.close()
    acc = EventAccumulator(str(tmp_path / "e"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"fs/loss", "fs/count", "fs/step"}
    events = acc.Scalars("fs/loss")
    assert [e.step for e in events] == [0, 1, 2]
    assert [e.value for e in events] == pytest.approx([1.0, 0.5, 1 / 3])
    assert [e.value for e in acc.Scalars("fs/count")] == [1.0, 2.0, 3.0]
    assert [(e.step, e.value) for e in acc.Scalars("fs/step")] == [(0, 2), (1, 4), (2, 6)]


def test_tensorboard_sink_default_prefix_and_epoch_against_step(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def per_layer(model):
        return {"a": 1.0, "b": 2.0}

    mon = Monitor(nn.Linear(2, 2), [per_layer], schedule=every(2), unit="step",
                  sinks=[TensorBoardSink(tmp_path)])
    for s in range(5):
        if s == 3:
            mon.epoch_end()
        mon.step()
    mon.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"foresight/per_layer/a", "foresight/per_layer/b",
                                         "foresight/epoch"}
    assert [(e.step, e.value) for e in acc.Scalars("foresight/epoch")] == [(0, 0), (2, 0),
                                                                            (4, 1)]
    assert [e.step for e in acc.Scalars("foresight/per_layer/b")] == [0, 2, 4]


def _fake_wandb(monkeypatch, logged):
    class Run:
        def log(self, data, step=None):
            logged.append((data, step))

    fake = types.ModuleType("wandb")
    fake.run = Run()
    fake.init = lambda **kw: pytest.fail("a run exists; init must not be called")
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


def test_wandb_sink_logs_numbers_with_step_and_epoch(monkeypatch):
    logged = []
    _fake_wandb(monkeypatch, logged)
    mon = Monitor(nn.Linear(2, 2), [Counter()], unit="step", sinks=[WandbSink()])
    mon.step(loss=0.5, tag="warmup")
    mon.step(step=5, loss=0.25)
    assert logged == [
        ({"foresight/step": 0, "foresight/epoch": 0, "foresight/loss": 0.5,
          "foresight/count": 1.0}, None),
        ({"foresight/step": 5, "foresight/epoch": 0, "foresight/loss": 0.25,
          "foresight/count": 2.0}, None),
    ]
    logged.clear()
    mon = Monitor(nn.Linear(2, 2), [Counter()], unit="epoch",
                  sinks=[WandbSink(step_key="epoch", prefix="")])
    mon.epoch_end()
    mon.epoch_end()
    assert logged == [({"step": 0, "epoch": 0, "count": 1.0}, 0),
                      ({"step": 0, "epoch": 1, "count": 2.0}, 1)]
    with pytest.raises(ValueError, match="step_key"):
        WandbSink(step_key="batch")
    with pytest.raises(TypeError, match="prefix"):
        WandbSink(prefix=None)


def test_one_prefix_everywhere():
    from foresight.monitor import sinks

    assert sinks.DEFAULT_PREFIX == "foresight/"
    for cls in (TensorBoardSink, WandbSink):
        assert inspect.signature(cls).parameters["prefix"].default == sinks.DEFAULT_PREFIX
    if importlib.util.find_spec("lightning") is not None:
        from foresight.integrations.lightning import ForesightCallback

        param = inspect.signature(ForesightCallback).parameters["prefix"]
        assert param.default == sinks.DEFAULT_PREFIX


def test_history_to_dataframe_and_column():
    pytest.importorskip("pandas")
    history = History()
    history.write({"step": 0, "a": 1.0})
    history.write({"step": 1, "b": 2.0})
    df = history.to_dataframe()
    assert list(df.columns) == ["step", "a", "b"]
    assert df["b"].isna().tolist() == [True, False]
    assert history.column("b")[1] == 2.0


# -- library metric adapters (each runs when its module exists) ----------------------------------


def _has(module: str, *names: str) -> bool:
    """Whether ``module`` imports and has ``names`` (the metric modules land independently)."""
    try:
        mod = importlib.import_module(module)
    except Exception:
        return False
    return all(hasattr(mod, n) for n in names)


HAS_EI = _has("foresight.ei", "ei", "determinism", "degeneracy", "report", "get_shapes", "lin_norm")
HAS_GNS = _has("foresight.gns", "GradientNoiseScale", "noise_scale")
HAS_IB = _has("foresight.ib", "information_plane")
HAS_CAUSAL = _has("foresight.causal", "report")


@pytest.mark.skipif(not HAS_EI, reason="foresight.ei not available")
def test_ei_adapter_equals_foresight_ei():
    ei_module = importlib.import_module("foresight.ei")

    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    x = torch.randn(2, 5)
    mon = Monitor(model, [EI(layers=True)], unit="step")
    record = mon.step(batch=(x, None))
    assert record["ei"] == pytest.approx(ei_module.ei(model, x), rel=1e-9, abs=1e-12)
    assert record["determinism"] == pytest.approx(ei_module.determinism(model, x), rel=1e-9)
    assert record["degeneracy"] == pytest.approx(ei_module.degeneracy(model, x), rel=1e-9)
    assert {k for k in record if k.startswith("ei/")} == {"ei/0", "ei/2"}


@pytest.mark.skipif(not HAS_EI, reason="foresight.ei not available")
def test_ei_adapter_without_input_says_what_to_pass():

    mon = Monitor(nn.Linear(3, 2), [EI()], unit="step")
    with pytest.raises(ValueError, match="input"):
        mon.step()


@pytest.mark.skipif(not HAS_GNS, reason="foresight.gns not available")
def test_gns_probe_adapter_equals_noise_scale():
    noise_scale = importlib.import_module("foresight.gns").noise_scale

    model = nn.Linear(4, 3)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    loss_fn = nn.CrossEntropyLoss()
    mon = Monitor(model, [GradientNoise(loss_fn, x, y)], unit="step")
    record = mon.step()
    expected = noise_scale(model, loss_fn, x, y)
    assert record["b_simple"] == pytest.approx(float(expected.b_simple), rel=1e-6, nan_ok=True)
    assert record["grad_sq_norm"] == pytest.approx(float(expected.grad_sq_norm), rel=1e-6)


@pytest.mark.skipif(not HAS_GNS, reason="foresight.gns not available")
def test_gns_tracking_adapter_records_and_keeps_training_identical():

    def run(with_monitor: bool):
        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon = Monitor(model, [GradientNoise(per_layer=True)], schedule=every(5), unit="step") \
            if with_monitor else None
        for _ in range(20):
            x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            if mon is not None:
                mon.step()
            opt.step()
        if mon is not None:
            mon.close()
        return model, mon

    plain, _ = run(False)
    watched, mon = run(True)
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)
    assert [r["step"] for r in mon.history] == [0, 5, 10, 15]
    assert all("b_simple" in r for r in mon.history[1:])
    assert {k for k in mon.history[-1] if k.startswith("b_simple/")} == {"b_simple/0",
                                                                         "b_simple/2"}
    assert all(len(m._forward_hooks) + len(m._backward_hooks) == 0 for m in watched.modules())


@pytest.mark.skipif(not HAS_IB, reason="foresight.ib not available")
def test_information_plane_adapter_records_each_layer():
    information_plane = importlib.import_module("foresight.ib").information_plane

    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    record = Monitor(model, [InformationPlane(x, y)], unit="step").step()
    expected = information_plane(model, x, y)
    rows = expected.layers if hasattr(expected, "layers") else expected
    for row in rows:
        assert record[f"i_xt/{row.name}"] == pytest.approx(float(row.i_xt))
        assert record[f"i_ty/{row.name}"] == pytest.approx(float(row.i_ty))


@pytest.mark.skipif(not HAS_CAUSAL, reason="foresight.causal not available")
def test_causal_adapter_is_reproducible_and_leaves_rng_alone():

    model = nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Linear(3, 2), nn.Sigmoid())
    mon = Monitor(model, [CausalEI(samples=2000, seed=0)], unit="step")
    torch.manual_seed(5)
    first = mon.step()
    after = torch.rand(1)
    torch.manual_seed(5)
    torch.rand(0)
    assert torch.equal(after, torch.rand(1))
    second = mon.step()
    keys = [k for k in first if k.startswith(("causal_ei/", "ei_parts/", "sensitivity/"))]
    assert keys
    assert all(first[k] == second[k] for k in keys)


@pytest.mark.skipif(not HAS_EI, reason="foresight.ei not available")
def test_nothing_attached_between_measurements():
    model = make_model()
    before = snapshot(model)
    mon = Monitor(model, [EI(input=torch.randn(2, 6)), Counter()], schedule=every(10), unit="step")
    assert_unchanged(model, before)  # no hooks or state added at construction
    for _ in range(3):
        mon.step(loss=torch.tensor(1.0))
        assert_unchanged(model, before)
    assert len(mon.history) == 1


def test_epoch_end_sees_the_last_step_batch():
    seen = []

    def probe(model, context):
        seen.append(context.batch)
        return 0.0

    mon = Monitor(nn.Linear(2, 2), [probe], unit="epoch")
    mon.step(batch="b1")
    mon.step(batch="b2")
    mon.step()
    mon.epoch_end()
    mon.epoch_end(batch="explicit")
    assert seen == ["b2", "explicit"]
