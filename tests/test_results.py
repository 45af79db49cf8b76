"""One result schema (foresight.results): to_records round trips, row lookup and iteration on
every result with rows, and the deprecated 0.2 spellings (dict rows, b_noise's float, _result)."""

from __future__ import annotations

import json
import math
import pickle
import warnings

import pytest
import torch
from torch import nn

import foresight.causal as fc
from foresight import ei as fei
from foresight import results
from foresight.demo import DemoConfig, DemoResult
from foresight.ei.graph import graph_ei
from foresight.gns import (
    BNoise,
    BranchedCriticalBatchSize,
    CriticalBatchSize,
    GradientNoiseScale,
    LayerNoiseScale,
    NoiseScale,
    b_noise,
    noise_scale,
)
from foresight.ib import InformationPlane, information_plane
from foresight.results import Record, Result, Rows, flatten, tidy, unflatten, wide

pytestmark = pytest.mark.filterwarnings("ignore:foresight.causal:RuntimeWarning",
                                        "ignore:information_plane:RuntimeWarning")

#: Written independently of the library: how each record field reads off its row or result.
CAUSAL_READ = {
    "causal_ei": lambda r: r.ei,
    "ei_parts": lambda r: r.ei_parts,
    "sensitivity": lambda r: r.sensitivity,
    "causal_degeneracy": lambda r: r.degeneracy,
    "causal_ei_converged": lambda r: "ei" not in r.unconverged,
    "ei_parts_converged": lambda r: "ei_parts" not in r.unconverged,
    "sensitivity_converged": lambda r: "sensitivity" not in r.unconverged,
}
SPECIAL = {"i_xt_limited": lambda r: r.limited_by is not None, **CAUSAL_READ}

#: The record fields each result type must give (the schema, pinned: a change is deliberate).
EXPECTED = {
    "ei": (("ei", "determinism", "degeneracy"),
           ("ei", "determinism", "degeneracy", "effectiveness")),
    "gns": (("b_simple", "trace_sigma", "grad_sq_norm", "b_simple_se", "b_simple_lower",
             "grad_sq_norm_se", "trace_sigma_se", "resolved"),) * 2,
    "ib": (("h_y",), ("i_xt", "i_ty", "h_t", "n_states", "i_xt_limited")),
    "causal": ((), tuple(CAUSAL_READ)),
}


def read(obj, field):
    return SPECIAL[field](obj) if field in SPECIAL else getattr(obj, field)


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2), nn.Sigmoid())


@pytest.fixture(scope="module")
def layered() -> dict[str, Rows]:
    """One real result of every kind with per-layer rows."""
    torch.manual_seed(1)
    net = tiny_net()
    x = torch.rand(64, 4)
    y = torch.randint(0, 2, (64,))
    t = torch.randn(64, 2)
    with torch.no_grad():
        out = {
            "ei": fei.report(net, x[:1]),
            "ib": information_plane(net, x, y, bins=8),
            "causal": fc.report(net, bins=8, samples=3000, seed=0),
        }
    out["gns"] = noise_scale(net, nn.functional.mse_loss, x, t)
    return out


@pytest.mark.parametrize("kind", ["ei", "gns", "ib", "causal"])
def test_to_records_round_trips_every_layered_result(layered, kind):
    result = layered[kind]
    records = result.to_records()
    model_fields, layer_fields = EXPECTED[kind]
    names = [row.name for row in result.layers]
    # which records: the whole model's fields, then every row's, in order
    expected_keys = [(None, f) for f in model_fields] + [
        (n, f) for n in names for f in layer_fields]
    assert [(r.layer, r.field) for r in records] == expected_keys
    assert {r.metric for r in records} == {kind}
    # each value is the attribute it stands for (read independently of the library)
    for r in records:
        source = result if r.layer is None else result.row(r.layer)
        expected = read(source, r.field)
        assert r.value == expected or (math.isnan(r.value) and math.isnan(expected))
        assert isinstance(r.value, (bool, int, float))
    # a row's own records are its part of the result's
    assert sum((row.to_records() for row in result), []) == records[len(model_fields):]
    # flat and back: one key per value, read back to the same records
    flat = flatten(records)
    assert len(flat) == len(records)
    assert [r._replace(metric=kind) for r in unflatten(flat)] == records
    assert list(flat) == [f if n is None else f"{f}/{n}" for n, f in expected_keys]
    # tidy(wide(...)) keeps the index
    stamped = [r._replace(step=7, epoch=2) for r in records]
    assert wide(stamped) == [{"step": 7, "epoch": 2, **flat}]
    assert [r._replace(metric=kind) for r in tidy(wide(stamped))] == stamped
    # to_dict is plain JSON with the same numbers
    data = json.loads(json.dumps(result.to_dict()))
    for r in records:
        if r.layer is not None and not isinstance(r.value, bool) and r.field in data["layers"][0]:
            row = data["layers"][names.index(r.layer)]
            assert row[r.field] == pytest.approx(r.value, nan_ok=True)


def test_to_records_of_the_results_without_rows():
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.2, -0.5], [0.3, -1.0, 0.4]]))
    value = fc.ei_parts(layer, bins=8)
    assert [(r.field, r.value) for r in value.to_records()] == [
        ("ei_parts", value.value), ("ei_parts_converged", value.converged)]
    deg = fc.degeneracy(layer, bins=8)
    assert [r.field for r in deg.to_records()] == ["causal_degeneracy"]  # no flag of its own
    both = fc.layer_measures(layer, bins=8, samples=2000, seed=0)
    recs = both.to_records()
    assert [r.field for r in recs] == list(CAUSAL_READ) and all(r.layer is None for r in recs)
    assert all(r.value == read(both, r.field) for r in recs)

    g = graph_ei(torch.eye(4))
    assert flatten(g.to_records())["ei"] == pytest.approx(2.0)
    assert {r.metric for r in g.to_records()} == {"graph_ei"}

    crit = CriticalBatchSize(b_crit=120.0, s_min=50.0, e_min=6000.0, interval=(90.0, 150.0),
                             confidence=0.9, residuals=[], runs=[], trials=[], b_simple=80.0,
                             b_simple_lower=60.0, b_simple_batch=math.nan, b_noise=math.nan,
                             target_loss=0.1)
    assert flatten(crit.to_records())["b_crit"] == 120.0
    branched = BranchedCriticalBatchSize(
        batch_size=8, lr=0.1, window=20, branches=[],
        checkpoints=[{"step": s, "examples": 8 * s, "loss": 1.0 / (s + 1), "reference_loss": 0.5,
                      "b_crit": 16.0 * (s + 1), "bound": "", "b_simple": 10.0,
                      "b_simple_se": 1.0, "b_simple_lower": 8.0} for s in (0, 10)])
    recs = branched.to_records()
    assert [r.step for r in recs if r.field == "b_crit"] == [0, 10]
    assert wide(recs)[1]["b_crit"] == 16.0 * 11

    demo = DemoResult(DemoConfig(), records=[{"step": 0, "epoch": 0, "ei": 1.0, "i_xt/fc1": 2.0,
                                              "note": "text"}], files=[], wall_s=1.0, metrics=[])
    assert [(r.metric, r.layer, r.field, r.step) for r in demo.to_records()] == [
        ("ei", None, "ei", 0), ("ib", "fc1", "i_xt", 0)]
    assert demo.to_dict()["config"]["steps"] == DemoConfig().steps


@pytest.mark.parametrize("kind", ["ei", "gns", "ib", "causal"])
def test_row_lookup_and_iteration_are_the_same_on_every_result(layered, kind):
    result = layered[kind]
    rows = result.layers
    assert list(result) == rows  # iteration over the rows (an InformationPlane raised KeyError)
    assert [row.name for row in result] == [row.name for row in rows]
    for row in rows:
        assert result.row(row.name) is row
        assert result[row.name] is row
        assert row.name in result
    assert "no such layer" not in result
    with pytest.raises(KeyError, match="no layer 'nope'; layers"):
        result.row("nope")
    with pytest.raises(KeyError, match=repr(rows[0].name)):
        result["nope"]
    with pytest.raises(TypeError, match="by layer name"):
        result[0]
    assert bool(result)  # rows do not make a result falsy


def test_layer_noise_scale_rows_behave_like_the_old_dicts_with_a_warning(layered):
    est = layered["gns"]
    row = est.layers[0]
    assert isinstance(row, LayerNoiseScale)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # attribute access is the new way: no warning
        assert row.b_simple == est.row(row.name).b_simple
    with pytest.warns(DeprecationWarning, match=r"row\['b_simple'\]"):
        assert row["b_simple"] == row.b_simple or math.isnan(row.b_simple)
    with pytest.warns(DeprecationWarning):
        assert row.get("trace_sigma") == row.trace_sigma
    with pytest.warns(DeprecationWarning):
        assert row.get("missing", 3) == 3
    with pytest.warns(DeprecationWarning):
        assert "grad_sq_norm" in row
    with pytest.warns(DeprecationWarning):
        assert dict(row) == row.to_dict()  # keys() and [] make a dict, as the old rows were
    with pytest.warns(DeprecationWarning):
        assert list(row.items()) == list(row.to_dict().items())
    with pytest.warns(DeprecationWarning), pytest.raises(KeyError):
        row["missing"]
    # rows given the 0.2 way (dicts) become rows
    old = NoiseScale.from_parts(2.0, 50.0, 32, layers=[dict(row.to_dict())])
    assert old.layers == [row]
    assert json.loads(json.dumps(est.to_dict()))["layers"][0]["name"] == row.name
    pd = pytest.importorskip("pandas")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a row is a dataclass to pandas, not a dict to iterate
        frame = pd.DataFrame(est.layers)
    assert list(frame.columns) == list(row.to_dict()) and list(frame["name"]) == est.to_dataframe()[
        "name"].tolist()
    # parameter groups named by the user (an optimizer's group index): found by that name
    grouped = NoiseScale.from_parts(2.0, 50.0, 32, layers=[{**row.to_dict(), "name": 1}])
    assert grouped.row(1) is grouped.layers[0] and 1 in grouped
    assert grouped.to_records()[-1].layer == "1"  # a record's layer is a str, as in its key


def test_tracker_estimates_have_rows_too():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with GradientNoiseScale(model, beta=0.5) as gns:
        for _ in range(3):
            x = torch.randn(16, 4)
            nn.functional.mse_loss(model(x), x.sum(1, keepdim=True)).backward()
            est = gns.step()
            model.zero_grad()
    assert [row.name for row in est] == ["0", "2"]
    assert all(isinstance(row, LayerNoiseScale) for row in est)
    total = sum(row.trace_sigma for row in est)
    assert total == pytest.approx(est.trace_sigma)


def test_b_noise_is_a_result_and_still_a_float():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.randn(64, 3) * torch.tensor([3.0, 1.0, 0.3])
    y = torch.randn(64, 1)
    r = b_noise(model, nn.functional.mse_loss, x, y)
    assert isinstance(r, BNoise) and isinstance(r, Result) and isinstance(r, float)
    assert float(r) == r.b_noise
    assert r.b_noise == pytest.approx(r.tr_h_sigma / r.g_h_g, rel=1e-12)
    assert (r.batch_size, r.probes) == (64, 64)
    # what 0.2 code did with the bare float
    assert (r > 0) == (r.b_noise > 0) and r * 2 == 2 * r.b_noise
    assert f"{r:.3f}" == f"{r.b_noise:.3f}" and str(r) == repr(r.b_noise)
    assert r == pytest.approx(r.b_noise) and math.isfinite(r)
    assert json.loads(json.dumps(r)) == r.b_noise
    back = pickle.loads(pickle.dumps(r))
    assert back.to_dict() == r.to_dict() and type(back) is BNoise
    assert [x.field for x in r.to_records()] == ["b_noise", "tr_h_sigma", "g_h_g"]
    gen = torch.Generator().manual_seed(0)
    assert b_noise(model, nn.functional.mse_loss, x, y, probes=5, generator=gen).probes == 5


def test_one_definition_of_the_causal_keys():
    from foresight.monitor import CausalEI
    from foresight.plot import causal as plot_causal

    assert fc.RECORD_KEYS is results.CAUSAL_RECORD_KEYS is plot_causal.MEASURE_KEYS
    assert fc.CONVERGED_KEYS is results.CAUSAL_CONVERGED_KEYS
    assert CausalEI.layer_fields == (*fc.RECORD_KEYS.values(), *fc.CONVERGED_KEYS.values())
    assert plot_causal.CONVERGED_KEYS["degeneracy"] == (fc.CONVERGED_KEYS["ei_parts"],
                                                        fc.CONVERGED_KEYS["sensitivity"])
    with pytest.raises(TypeError):
        fc.RECORD_KEYS["ei"] = "other"  # read-only


def test_record_keys_and_tidy_forms():
    assert Record.from_key("ei", 1.0).layer is None  # the whole model
    assert Record.from_key("ei/", 1.0).layer == ""  # a layer named "" (a model that is a layer)
    assert Record.from_key("i_xt/enc.0/x", 1.0).layer == "enc.0/x"  # after the first "/"
    assert [Record.from_key(k, 1.0).key for k in ("ei", "ei/", "b_simple/a.b")] == [
        "ei", "ei/", "b_simple/a.b"]
    assert results.metric_of("b_simple") == "gns" and results.metric_of("loss") == ""
    flat = [{"step": 3, "epoch": 1, "i_xt/1": 2.0, "i_ty/1": 0.5, "loss": 0.25, "tag": "x"}]
    per_layer = [{"epoch": 1, "layer": "1", "i_xt": 2.0, "i_ty": 0.5}]
    tidy_dicts = [r.to_dict() for r in tidy(flat)]
    assert [(r.layer, r.field) for r in tidy(flat)] == [("1", "i_xt"), ("1", "i_ty"),
                                                      (None, "loss")]
    assert tidy(tidy_dicts) == tidy(flat)
    assert [r._replace(step=3) for r in tidy(per_layer)] == tidy(flat)[:2]
    pd = pytest.importorskip("pandas")
    assert tidy(pd.DataFrame(tidy_dicts)) == tidy(flat)
    assert wide(pd.DataFrame(tidy_dicts)) == [{"step": 3, "epoch": 1, "i_xt/1": 2.0,
                                                "i_ty/1": 0.5, "loss": 0.25}]
    assert tidy(flat[0]) == tidy(flat)  # one flat record, as monitor.step() returns it
    assert tidy({"epoch": [0, 1], "ei": [1.0, 2.0]})[1] == Record("ei", None, "ei", 2.0, None, 1)
    with pytest.raises(TypeError, match="history"):
        tidy(3.0)


def test_the_private_base_is_a_re_export():
    from foresight import _result

    assert _result.Result is Result
    assert issubclass(InformationPlane, Result) and issubclass(fei.EIReport, Result)
