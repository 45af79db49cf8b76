"""The quick version of examples/critical_batch_size.py and the claims docs/critical.rst makes
from it (slow: run by `make repro`)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


@pytest.mark.slow
def test_critical_batch_size_reproduction():
    pytest.importorskip("sklearn")
    tables = _load("critical_batch_size").main(["--quick", "--no-figure"])
    for key in ("digits", "chars"):
        t = tables[key]
        assert math.isfinite(t["b_crit"]), (key, t)
        assert t["b_crit_low"] <= t["b_crit"] <= t["b_crit_high"], (key, t)
        assert t["warmup_reached"], (key, t)
        assert math.isfinite(t["b_simple_batch"]) and math.isfinite(t["b_noise"]), (key, t)
        assert t["best_fixed_steps"] > 0 and t["warmup_examples"] > 0
    digits = tables["digits"]
    assert 4 <= digits["b_crit"] <= 64  # measured 15.5 (quick), 14.1 (full)
    # the tracker's B_simple lands near B_crit; the fresh batch at the crossing is far above it
    tracker = digits["b_simple_tracker"]
    if not math.isfinite(tracker):
        tracker = digits["b_simple_tracker_lower"]
    assert 0.4 < tracker / digits["b_crit"] < 2.5  # measured 0.71 (quick), 0.92 (full)
    assert digits["b_simple_batch"] > 2.5 * digits["b_crit"]  # measured 5.6x (quick), 6.8x
    assert digits["branched"] and all(b > 0 for _, b, _ in digits["branched"] if b == b)
