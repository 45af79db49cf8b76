"""Slow: the paper's Iris claim -- EI_parts of the first layer rises as the loss drops."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "causal_iris.py"


@pytest.mark.slow
def test_first_layer_ei_parts_rises_as_loss_drops() -> None:
    spec = importlib.util.spec_from_file_location("causal_iris", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    history = module.run(epochs=4000, samples=100_000, seed=0, per_decade=4)
    first, last = history[0], history[-1]
    assert last["train_loss"] < 0.5 * first["train_loss"]  # it learned
    assert last["test_accuracy"] >= 0.9
    ei = [r["ei_parts/0"] for r in history]
    assert max(ei) > ei[0] + 1.0  # EI_parts of the first layer rose by over a bit ...
    best = max(range(len(ei)), key=ei.__getitem__)
    # ... while the loss fell
    assert history[best]["train_loss"] < 0.8 * first["train_loss"]
