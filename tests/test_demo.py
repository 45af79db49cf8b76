"""``foresight demo``: the installed command trains with SGD and writes the CSV, JSON and figures;
the turning-point analysis behind ``summary.json`` (:func:`foresight.demo.phases`)."""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foresight import cli, demo

SCRIPT = pathlib.Path(sys.executable).with_name("foresight.exe" if os.name == "nt" else "foresight")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_csv(path: pathlib.Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_demo_command_writes_csv_json_and_png(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo out"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [str(SCRIPT), "demo", "--out", str(out), "--steps", "30", "--every", "10", "--seed", "1",
         "--n-train", "100", "--batch-size", "20", "--lr", "0.3"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "ei" in done.stdout and "test_loss" in done.stdout  # the closing table
    assert "foresight demo" in done.stderr  # the progress bar
    rows = [r for r in read_csv(out / "demo.csv") if r["ei"] != ""]
    schedule = demo.MeasureSchedule(10)
    assert [int(r["step"]) for r in rows] == [s for s in range(31) if schedule(s)]
    # 100 examples in batches of 20: 5 steps per epoch
    assert [int(r["epoch"]) for r in rows][-1] == 30 // 5 - 1
    for key in ("ei", "determinism", "degeneracy", "train_loss", "test_loss", "train_accuracy",
                "test_accuracy"):
        values = [float(r[key]) for r in rows]
        assert all(v == v for v in values), key  # present and not NaN in every measured row
    assert all(float(r["ei"]) >= 0 for r in rows)
    for r in rows:  # EI = degeneracy - determinism (SCIENCE.md §1)
        ei, deg, det = (float(r[k]) for k in ("ei", "degeneracy", "determinism"))
        assert ei == pytest.approx(deg - det, abs=1e-9)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    summary = json.loads((out / "summary.json").read_text())
    config = summary["config"]
    assert (config["steps"], config["seed"], config["n_train"], config["batch_size"],
            config["lr"], config["every"]) == (30, 1, 100, 20, 0.3, 10)
    assert summary["final"]["ei"] == pytest.approx(float(rows[-1]["ei"]))
    assert summary["measurements"] == len(rows)
    assert summary["phases"]["test_loss_min"]["test_loss"] == pytest.approx(
        min(float(r["test_loss"]) for r in rows))
    b = summary["final"].get("b_simple")
    assert b is None or b > 0  # never a negative batch size
    if b is None and "gns" in summary["metrics"]:
        assert "unresolved" in summary["final"]["b_simple_note"]
    assert "ei" in summary["metrics"]
    header = set(read_csv(out / "demo.csv")[0])
    if "ib" in summary["metrics"]:
        assert any(k.startswith("i_xt/") for k in header)
    if "causal" in summary["metrics"]:
        assert any(k.startswith("ei_parts/") for k in header)
    pngs = [name for name in summary["files"] if name.endswith(".png")]
    assert {"ei.png", "dashboard.png"} <= set(pngs)
    for name in pngs:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_demo_is_reproducible(tmp_path):
    pytest.importorskip("sklearn")
    kw = {"steps": 60, "every": 20, "seed": 3, "n_train": 50, "hidden": False,
          "show_progress": False, "figures": False}
    a = demo.run(tmp_path / "a", **kw)
    b = demo.run(tmp_path / "b", **kw)
    assert (tmp_path / "a" / "demo.csv").read_text() == (tmp_path / "b" / "demo.csv").read_text()
    assert a.records == b.records
    if "gns" in a.metrics:
        assert "b_simple" in set().union(*a.records)
    assert a.records[-1]["step"] == 60  # the last step is always measured


def test_demo_trains_with_plain_sgd(tmp_path):
    """The demo's single-layer run equals a plain nn.Linear + torch.optim.SGD loop."""
    pytest.importorskip("sklearn")
    import torch
    import torch.nn.functional as F

    from foresight import data

    steps, n, bs, lr, seed = 25, 40, 8, 0.2, 5
    result = demo.run(tmp_path, steps=steps, seed=seed, n_train=n, batch_size=bs, lr=lr,
                      every=5, hidden=False, show_progress=False, figures=False)
    split = data.digits(n_train=n, seed=seed)
    torch.manual_seed(seed)
    model = torch.nn.Linear(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    order, pos, expected = torch.randperm(n, generator=gen), 0, {}
    for step in range(steps + 1):
        if step % 5 == 0:
            with torch.no_grad():
                expected[step] = float(F.cross_entropy(model(split.x_test), split.y_test))
        if step == steps:
            break
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + bs]
        pos += bs
        opt.zero_grad()
        F.cross_entropy(model(split.x_train[idx]), split.y_train[idx]).backward()
        opt.step()
    got = {r["step"]: r["test_loss"] for r in result.records if r["step"] in expected}
    assert got == pytest.approx(expected, rel=1e-6)


def test_demo_without_hidden_network(tmp_path):
    pytest.importorskip("sklearn")
    result = demo.run(tmp_path, steps=10, every=5, n_train=30, batch_size=10, hidden=False,
                      show_progress=False, figures=False)
    assert not (tmp_path / "ei.png").exists()
    keys = set().union(*result.records)
    assert not any(k.startswith(("i_xt/", "hidden_")) for k in keys)
    assert "step 10" in result.summary_table()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"steps": 0}, "steps"), ({"batch_size": 50, "n_train": 40}, "batch_size"),
     ({"lr": 0.0}, "lr"), ({"lr": float("nan")}, "lr"), ({"every": 0}, "every")],
)
def test_demo_run_rejects_bad_settings(tmp_path, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        demo.run(tmp_path, show_progress=False, figures=False, **kwargs)


@pytest.mark.parametrize(
    ("args", "needle"),
    [(("--epochs", "300"), "--epochs was replaced by --steps"),
     (("--steps", "0"), "--steps"),
     (("--batch-size", "200", "--n-train", "100"), "--batch-size"),
     (("--lr", "0"), "--lr"),
     (("--lr", "nan"), "--lr"),
     (("--n-train", "5"), "--n-train"),
     (("--every", "0"), "--every")],
)
def test_demo_command_line_errors_are_one_line(capsys, tmp_path, args, needle):
    code = cli.main(["demo", "--out", str(tmp_path / "d"), *args])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USER_ERROR
    assert len(err.strip().splitlines()) == 1 and needle in err


def test_summary_never_reports_a_negative_noise_scale(tmp_path):
    records = [{"step": s, "ei": 1.0 + s / 100, "train_loss": 1.0 / (s + 1),
                "test_loss": 1.0, "b_simple": 1.0 / (1.0 - s / 5.5), "grad_sq_norm": 1.0 - s / 5.5,
                "trace_sigma": 1.0} for s in range(10)]  # |G|^2 estimate < 0 from step 6
    result = demo.DemoResult(config=demo.DemoConfig(), records=records, files=[], wall_s=1.0,
                             metrics=["ei", "gns"])
    demo._write_summary(str(tmp_path), result)
    final = json.loads((tmp_path / "summary.json").read_text())["final"]
    assert final["b_simple"] is None and "|G|^2" in final["b_simple_note"]
    records[-1].update(b_simple=float("nan"), grad_sq_norm=float("nan"))
    demo._write_summary(str(tmp_path), result)
    final = json.loads((tmp_path / "summary.json").read_text())["final"]
    assert final["b_simple"] is None and "unresolved" in final["b_simple_note"]
    records[-1].update(b_simple=12.5, grad_sq_norm=0.1)
    demo._write_summary(str(tmp_path), result)
    final = json.loads((tmp_path / "summary.json").read_text())["final"]
    assert final["b_simple"] == 12.5 and "b_simple_note" not in final
    table = result.summary_table()
    assert "3 of 10 estimates unresolved" in table  # steps 6-8 are counted ...
    row = next(line for line in table.splitlines() if line.startswith("b_simple"))
    assert "-" not in row  # ... and not shown


def test_measure_schedule():
    sched = demo.MeasureSchedule(10)
    assert [s for s in range(35) if sched(s)] == [0, 1, 2, 3, 4, 5, 6, 8, 10, 20, 30]
    with pytest.raises(ValueError, match="every"):
        demo.MeasureSchedule(0)


# -- the analysis ----------------------------------------------------------------------------------


def test_phases_finds_the_turning_points():
    records = [
        {"step": 10 * e, "ei": ei, "train_loss": 1.0 / (e + 1), "test_loss": tl}
        for e, ei, tl in [(0, 1.0, 2.0), (1, 1.5, 1.0), (2, 1.8, 0.6), (3, 1.4, 0.5),
                          (4, 1.3, 0.45), (5, 1.35, 0.47), (6, 1.5, 0.5), (7, 1.6, 0.55),
                          (8, 1.7, 0.6), (9, 1.75, 0.62)]
    ]
    p = demo.phases(records)
    assert p["delta"] == pytest.approx(0.05 * 0.8)
    assert p["ei_first_max"] == {"step": 20, "ei": 1.8, "confirmed_step": 30}
    assert p["ei_first_min"] == {"step": 40, "ei": 1.3, "confirmed_step": 50}
    assert p["test_loss_min"] == {"step": 40, "test_loss": 0.45}
    assert p["ei_end"] == 1.75 and p["overfits"] and p["phase3"]
    after = p["after_min"]
    assert after["points"] == 6 and after["ei_change"] == pytest.approx(0.45)
    assert after["ei_spearman"] == pytest.approx(1.0)
    assert not p["ei_min_precedes_test_min"] and p["lead"] == 0


def test_phases_of_a_run_that_does_not_overfit():
    records = [{"step": s, "ei": 1.0 + math.sin(s / 3), "test_loss": 1.0 / (s + 1)}
               for s in range(30)]
    p = demo.phases(records)
    assert p["test_loss_min"]["step"] == 29
    assert not p["overfits"] and not p["phase3"]
    assert p["after_min"]["points"] == 1
    assert demo.phases(records[:2]) == {} and demo.phases([{"step": 0}]) == {}


def test_phases_lead_when_ei_turns_before_the_test_loss():
    steps = list(range(0, 1001, 10))
    ei = [1.0 + 0.5 * min(s, 50) / 50 - 0.3 * min(max(s - 50, 0), 100) / 100
          + 0.2 * max(s - 150, 0) / 850 for s in steps]  # jump to 50, decay to 150, climb
    test = [1.0 / (1 + s / 20) + 0.0002 * max(0, s - 400) for s in steps]
    p = demo.phases([{"step": s, "ei": e, "test_loss": t} for s, e, t in zip(steps, ei, test)])
    best = steps[min(range(len(test)), key=test.__getitem__)]
    assert p["ei_first_max"]["step"] == 50 and p["ei_first_min"]["step"] == 150
    assert p["test_loss_min"]["step"] == best
    assert p["ei_min_precedes_test_min"] and p["lead"] == best - 150
    assert p["phase3"] and p["after_min"]["ei_slope_per_10k"] == pytest.approx(0.2 / 850 * 1e4)


def brute_force_ranks(values):
    """Average 1-based ranks by counting (independent of the sort-based implementation)."""
    return [sum(1 for w in values if w < v) + (sum(1 for w in values if w == v) + 1) / 2
            for v in values]


@pytest.mark.parametrize("seed", range(20))
def test_spearman_against_scipy_and_brute_force(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(seed)
    n = rng.randint(3, 40)
    a = [rng.choice([rng.random(), float(rng.randint(0, 4))]) for _ in range(n)]  # with ties
    b = [rng.gauss(0, 1) + (0.5 * v if seed % 2 else 0) for v in a]
    assert demo._ranks(a) == pytest.approx(brute_force_ranks(a))
    expected = stats.spearmanr(a, b).statistic
    got = demo.spearman(a, b)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-12)
    assert math.isnan(demo.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="lengths"):
        demo.spearman([1.0], [1.0, 2.0])


@pytest.mark.parametrize("seed", range(10))
def test_slope_against_numpy_polyfit(seed):
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 100, size=rng.integers(2, 50))
    y = 3.0 * x + rng.normal(size=len(x))
    assert demo.slope(list(x), list(y)) == pytest.approx(np.polyfit(x, y, 1)[0], rel=1e-9)
    assert math.isnan(demo.slope([1.0, 1.0], [0.0, 1.0])) and math.isnan(demo.slope([], []))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=0, max_size=40), st.floats(0.01, 5))
def test_turning_points_properties(values, delta):
    """Against the definition: alternation, confirmation, extremality and completeness."""
    turns = demo.turning_points(values, delta)
    kinds = [k for k, _, _ in turns]
    assert all(a != b for a, b in zip(kinds, kinds[1:]))  # maxima and minima alternate
    previous = 0
    for kind, i, j in turns:
        assert 0 < i < j < len(values)
        sign = 1 if kind == "max" else -1
        assert sign * (values[i] - values[j]) > delta  # confirmed by a move larger than delta
        # ... and not earlier: every value between the extreme and the confirmation is within delta
        assert all(sign * (values[i] - values[k]) <= delta for k in range(i + 1, j))
        # the extreme of its stretch
        assert all(sign * (values[i] - values[k]) >= 0 for k in range(previous, j + 1))
        previous = i
    # completeness: a rise of more than delta followed by a fall of more than delta is a maximum
    # (and vice versa), unless the first leg starts at index 0 and is the start of the series
    n = len(values)
    for a in range(n):
        for b in range(a + 1, n):
            for c in range(b + 1, n):
                up = values[b] - values[a] > delta and values[b] - values[c] > delta
                down = values[a] - values[b] > delta and values[c] - values[b] > delta
                if up or down:
                    assert turns, (a, b, c)
