"""The ``foresight`` command: the installed console script in a subprocess, plus in-process checks.

The end-to-end tests run the console script installed next to the interpreter (not ``python -m``),
as a user would.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

from foresight import cli
from foresight import ei as fei

SCRIPT = pathlib.Path(sys.executable).with_name("foresight.exe" if os.name == "nt" else "foresight")

NETS = textwrap.dedent(
    """
    import torch
    from torch import nn

    def mlp():
        return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.Tanh(),
                             nn.Linear(4, 3))

    def cnn():
        return nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                             nn.Linear(3 * 3 * 3, 2))

    def not_a_model():
        return 42
    """
)


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    (tmp_path / "fs_test_nets.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fs_test_nets", None)
    yield tmp_path
    sys.modules.pop("fs_test_nets", None)


def run_script(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    assert SCRIPT.exists(), f"console script not installed at {SCRIPT} (pip install -e .)"
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert "Traceback" not in stderr
    assert lines[0].startswith("foresight: error: ")
    return lines[0]


def trained_mlp(seed: int = 7) -> torch.nn.Module:
    sys.modules.pop("fs_test_nets", None)
    import fs_test_nets

    torch.manual_seed(seed)
    model = fs_test_nets.mlp()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # not the factory's initialisation
    return model


# -- end to end: the installed command ----------------------------------------------------------


def test_report_json_total_equals_foresight_ei_on_saved_weights(workdir):
    model = trained_mlp()
    torch.save(model.state_dict(), workdir / "w.pt")
    done = run_script("report", "fs_test_nets:mlp", "--input-shape", "6", "--weights", "w.pt",
                      "--format", "json", cwd=workdir)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    expected = fei.ei(model, torch.zeros(1, 6))
    assert data["ei"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert data["determinism"] == pytest.approx(fei.determinism(model, torch.zeros(1, 6)))
    assert data["degeneracy"] == pytest.approx(fei.degeneracy(model, torch.zeros(1, 6)))
    assert [row["name"] for row in data["layers"]] == ["0", "2", "4"]  # one row per weight layer
    fresh = fei.ei(__import__("fs_test_nets").mlp(), torch.zeros(1, 6))
    assert abs(data["ei"] - fresh) > 1e-6  # the weights were really loaded


def test_pickle_that_runs_code_is_refused_without_running(workdir):
    marker = workdir / "pwned"

    class Evil:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    torch.save({"0.weight": Evil()}, workdir / "evil.pt")  # unpickling it would create marker
    assert not marker.exists()
    done = run_script("report", "fs_test_nets:mlp", "--input-shape", "6", "--weights", "evil.pt",
                      cwd=workdir)
    assert done.returncode != 0
    assert "refusing" in one_error_line(done.stderr)
    assert not marker.exists(), "the pickle's code ran"
    torch.load(workdir / "evil.pt", weights_only=False)  # control: an unsafe load runs it
    assert marker.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("report", "no_such_module_xyz:f", "--input-shape", "6"), "cannot import"),
        (("report", "fs_test_nets", "--input-shape", "6"), "MODULE:FACTORY"),
        (("report", "fs_test_nets:mlp", "--input-shape", "6,x"), "not a shape"),
        (("report", "fs_test_nets:cnn", "--input-shape", "5,8,8"), "failed on an input"),
    ],
)
def test_bad_module_path_or_shape_exit_nonzero_with_one_line(workdir, args, needle):
    done = run_script(*args, cwd=workdir)
    assert done.returncode != 0
    assert needle in one_error_line(done.stderr)
    assert done.stdout == ""


def test_version_and_help_of_every_subcommand(workdir):
    version = run_script("--version", cwd=workdir)
    assert version.returncode == 0 and version.stdout.strip().startswith("foresight ")
    for sub in ((), ("demo",), ("report",)):
        done = run_script(*sub, "--help", cwd=workdir)
        assert done.returncode == 0 and "usage: foresight" in done.stdout


# -- in process: the same code paths, fast ------------------------------------------------------


def main_out(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_table_and_csv_formats(workdir, capsys):
    code, out, _ = main_out(capsys, "report", "fs_test_nets:cnn", "--input-shape", "2,8,8")
    assert code == 0
    assert out.splitlines()[0].startswith("EI of the weight graph")
    assert any(line.startswith("total") for line in out.splitlines())
    code, out, _ = main_out(capsys, "report", "fs_test_nets:cnn", "--input-shape", "(2, 8, 8)",
                            "--format", "csv", "--norm", "soft")
    rows = out.strip().splitlines()
    assert code == 0 and rows[0].startswith("name,type,inputs,outputs")
    assert [r.split(",")[1] for r in rows[1:]] == ["Conv2d", "AvgPool2d", "Linear"]


@pytest.mark.parametrize("norm", ["lin", "soft", "sig"])
def test_norm_option_matches_library(workdir, capsys, norm):
    model = trained_mlp(3)
    path = workdir / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": model.state_dict(), "note": "x"}, path)
    code, out, err = main_out(capsys, "report", "fs_test_nets:mlp", "--input-shape", "6",
                              "--weights", str(path), "--norm", norm, "--format", "json")
    assert code == 0, err
    fn = {"lin": fei.lin_norm, "soft": fei.soft_norm, "sig": fei.sig_norm}[norm]
    assert json.loads(out)["ei"] == pytest.approx(fei.ei(model, torch.zeros(1, 6), norm=fn))


def test_checkpoint_forms(workdir, capsys):
    model = trained_mlp(5)
    expected = fei.ei(model, torch.zeros(1, 6))
    forms = {
        "model.pt": {"model": model.state_dict()},
        "ddp.pt": {f"module.{k}": v for k, v in model.state_dict().items()},
    }
    for name, data in forms.items():
        torch.save(data, workdir / name)
        code, out, err = main_out(capsys, "report", "fs_test_nets:mlp", "--input-shape", "6",
                                  "--weights", name, "--format", "json")
        assert code == 0, err
        assert json.loads(out)["ei"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("report", "fs_test_nets:mlp", "--input-shape", "6", "--weights", "missing.pt"),
         "does not exist"),
        (("report", "fs_test_nets:mlp", "--input-shape", "6", "--weights", "wrong.pt"),
         "do not fit"),
        (("report", "fs_test_nets:mlp", "--input-shape", "6", "--weights", "junk.pt"),
         "cannot read"),
        (("report", "fs_test_nets:mlp", "--input-shape", "6", "--weights", "list.pt"),
         "no state dict"),
        (("report", "fs_test_nets:nope", "--input-shape", "6"), "no attribute"),
        (("report", "fs_test_nets:not_a_model", "--input-shape", "6"), "not a torch.nn.Module"),
        (("report", "fs_test_nets:mlp", "--input-shape", "0,3"), "not a shape"),
        (("report", "fs_test_nets:mlp"), "--input-shape"),
        (("report", "fs_test_nets:mlp", "--input-shape", "6", "--norm", "tanh"), "invalid choice"),
        (("demo", "--epochs", "0"), "--epochs"),
        (("demo", "--out", "junk.pt"), "not a directory"),
        (("frobnicate",), "invalid choice"),
    ],
)
def test_user_errors_are_one_line(workdir, capsys, args, needle):
    torch.save({"0.weight": torch.zeros(2, 2)}, workdir / "wrong.pt")
    torch.save([torch.zeros(2)], workdir / "list.pt")
    (workdir / "junk.pt").write_bytes(b"not a torch file at all")
    code, out, err = main_out(capsys, *args)
    assert code == cli.EXIT_USER_ERROR
    assert needle in one_error_line(err)


def test_no_command_prints_help(capsys):
    code, _, err = main_out(capsys)
    assert code != 0 and "usage: foresight" in err


def test_missing_optional_dependency_is_one_line(monkeypatch, capsys, tmp_path):
    import foresight.demo as demo_module

    def no_sklearn(*args, **kwargs):
        from foresight._optional import require

        return require("no_such_package_xyz", "foresight demo")

    monkeypatch.setattr(demo_module, "run", no_sklearn)
    code, _, err = main_out(capsys, "demo", "--out", str(tmp_path / "d"))
    assert code == cli.EXIT_USER_ERROR
    assert "pip install" in one_error_line(err)
