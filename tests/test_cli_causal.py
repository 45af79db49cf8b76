"""``foresight causal``: the per-layer causal measures from the command line."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

import foresight.causal as fc
from foresight import cli

NETS = textwrap.dedent(
    """
    import torch
    from torch import nn

    def small():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2), nn.Tanh())

    def wide():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(12, 3), nn.Sigmoid())
    """
)


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    (tmp_path / "fs_causal_nets.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fs_causal_nets", None)
    torch.set_num_threads(1)
    yield tmp_path
    sys.modules.pop("fs_causal_nets", None)


def test_table_json_csv_match_the_library(workdir, capsys) -> None:
    args = ["causal", "fs_causal_nets:small", "--bins", "8", "--samples", "20000", "--no-progress"]
    assert cli.main([*args, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    import fs_causal_nets

    expected = fc.report(fs_causal_nets.small(), bins=8, samples=20000, seed=0).to_dict()
    assert data == json.loads(json.dumps(expected))
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "EI_parts" in out and "exact" in out and out.count("\n") == 5  # title, head, rule, 2
    assert cli.main([*args, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("name,layer,activation")


def test_sample_limited_layers_are_marked_and_warned_once(workdir, capsys) -> None:
    assert cli.main(["causal", "fs_causal_nets:wide", "--bins", "8", "--samples", "5000"]) == 0
    captured = capsys.readouterr()
    warned = [line for line in captured.err.splitlines() if line.startswith("foresight: warning")]
    assert len(warned) == 1 and "layer '0'" in warned[0] and "limited by the sample" in warned[0]
    assert "*" in captured.out and "limited by the sample count" in captured.out
    assert "causal report" in captured.err  # the progress bar is on by default


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--in-range", "1,0"], "--in-range"),
        (["--in-range", "a,b"], "--in-range"),
        (["--bins", "1"], "--bins"),
        (["--samples", "0"], "--samples"),
        (["--weights", "nope.pt"], "does not exist"),
        (["--method", "exact", "--bins", "8"], None),
    ],
)
def test_bad_input_is_one_line(workdir, capsys, argv, message) -> None:
    status = cli.main(["causal", "fs_causal_nets:small", "--no-progress", *argv])
    err = capsys.readouterr().err
    if message is None:
        assert status == 0
        return
    assert status == cli.EXIT_USER_ERROR
    assert err.startswith("foresight: error:") and message in err and err.count("\n") == 1


def test_unknown_module(workdir, capsys) -> None:
    assert cli.main(["causal", "no_such_module_xyz:f"]) == cli.EXIT_USER_ERROR
    assert "cannot import" in capsys.readouterr().err
