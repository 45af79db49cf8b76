"""Quick versions of the paper reproductions in examples/ and their qualitative claims (slow)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HIDDEN = ["1", "3", "5", "7", "9"]


def _load(name: str):
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it is being made
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


@pytest.mark.slow
def test_shwartz_ziv_tishby_tanh_fits_then_compresses():
    table = _load("ib_shwartz_ziv_tishby").main(["--quick", "--no-figure"])
    last_hidden = table["9"]
    # fitting: the deep layers gain information about the label ...
    assert table["11"]["i_ty_last"] > table["11"]["i_ty_first"] + 0.5
    assert last_hidden["i_ty_last"] > 0.8
    # ... then the last hidden layer loses information about the input: compression
    assert last_hidden["compression"] >= 1.0
    assert last_hidden["peak_epoch"] < 150  # the peak comes early, compression is the long phase


@pytest.mark.slow
def test_saxe_relu_does_not_compress():
    tables = _load("ib_saxe").main(["--quick", "--no-figure"])
    for label, table in tables.items():
        for layer in HIDDEN:
            assert table[layer]["compression"] < 0.6, (label, layer, table[layer])
        assert table["9"]["i_ty_last"] > 0.8, label  # it did learn
