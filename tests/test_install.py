"""The built wheel installs into a clean environment with only torch and numpy, and works there.

Two ways to make the clean environment:

* fast (runs in ``make test``, about 15 s on 2 cores): ``python -m venv --without-pip``, then the
  files of torch, numpy and their own dependencies (read from their installed metadata) are
  *linked* from the test environment into the new one, so pip sees exactly what
  ``pip install torch==2.13.0 numpy`` would have put there, without unpacking a 700 MB wheel;
* slow (``@pytest.mark.slow``, ``make repro``; about a minute): a venv with its own pip and a real
  ``pip install torch==2.13.0 numpy`` from the local wheel cache.

In both the wheel is installed by pip with its dependencies resolved (``--no-index``: nothing may
be downloaded, so torch and numpy must already satisfy them), and ``tests/install_check.py`` runs
in the new interpreter: every module imports or fails with the one-line ``pip install`` message.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECK = pathlib.Path(__file__).with_name("install_check.py")
TIMEOUT = 600

# what a missing optional package must say (the extra of torch-foresight that brings it)
OPTIONAL = {
    "plot.ei_training": "plot",
    "plot.training_dashboard": "plot",
    "plot.noise_scale_over_training": "plot",
    "plot.information_plane_plot": "plot",
    "plot.causal_plane": "plot",
    "data.digits": "data",
    "data.iris": "data",
    "EIReport.to_dataframe": "pandas",
    "History.to_dataframe": "pandas",
    "TensorBoardSink": "tensorboard",
    "WandbSink": "wandb",
}


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env,
                          **kwargs)
    return done


def build_wheel(out: pathlib.Path) -> pathlib.Path:
    """Build the wheel from a copy of the sources (nothing is written into the checkout)."""
    pytest.importorskip("build", reason="the 'build' package (test extra) builds the wheel")
    src = out / "src-copy"
    shutil.copytree(ROOT / "src", src / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    done = run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                str(out), str(src)])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("torch_foresight-*.whl")
    return wheel


def _closure(*names: str) -> list[metadata.Distribution]:
    """The installed distributions ``names`` and everything they require (markers evaluated)."""
    from packaging.requirements import Requirement

    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        dist = metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def linked_venv(where: pathlib.Path) -> pathlib.Path:
    """A venv without pip whose site-packages links torch, numpy and their dependencies."""
    done = run([sys.executable, "-m", "venv", "--without-pip", str(where)])
    assert done.returncode == 0, done.stderr
    python = where / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    site = pathlib.Path(purelib.stdout.strip())
    here = pathlib.Path(sysconfig.get_paths()["purelib"])
    for dist in _closure("torch", "numpy"):
        tops = {pathlib.PurePath(str(f)).parts[0] for f in dist.files or []}
        for top in sorted(tops - {"..", "__pycache__"}):
            source = here / top
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return python


def pip_venv(where: pathlib.Path) -> pathlib.Path:
    """A venv with its own pip and a real ``pip install torch==2.13.0 numpy`` (local cache)."""
    done = run([sys.executable, "-m", "venv", str(where)])
    assert done.returncode == 0, done.stderr
    python = where / "bin" / "python"
    done = run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0", "numpy"])
    assert done.returncode == 0, done.stderr[-3000:]
    return python


def install_wheel(python: pathlib.Path, wheel: pathlib.Path) -> None:
    # pip of this environment installs into the other one; --no-index: torch and numpy must
    # already satisfy the wheel's requirements (nothing is downloaded)
    done = run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index",
                "-q", str(wheel)])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def check_environment(python: pathlib.Path, venv: pathlib.Path, wheel: pathlib.Path,
                      tmp: pathlib.Path) -> None:
    done = run([str(python), "-I", str(CHECK)], cwd=tmp)  # -I: no checkout, no user site
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout)
    assert pathlib.Path(out["file"]).resolve().is_relative_to(venv.resolve()), out["file"]
    assert out["torch"].startswith("2.13.0")
    assert "unexpected_packages" not in out, out["unexpected_packages"]

    with zipfile.ZipFile(wheel) as zf:  # every module in the wheel was tried
        in_wheel = {
            n[: -len(".py")].replace("/", ".").removesuffix(".__init__")
            for n in zf.namelist() if n.endswith(".py")
        }
    assert in_wheel == set(out["modules"]), in_wheel ^ set(out["modules"])
    failed = {m: r for m, r in out["modules"].items() if r != "ok"}
    assert set(failed) == {"foresight.integrations.lightning"}, failed
    assert failed["foresight.integrations.lightning"] == (
        "ImportError: foresight.integrations.lightning needs the optional package 'lightning': "
        "pip install 'torch-foresight[lightning]'"
    )
    assert set(out["optional"]) == set(OPTIONAL)
    for key, extra in OPTIONAL.items():
        message = out["optional"][key]
        assert message.startswith("ImportError: ") and "\n" not in message, (key, message)
        assert message.endswith(f"pip install 'torch-foresight[{extra}]'"), (key, message)
    assert out["numbers"] == {"ei_identity_8": 3.0, "mi_discrete": 2.0, "gns_finite": True,
                              "causal_layers": 1}

    script = venv / "bin" / "foresight"
    version = run([str(script), "--version"], cwd=tmp)
    assert version.returncode == 0 and version.stdout.strip() == f"foresight {out['version']}"
    (tmp / "fs_install_net.py").write_text(
        "import torch\n\ndef net():\n    return torch.nn.Sequential(torch.nn.Linear(4, 3))\n"
    )
    report = run([str(script), "report", "fs_install_net:net", "--input-shape", "4",
                  "--format", "json"], cwd=tmp)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["layers"][0]["inputs"] == 4
    demo = run([str(script), "demo", "--steps", "1", "--out", str(tmp / "demo")], cwd=tmp)
    assert demo.returncode == 2
    (line,) = demo.stderr.strip().splitlines()
    assert line.startswith("foresight: error: ") and "optional package 'sklearn'" in line
    assert line.endswith("pip install 'torch-foresight[data]'")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_in_a_clean_venv_with_only_torch_and_numpy(wheel, tmp_path):
    venv = tmp_path / "venv"
    python = linked_venv(venv)
    # the venv really is clean: nothing of the test environment but the linked distributions
    probe = run([str(python), "-I", "-c", "import sys, matplotlib"])
    assert probe.returncode != 0 and "No module named 'matplotlib'" in probe.stderr
    install_wheel(python, wheel)
    check_environment(python, venv, wheel, tmp_path)


@pytest.mark.slow
def test_wheel_after_a_real_pip_install_of_torch(wheel, tmp_path):
    venv = tmp_path / "venv"
    python = pip_venv(venv)
    install_wheel(python, wheel)
    check_environment(python, venv, wheel, tmp_path)


def test_wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        entry = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert not any(n.startswith(("tests/", "docs/", "benchmarks/")) for n in names)
    assert "Requires-Dist: torch>=2.1" in meta and "Requires-Dist: numpy" in meta
    required = [ln for ln in meta.splitlines()
                if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    assert sorted(required) == ["Requires-Dist: numpy", "Requires-Dist: torch>=2.1"]
    assert "foresight = foresight.cli:main" in entry
    assert "License-Expression: MIT" in meta
