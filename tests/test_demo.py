"""``foresight demo``: the installed command writes the CSV, the JSON summary and the figures."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import subprocess
import sys

import pytest

from foresight import demo

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
        [str(SCRIPT), "demo", "--out", str(out), "--epochs", "2", "--seed", "1"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "ei" in done.stdout and "test_loss" in done.stdout  # the closing table
    assert "foresight demo" in done.stderr  # the progress bar
    rows = read_csv(out / "demo.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for key in ("ei", "determinism", "degeneracy", "train_loss", "test_loss"):
        values = [float(r[key]) for r in rows]
        assert all(v == v for v in values), key  # present and not NaN in every row
    assert all(float(r["ei"]) >= 0 for r in rows)
    for r in rows:  # EI = degeneracy - determinism (SCIENCE.md §1)
        ei, deg, det = (float(r[k]) for k in ("ei", "degeneracy", "determinism"))
        assert ei == pytest.approx(deg - det, abs=1e-9)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["epochs"] == 2 and summary["config"]["seed"] == 1
    assert summary["final"]["ei"] == pytest.approx(float(rows[-1]["ei"]))
    assert "ei" in summary["metrics"]
    pngs = [name for name in summary["files"] if name.endswith(".png")]
    assert {"ei.png", "dashboard.png"} <= set(pngs)
    for name in pngs:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_demo_is_reproducible_and_plugs_metrics_in(tmp_path):
    pytest.importorskip("sklearn")
    a = demo.run(tmp_path / "a", epochs=2, seed=3, show_progress=False, figures=False)
    b = demo.run(tmp_path / "b", epochs=2, seed=3, show_progress=False, figures=False)
    assert (tmp_path / "a" / "demo.csv").read_text() == (tmp_path / "b" / "demo.csv").read_text()
    assert a.records == b.records
    keys = set().union(*a.records)
    if "ib" in a.metrics:
        assert any(k.startswith("i_xt/") for k in keys)
    if "gns" in a.metrics:
        assert "b_simple" in keys
    if "causal" in a.metrics:
        assert any(k.startswith("ei_parts/") for k in keys)


def test_demo_without_hidden_network(tmp_path):
    pytest.importorskip("sklearn")
    result = demo.run(tmp_path, epochs=1, n_train=30, hidden=False, show_progress=False,
                      figures=False)
    assert not (tmp_path / "ei.png").exists()
    keys = set().union(*result.records)
    assert not any(k.startswith(("i_xt/", "hidden_")) for k in keys)
    assert "epoch 1" in result.summary_table()


def test_phases_finds_the_turning_points():
    records = [
        {"epoch": e, "ei": ei, "train_loss": 1.0 / (e + 1), "test_loss": tl}
        for e, ei, tl in [(0, 1.0, 2.0), (1, 1.5, 1.0), (2, 1.8, 0.6), (3, 1.4, 0.5),
                          (4, 1.3, 0.45), (5, 1.35, 0.47), (6, 1.5, 0.5), (7, 1.6, 0.55),
                          (8, 1.7, 0.6), (9, 1.75, 0.62)]
    ]
    p = demo.phases(records)
    assert p["ei_early_peak"] == {"epoch": 2, "ei": 1.8}
    assert p["ei_trough_after_peak"] == {"epoch": 4, "ei": 1.3}
    assert p["test_loss_min"] == {"epoch": 4, "test_loss": 0.45}
    assert p["ei_end"] == 1.75
