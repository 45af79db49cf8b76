"""``foresight batch-size``: a user's MODULE:FACTORY with --data, the bundled digits task, and
one-line errors."""

from __future__ import annotations

import json
import textwrap

import pytest

from foresight import cli

TASK = textwrap.dedent(
    """
    import torch
    from torch import nn

    W = torch.tensor([[1.0, -2.0, 0.5]])
    X = torch.randn(256, 3, generator=torch.Generator().manual_seed(9))

    def model():
        return nn.Linear(3, 1)

    def sample(n, g):
        x = torch.randn(n, 3, generator=g)
        return x, x @ W.T + 0.1 * torch.randn(n, 1, generator=g)

    def data():
        return dict(sample=sample, eval_data=(X, X @ W.T), loss_fn=nn.functional.mse_loss,
                    target_loss=0.05, batch_sizes=[2, 8, 32], lrs=[0.05, 0.1, 0.2, 0.4])

    def no_sample():
        return dict(eval_data=(X, X @ W.T))
    """
)


@pytest.fixture
def task_dir(tmp_path, monkeypatch):
    (tmp_path / "cbs_task.py").write_text(TASK)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_user_model_and_data(task_dir, capsys):
    pytest.importorskip("matplotlib")
    out = task_dir / "fig.png"
    code = cli.main(["batch-size", "cbs_task:model", "--data", "cbs_task:data", "--no-progress",
                     "--out", str(out), "--json", str(task_dir / "r.json")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "B_crit = " in captured.out and "batch_size" in captured.out
    assert out.read_bytes().startswith(b"\x89PNG")
    data = json.loads((task_dir / "r.json").read_text())
    assert [r["batch_size"] for r in data["sweep"]["runs"]] == [2, 8, 32]
    code = cli.main(["batch-size", "cbs_task:model", "--data", "cbs_task:data", "--no-progress",
                     "--no-figure", "--batch-sizes", "4,16", "--lrs", "0.1,0.3",
                     "--target-loss", "0.08"])
    captured = capsys.readouterr()
    assert code == 0 and "loss 0.08" in captured.out and "wrote" not in captured.out


def test_default_digits_task(task_dir, capsys):
    pytest.importorskip("sklearn")
    code = cli.main(["batch-size", "--no-progress", "--no-figure", "--batch-sizes", "64,256",
                     "--lrs", "0.7,1.4", "--target-loss", "0.5"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "task: digits" in captured.out and "B_crit" in captured.out


@pytest.mark.parametrize("argv,message", [
    (["--data", "cbs_task:data"], "--data needs a MODEL"),
    (["cbs_task:model"], "--data MODULE:FACTORY"),
    (["cbs_task:model", "--data", "cbs_task:no_sample"], "'sample'"),
    (["cbs_task:model", "--data", "cbs_task:data", "--batch-sizes", "a,b"], "--batch-sizes"),
    (["cbs_task:model", "--data", "cbs_task:data", "--batch-sizes", "8"],
     "at least two different batch sizes"),
    (["cbs_task:model", "--data", "cbs_task:data", "--target-loss", "100"],
     "target already met at step 0"),
    (["cbs_task:model", "--data", "cbs_task:data", "--max-steps", "0"], "--max-steps"),
    (["nowhere_module:model", "--data", "cbs_task:data"], "cannot import module"),
    (["cbs_task:model", "--data", "cbs_task:data", "--out", "/no/such/dir/f.png"],
     "does not exist"),
])
def test_errors_are_one_line(task_dir, capsys, argv, message):
    code = cli.main(["batch-size", "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("foresight: error:")
