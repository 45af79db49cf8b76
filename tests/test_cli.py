"""The ``foresight`` command: the installed console script in a subprocess, plus in-process checks.

The end-to-end tests run the console script installed next to the interpreter (not ``python -m``),
as a user would.
"""

from __future__ import annotations

import json
import math
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

    class Scale(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(n))

        def forward(self, x):
            return x * self.gain

    class Partly(nn.Module):
        # layers EI cannot see: two custom Scales and a Linear the forward pass never calls

        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 4)
            self.s1 = Scale(4)
            self.s2 = Scale(4)
            self.unused = nn.Linear(4, 4)
            self.b = nn.Linear(4, 3)

        def forward(self, x):
            return self.b(self.s2(self.s1(self.a(x))))

    def partly():
        return Partly()

    def identity(width=16):
        m = nn.Linear(width, width, bias=False)
        with torch.no_grad():
            m.weight.copy_(torch.eye(width))
        return m

    class LitModule(nn.Module):
        # a LightningModule's state_dict: the model under `net.`, plus a weighted loss

        def __init__(self):
            super().__init__()
            self.net = mlp()
            self.criterion = nn.CrossEntropyLoss(weight=torch.ones(3))
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
    assert [r.split(",")[1] for r in rows[1:-1]] == ["Conv2d", "AvgPool2d", "Linear"]
    assert rows[-1].startswith("total,") and rows[-1].endswith(",total")


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
         "not a PyTorch weights file"),
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


# -- factory arguments, seed, device, strict, skipped layers -----------------------------------

TIMM_LIKE = textwrap.dedent(
    """
    from torch import nn

    _REGISTRY = {}

    def register(fn):
        _REGISTRY[fn.__name__] = fn
        return fn

    @register
    def tiny_mlp(num_classes=1000, width=8, act=nn.ReLU):
        return nn.Sequential(nn.Linear(6, width), act(), nn.Linear(width, num_classes))

    def create_model(model_name, pretrained=False, **kwargs):
        if pretrained:
            raise RuntimeError("no downloads in tests")
        return _REGISTRY[model_name](**kwargs)
    """
)


@pytest.fixture()
def timm_like(workdir):
    (workdir / "fs_timm_like.py").write_text(TIMM_LIKE)
    sys.modules.pop("fs_timm_like", None)
    yield workdir
    sys.modules.pop("fs_timm_like", None)


def test_parse_factory_args_literals_and_strings():
    args = cli.parse_factory_args([
        "model_name=resnet18", "num_classes=10", "drop=0.5", "pretrained=False", "x=None",
        "shape=(3, 4)", "names=['a', 'b']", "quoted='10'", "expr=1+", "spaced= 7 ",
    ])
    assert args == {"model_name": "resnet18", "num_classes": 10, "drop": 0.5, "pretrained": False,
                    "x": None, "shape": (3, 4), "names": ["a", "b"], "quoted": "10",
                    "expr": "1+", "spaced": 7}
    assert cli.parse_factory_args(None) == {}
    for bad in (["novalue"], ["=3"], ["1x=3"], ["a=1", "a=2"]):
        with pytest.raises(cli.UserError, match="--arg"):
            cli.parse_factory_args(bad)


def test_timm_style_factory_with_args_matches_the_library(timm_like, capsys):
    import fs_timm_like

    code, out, err = main_out(capsys, "report", "fs_timm_like:create_model", "--input-shape", "6",
                              "--arg", "model_name=tiny_mlp", "--arg", "num_classes=4",
                              "--arg", "width=5", "--seed", "3", "--format", "json")
    assert code == 0, err
    torch.manual_seed(3)
    model = fs_timm_like.create_model("tiny_mlp", num_classes=4, width=5)
    data = json.loads(out)
    assert data["ei"] == pytest.approx(fei.ei(model, torch.zeros(1, 6)), rel=1e-12)
    assert [(r["inputs"], r["outputs"]) for r in data["layers"]] == [(6, 5), (5, 4)]
    # the missing-argument failure says how to pass it
    code, _, err = main_out(capsys, "report", "fs_timm_like:create_model", "--input-shape", "6")
    line = one_error_line(err)
    assert code == cli.EXIT_USER_ERROR and "model_name" in line and "--arg NAME=VALUE" in line
    code, _, err = main_out(capsys, "report", "fs_timm_like:create_model", "--input-shape", "6",
                            "--arg", "model_name=tiny_mlp", "--arg", "depth=3")
    assert "depth" in one_error_line(err)


def test_seed_makes_a_random_initialisation_reproducible(workdir, capsys):
    runs = {}
    for seed in ("0", "0", "1"):
        code, out, err = main_out(capsys, "report", "fs_test_nets:mlp", "--input-shape", "6",
                                  "--seed", seed, "--format", "json")
        assert code == 0, err
        runs.setdefault(seed, []).append(json.loads(out)["ei"])
    assert runs["0"][0] == runs["0"][1]
    assert runs["0"][0] != runs["1"][0]
    torch.manual_seed(1)
    assert runs["1"][0] == pytest.approx(fei.ei(__import__("fs_test_nets").mlp(),
                                                torch.zeros(1, 6)), rel=1e-12)
    code, out, _ = main_out(capsys, "report", "fs_test_nets:mlp", "--input-shape", "6",
                            "--format", "json")  # the default seed is 0
    assert json.loads(out)["ei"] == runs["0"][0]


def test_device_option(workdir, capsys):
    code, out, err = main_out(capsys, "report", "fs_test_nets:mlp", "--input-shape", "6",
                              "--device", "cpu", "--format", "json")
    assert code == 0, err
    code2, out2, _ = main_out(capsys, "report", "fs_test_nets:mlp", "--input-shape", "6",
                              "--format", "json")
    assert json.loads(out)["ei"] == json.loads(out2)["ei"]
    code, _, err = main_out(capsys, "report", "fs_test_nets:mlp", "--input-shape", "6",
                            "--device", "banana")
    assert code == cli.EXIT_USER_ERROR and "not a device" in one_error_line(err)
    if not torch.cuda.is_available():
        code, _, err = main_out(capsys, "report", "fs_test_nets:mlp", "--input-shape", "6",
                                "--device", "cuda")
        assert code == cli.EXIT_USER_ERROR and "cannot be used" in one_error_line(err)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_cuda_matches_cpu(workdir, capsys):
    code, out, err = main_out(capsys, "report", "fs_test_nets:cnn", "--input-shape", "2,8,8",
                              "--device", "cuda", "--format", "json")
    assert code == 0, err
    _, cpu, _ = main_out(capsys, "report", "fs_test_nets:cnn", "--input-shape", "2,8,8",
                         "--format", "json")
    assert json.loads(out)["ei"] == pytest.approx(json.loads(cpu)["ei"], rel=1e-5)


def test_skipped_layers_summarised_once_and_listed_when_verbose(workdir, capsys):
    code, out, err = main_out(capsys, "report", "fs_test_nets:partly", "--input-shape", "6")
    assert code == 0 and err == ""  # the library's long warning is not repeated
    summary = [ln for ln in out.splitlines() if "left out of EI" in ln]
    assert len(summary) == 1 and len(summary[0]) < 200
    assert "3 layers" in summary[0] and "2 Scale" in summary[0] and "1 Linear" in summary[0]
    assert "not called by the forward pass" in summary[0] and "--verbose" in summary[0]
    assert "s1" not in out and "strict=True" not in out
    code, out, err = main_out(capsys, "report", "fs_test_nets:partly", "--input-shape", "6",
                              "--verbose")
    listed = [ln.strip() for ln in out.splitlines() if ln.startswith("  ")]
    assert listed == ["s1 (Scale): no weight graph registered",
                      "s2 (Scale): no weight graph registered",
                      "unused (Linear): not called by the forward pass"]
    code, out, err = main_out(capsys, "report", "fs_test_nets:partly", "--input-shape", "6",
                              "--format", "json")
    data = json.loads(out)  # stdout stays valid JSON; the note goes to stderr, once
    assert [s["name"] for s in data["skipped_layers"]] == ["s1", "s2", "unused"]
    assert data["skipped_counts"] == {"Scale": 2, "Linear": 1}
    assert len(data["skipped"]) == 3
    assert err.count("left out of EI") == 1 and err.startswith("foresight: note: ")


def test_strict_fails_on_skipped_layers_only(workdir, capsys):
    code, out, err = main_out(capsys, "report", "fs_test_nets:partly", "--input-shape", "6",
                              "--strict")
    assert code == cli.EXIT_USER_ERROR and out == ""
    line = one_error_line(err)
    assert "--strict" in line and "3 layers" in line and len(line) < 300
    code, _, err = main_out(capsys, "report", "fs_test_nets:mlp", "--input-shape", "6",
                            "--strict")
    assert code == 0, err


def test_csv_has_total_and_skipped_rows(workdir, capsys):
    import csv as csv_module

    code, out, _ = main_out(capsys, "report", "fs_test_nets:partly", "--input-shape", "6",
                            "--format", "csv")
    rows = list(csv_module.DictReader(out.splitlines()))
    assert code == 0
    assert [r["row"] for r in rows] == ["layer", "layer", "total", "skipped", "skipped",
                                        "skipped"]
    layers, total = rows[:2], rows[2]
    torch.manual_seed(0)
    model = __import__("fs_test_nets").partly()
    with pytest.warns(UserWarning):
        expected = fei.report(model, torch.zeros(1, 6))
    assert float(total["ei"]) == pytest.approx(expected.ei, rel=1e-12)
    assert float(total["determinism"]) == pytest.approx(expected.determinism, rel=1e-12)
    assert int(total["inputs"]) == sum(int(r["inputs"]) for r in layers) == 10
    assert [(r["name"], r["type"], r["reason"]) for r in rows[3:]] == [
        ("s1", "Scale", "no weight graph registered"),
        ("s2", "Scale", "no weight graph registered"),
        ("unused", "Linear", "not called by the forward pass"),
    ]


def test_rounding_noise_is_zero_and_effectiveness_clamped_only_for_rounding():
    assert cli.clean(-5.8e-07) == 0.0 and cli.clean(8.9e-16) == 0.0
    assert cli.clean(1.0000000632, unit_interval=True) == 1.0
    assert cli.clean(-3e-9, unit_interval=True) == 0.0
    assert cli.clean(1.01, unit_interval=True) == 1.01  # not rounding: shown as it is
    assert cli.clean(-0.002) == -0.002 and cli.clean(2.5e-6) == 2.5e-6
    assert math.isnan(cli.clean(math.nan))
    report = fei.EIReport(
        ei=4.0000000001, determinism=-5.8e-7, degeneracy=4.0,
        layers=[fei.LayerEI("l", "Linear", 16, 16, -5.8e-7, 4.0, 4.0000003, 1.0000000632)],
    )
    data = json.loads(cli.format_report(report, "json"))
    assert data["determinism"] == 0.0 and data["layers"][0]["effectiveness"] == 1.0
    assert data["layers"][0]["determinism"] == 0.0
    text = cli.format_report(report, "csv")
    assert "e-07" not in text and "1.0000000632" not in text


def test_identity_layer_prints_exact_numbers(workdir, capsys):
    code, out, _ = main_out(capsys, "report", "fs_test_nets:identity", "--input-shape", "16",
                            "--format", "csv")
    row = out.splitlines()[1].split(",")
    assert code == 0 and row[4:8] == ["0.0", "4.0", "4.0", "1.0"]


# -- weights problems: one line each, with what to do ------------------------------------------


def test_lightning_style_checkpoint_hints_and_strip_prefix(workdir, capsys):
    nets = __import__("fs_test_nets")
    torch.manual_seed(11)
    lit = nets.LitModule()
    with torch.no_grad():
        for p in lit.parameters():
            p.add_(1.0)
    torch.save({"epoch": 2, "global_step": 10, "state_dict": lit.state_dict()},
               workdir / "lit.ckpt")
    code, _, err = main_out(capsys, "report", "fs_test_nets:mlp", "--input-shape", "6",
                            "--weights", "lit.ckpt")
    line = one_error_line(err)
    assert code == cli.EXIT_USER_ERROR and "--strip-prefix net." in line
    code, out, err = main_out(capsys, "report", "fs_test_nets:mlp", "--input-shape", "6",
                              "--weights", "lit.ckpt", "--strip-prefix", "net.",
                              "--format", "json")
    assert code == 0, err
    assert json.loads(out)["ei"] == pytest.approx(fei.ei(lit.net, torch.zeros(1, 6)), rel=1e-12)
    code, _, err = main_out(capsys, "report", "fs_test_nets:mlp", "--input-shape", "6",
                            "--weights", "lit.ckpt", "--strip-prefix", "model.")
    assert "no key" in one_error_line(err)
    code, _, err = main_out(capsys, "report", "fs_test_nets:mlp", "--input-shape", "6",
                            "--strip-prefix", "net.")
    assert "--weights" in one_error_line(err)


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p.write_text("epoch,loss\n0,1.5\n"), "text file"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b"\x00\x01\x02garbage\xff" * 10), "not a PyTorch weights file"),
        (lambda p: p.write_bytes((20).to_bytes(8, "little") + b'{"a":{"dtype":"F32"}}'),
         "safetensors"),
        (lambda p: p.write_bytes(b"PK\x03\x04" + b"\x00" * 60), "damaged"),
    ],
    ids=["text", "empty", "directory", "binary", "safetensors", "truncated-zip"],
)
def test_weights_file_problems_are_one_line(workdir, capsys, make, needle):
    path = workdir / "weights.pt"
    make(path)
    code, _, err = main_out(capsys, "report", "fs_test_nets:mlp", "--input-shape", "6",
                            "--weights", str(path))
    assert code == cli.EXIT_USER_ERROR
    assert needle in one_error_line(err)


def test_input_shape_too_large_to_allocate_is_one_line(workdir, capsys):
    code, out, err = main_out(capsys, "report", "fs_test_nets:mlp", "--input-shape",
                              "6,100000,100000,100000")
    assert code == cli.EXIT_USER_ERROR and out == ""
    line = one_error_line(err)
    assert "cannot be allocated" in line and "PiB" in line


def test_other_warnings_are_shown_once_on_one_line(workdir, capsys):
    (workdir / "fs_warn_net.py").write_text(textwrap.dedent(
        """
        import warnings
        from torch import nn

        class Noisy(nn.Linear):
            def forward(self, x):
                warnings.warn("this layer is\\nexperimental", UserWarning)
                warnings.warn("old API", DeprecationWarning)
                return super().forward(x)

        def net():
            return nn.Sequential(Noisy(4, 3), Noisy(3, 2))
        """
    ))
    sys.modules.pop("fs_warn_net", None)
    code, out, err = main_out(capsys, "report", "fs_warn_net:net", "--input-shape", "4")
    sys.modules.pop("fs_warn_net", None)
    assert code == 0 and out.startswith("EI of the weight graph")
    assert err.splitlines() == ["foresight: warning: UserWarning: this layer is experimental"]
