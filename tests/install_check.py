"""Run by ``tests/test_install.py`` inside a clean virtual environment that has only torch and
numpy (and their own dependencies) plus the torch-foresight wheel.

Imports every module of the installed package, calls each piece that needs an optional package,
computes one number per metric, and prints one JSON object with what happened. It imports nothing
from the checkout: the test asserts that ``foresight`` came from the environment's site-packages.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import tempfile
import traceback


def main() -> None:
    import torch

    import foresight

    out: dict = {"file": foresight.__file__, "version": foresight.__version__,
                 "torch": torch.__version__, "modules": {}, "optional": {}, "numbers": {}}
    names = ["foresight"] + [
        m.name for m in pkgutil.walk_packages(foresight.__path__, prefix="foresight.")
    ]
    for name in names:
        try:
            importlib.import_module(name)
            out["modules"][name] = "ok"
        except ImportError as exc:
            out["modules"][name] = f"ImportError: {exc}"
        except Exception:  # a real bug: report it whole
            out["modules"][name] = "ERROR: " + traceback.format_exc()

    for package in ("matplotlib", "pandas", "sklearn", "tensorboard", "wandb", "lightning",
                    "tqdm", "scipy"):
        try:
            importlib.import_module(package)
            out.setdefault("unexpected_packages", []).append(package)
        except ImportError:
            pass

    records = [{"epoch": e, "step": e, "ei": 1.0 + e, "train_loss": 1.0 / (e + 1),
                "i_xt/1": 2.0, "i_ty/1": 0.5, "sensitivity/1": 1.0, "ei_parts/1": 0.5,
                "causal_degeneracy/1": 0.2} for e in range(3)]
    ib_rows = [{"epoch": e, "layer": "1", "i_xt": 2.0, "i_ty": 0.5} for e in range(3)]
    tmp = tempfile.mkdtemp()

    def plot(module: str, fn: str, *args):
        return lambda: getattr(importlib.import_module(module), fn)(*args)

    def result_frame():
        from foresight import ei as fei

        return fei.report(torch.nn.Linear(3, 2), torch.zeros(1, 3)).to_dataframe()

    def history_frame():
        from foresight.monitor import History

        return History([{"step": 0}]).to_dataframe()

    def sink(name: str):
        def make():
            sinks = importlib.import_module("foresight.monitor.sinks")
            return getattr(sinks, name)(tmp) if name == "TensorBoardSink" else getattr(
                sinks, name)()
        return make

    optional = {
        "plot.ei_training": plot("foresight.plot.ei", "ei_training", records),
        "plot.training_dashboard": plot("foresight.plot.dashboard", "training_dashboard",
                                        records),
        "plot.noise_scale_over_training": plot("foresight.plot.gns", "noise_scale_over_training",
                                               [0, 1], [10.0, 20.0]),
        "plot.information_plane_plot": plot("foresight.plot.ib", "information_plane_plot",
                                            ib_rows),
        "plot.causal_plane": plot("foresight.plot.causal", "causal_plane", records),
        "data.digits": lambda: importlib.import_module("foresight.data").digits(),
        "data.iris": lambda: importlib.import_module("foresight.data").iris(),
        "EIReport.to_dataframe": result_frame,
        "History.to_dataframe": history_frame,
        "TensorBoardSink": sink("TensorBoardSink"),
        "WandbSink": sink("WandbSink"),
    }
    for key, call in optional.items():
        try:
            call()
            out["optional"][key] = "ran"
        except ImportError as exc:
            out["optional"][key] = f"ImportError: {exc}"
        except Exception:
            out["optional"][key] = "ERROR: " + traceback.format_exc()

    # the core needs nothing optional: one number from each metric
    from foresight import causal, ei, gns, ib

    eye = torch.nn.Linear(8, 8, bias=False)
    with torch.no_grad():
        eye.weight.copy_(torch.eye(8))
    out["numbers"]["ei_identity_8"] = ei.ei(eye, torch.zeros(1, 8))
    x = torch.arange(16)
    out["numbers"]["mi_discrete"] = ib.mutual_information(x, x % 4, method="discrete")
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g)
    est = gns.noise_scale(torch.nn.Linear(4, 1), torch.nn.MSELoss(), xs, ys)
    out["numbers"]["gns_finite"] = bool(est.grad_sq_norm == est.grad_sq_norm)
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Sigmoid())
    rep = causal.report(net, bins=4, samples=2000, seed=0)
    out["numbers"]["causal_layers"] = len(rep.layers)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
