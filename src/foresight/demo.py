"""``foresight demo``: the seed's headline experiment, with every metric the library has.

A single-layer softmax classifier (``nn.Linear(64, 10)``, no hidden layer) is trained with Adam on
a small subset of scikit-learn's bundled 8x8 digits, so that it first learns and then overfits.
Every epoch it records the effective information of its weight graph (with determinism and
degeneracy), the train and test loss, and the gradient noise scale of its own training steps. A
small hidden-layer network (64-4-10, tanh) is trained alongside on the same data to show what
needs hidden layers: the information plane of its representations and the causal (perturbational)
EI of its layers, measured on a log-spaced schedule.

Each metric joins in only if its module is installed, so the demo runs with whatever part of the
library is present. Outputs in ``out``:

* ``demo.csv`` -- one row per measurement (epoch), one column per quantity (``ei`` ...);
* ``summary.json`` -- the configuration, the run time, and the values at the start, the end and
  the turning points of the EI curve;
* ``ei.png`` -- the seed's figure (EI with train and test loss against epoch);
* ``dashboard.png`` -- one panel per metric against epoch, with the losses alongside;
* ``information_plane.png`` and ``causal_plane.png`` -- the figures of :mod:`foresight.plot.ib`
  and :mod:`foresight.plot.causal`, when those measures were taken.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

import foresight
from foresight._optional import require
from foresight._progress import progress
from foresight.monitor import EI, CausalEI, GradientNoise, InformationPlane, Monitor
from foresight.monitor.sinks import CSVSink
from foresight.schedule import log_spaced

HIDDEN_PREFIX = "hidden_"


@dataclass
class DemoConfig:
    """The experiment's settings (the defaults reproduce the README's figure)."""

    epochs: int = 300
    seed: int = 0
    n_train: int = 100
    batch_size: int = 20
    lr: float = 0.03
    hidden: bool = True
    hidden_width: int = 4
    ib_bins: int = 8
    causal_bins: int = 8
    causal_samples: int = 8192


@dataclass
class DemoResult:
    """What :func:`run` produced."""

    config: DemoConfig
    records: list[dict[str, Any]]
    files: list[str]
    wall_s: float
    metrics: list[str]
    summary: dict[str, Any] = field(default_factory=dict)

    def summary_table(self) -> str:
        """A short text table: each headline quantity at the start, its extreme, and the end."""
        rows = [("quantity", "epoch 0", "min", "max", f"epoch {self.records[-1]['epoch']}")]
        keys = [k for k in ("ei", "determinism", "degeneracy", "train_loss", "test_loss",
                            "test_accuracy", "b_simple") if any(k in r for r in self.records)]
        keys += [k for k in _keys(self.records)
                 if k.startswith(("i_xt/", "i_ty/", "causal_ei/", "ei_parts/"))]
        for key in keys:
            values = [(r["epoch"], r[key]) for r in self.records
                      if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if not values:
                continue
            ys = [v for _, v in values]
            first = values[0][1] if values[0][0] == 0 else math.nan
            rows.append((key, _fmt(first), _fmt(min(ys)), _fmt(max(ys)), _fmt(ys[-1])))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _fmt(v: float) -> str:
    return "" if not math.isfinite(v) else f"{v:.4g}"


def _keys(records: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        for k in r:
            seen.setdefault(k, None)
    return list(seen)


def _has(module: str, name: str) -> bool:
    try:
        return hasattr(importlib.import_module(module), name)
    except ImportError:
        return False


@dataclass
class _Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(n_train: int, seed: int) -> _Data:
    """scikit-learn's 8x8 digits scaled to [0, 1]: ``n_train`` random training examples, the
    rest (about 1,700) for testing."""
    if _has("foresight.data", "digits"):
        from foresight import data

        split = data.digits(n_train=n_train, seed=seed)
        return _Data(*(torch.as_tensor(t) for t in (split.x_train, split.y_train,
                                                     split.x_test, split.y_test)))
    datasets = require("sklearn.datasets", "foresight demo")
    digits = datasets.load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[:n_train], order[n_train:]
    return _Data(x[train], y[train], x[test], y[test])


class _Run:
    """One network, its optimizer and its data order."""

    def __init__(self, model: nn.Module, config: DemoConfig, seed: int) -> None:
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.batch_size = config.batch_size

    def train_epoch(self, data: _Data, monitors: list[Monitor]) -> None:
        self.model.train()
        n = len(data.x_train)
        order = torch.randperm(n, generator=self.generator)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            self.optimizer.zero_grad()
            loss = nn.functional.cross_entropy(self.model(data.x_train[idx]), data.y_train[idx])
            loss.backward()
            for monitor in monitors:  # before optimizer.step(): the noise-scale tracker reads .grad
                monitor.step()
            self.optimizer.step()

    @torch.no_grad()
    def evaluate(self, data: _Data) -> dict[str, float]:
        self.model.eval()
        out_train = self.model(data.x_train)
        out_test = self.model(data.x_test)
        return {
            "train_loss": float(nn.functional.cross_entropy(out_train, data.y_train)),
            "test_loss": float(nn.functional.cross_entropy(out_test, data.y_test)),
            "test_accuracy": float((out_test.argmax(1) == data.y_test).float().mean()),
        }


def _hidden_net(width: int) -> nn.Sequential:
    layers = [("fc1", nn.Linear(64, width)), ("tanh", nn.Tanh()), ("fc2", nn.Linear(width, 10))]
    return nn.Sequential(OrderedDict(layers))


def run(
    out: str | os.PathLike[str] = "foresight-demo",
    epochs: int = 300,
    seed: int = 0,
    n_train: int = 100,
    hidden: bool = True,
    show_progress: bool = True,
    figures: bool = True,
) -> DemoResult:
    """Run the demo and write its CSV, JSON summary and figures to ``out``.

    Args:
        out: output directory (created if needed).
        epochs: training epochs; the defaults show the seed's three phases in about a minute.
        seed: seeds the data split, the initial weights and the batch order.
        n_train: training examples (a small subset, so that the model overfits).
        hidden: also train the hidden-layer network for the information plane and causal EI.
        show_progress: draw a progress bar on stderr.
        figures: write the PNG figures (needs matplotlib).

    Returns:
        A :class:`DemoResult` (records, written files, wall time).
    """
    config = DemoConfig(epochs=epochs, seed=seed, n_train=n_train, hidden=hidden)
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: threads cost more than they save
    try:
        return _run(config, out, show_progress, figures)
    finally:
        torch.set_num_threads(threads)


def _run(config: DemoConfig, out: str, show_progress: bool, figures: bool) -> DemoResult:
    epochs, seed, n_train, hidden = config.epochs, config.seed, config.n_train, config.hidden
    started = time.perf_counter()
    torch.manual_seed(seed)
    data = load_digits(n_train, seed)

    linear = nn.Sequential(nn.Linear(64, 10))  # the seed's network: no hidden layer
    metrics: list[Any] = [EI(input=data.x_train[:1])]
    if _has("foresight.gns", "GradientNoiseScale"):
        metrics.append(GradientNoise())
    seed_run = _Run(linear, config, seed)
    seed_monitor = Monitor(linear, metrics, unit="epoch")

    hidden_run = None
    hidden_monitors: list[Monitor] = []
    hidden_metrics: list[Any] = []
    if hidden:
        torch.manual_seed(seed + 1)
        net = _hidden_net(config.hidden_width)
        if _has("foresight.ib", "information_plane"):
            x_all = torch.cat([data.x_train, data.x_test])
            y_all = torch.cat([data.y_train, data.y_test])
            ib = InformationPlane(x_all, y_all, bins=config.ib_bins)
            hidden_metrics.append(ib)
            hidden_monitors.append(Monitor(net, [ib], unit="epoch",
                                           schedule=log_spaced(dense_until=10, per_decade=12)))
        if _has("foresight.causal", "report"):
            causal = CausalEI(samples=config.causal_samples, bins=config.causal_bins, seed=seed)
            hidden_metrics.append(causal)
            hidden_monitors.append(Monitor(net, [causal], unit="epoch",
                                           schedule=log_spaced(dense_until=2, per_decade=5)))
        if hidden_monitors:
            hidden_run = _Run(net, config, seed + 1)

    records: dict[int, dict[str, Any]] = {}

    def measure(epoch: int) -> None:
        row = records.setdefault(epoch, {"epoch": epoch})
        record = seed_monitor.epoch_end(epoch=epoch, **seed_run.evaluate(data))
        if record is not None:
            row.update({k: v for k, v in record.items() if k != "epoch"})
        if hidden_run is not None:
            row.update({HIDDEN_PREFIX + k: v for k, v in hidden_run.evaluate(data).items()})
            for monitor in hidden_monitors:
                record = monitor.epoch_end(epoch=epoch)
                if record is not None:
                    row.update({k: v for k, v in record.items() if k not in ("epoch", "step")})

    bar = progress(range(epochs + 1), total=epochs + 1, desc="foresight demo",
                   enabled=show_progress)
    for epoch in bar:
        if epoch > 0:
            seed_run.train_epoch(data, [seed_monitor])
            if hidden_run is not None:
                hidden_run.train_epoch(data, hidden_monitors)
        measure(epoch)
        row = records[epoch]
        bar.set_postfix({"ei": row["ei"], "train": row["train_loss"], "test": row["test_loss"]})
    for monitor in [seed_monitor, *hidden_monitors]:
        monitor.close()

    rows = [records[e] for e in sorted(records)]
    wall = time.perf_counter() - started
    names = [getattr(m, "name", "") for m in metrics + hidden_metrics]
    result = DemoResult(config=config, records=rows, files=[], wall_s=wall, metrics=names)
    result.files = _write_outputs(out, result, figures)
    result.wall_s = time.perf_counter() - started
    _write_summary(out, result)
    return result


def _write_outputs(out: str, result: DemoResult, figures: bool) -> list[str]:
    csv_path = os.path.join(out, "demo.csv")
    sink = CSVSink(csv_path)
    for row in result.records:
        sink.write(row)
    sink.close()
    files = [csv_path, os.path.join(out, "summary.json")]
    if figures and _has_matplotlib():
        files += _write_figures(out, result)
    return files


def _has_matplotlib() -> bool:
    try:
        require("matplotlib", "foresight demo figures")
    except ImportError:
        return False
    return True


def _write_figures(out: str, result: DemoResult) -> list[str]:
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from foresight.plot.dashboard import training_dashboard
    from foresight.plot.ei import ei_training

    n = result.config.n_train
    ei_path = os.path.join(out, "ei.png")
    fig = ei_training(
        result.records, logx=True, legend_loc="center right",
        title=f"Single-layer softmax classifier, 8x8 digits, {n} training examples",
    )
    fig.savefig(ei_path, dpi=120)
    plt.close(fig)

    hidden_losses = (HIDDEN_PREFIX + "train_loss", HIDDEN_PREFIX + "test_loss")
    dash_path = os.path.join(out, "dashboard.png")
    fig = training_dashboard(
        result.records, logx=True,
        losses_for={p: hidden_losses for p in ("i_xt/", "i_ty/", "causal_ei/", "ei_parts/",
                                                "sensitivity/", "causal_degeneracy/")},
        exclude=(*hidden_losses, HIDDEN_PREFIX + "test_accuracy", "test_accuracy"), ncols=3,
        title=f"foresight demo: the single-layer classifier (EI, noise scale) and a "
              f"64-{result.config.hidden_width}-10 tanh network (information plane, causal EI)",
    )
    fig.savefig(dash_path, dpi=100)
    plt.close(fig)
    width = result.config.hidden_width
    return [ei_path, dash_path, *_metric_figures(out, result.records, plt, width)]


def _metric_figures(out: str, records: list[dict[str, Any]], plt: Any, width: int) -> list[str]:
    """The metric owners' own figures, for the metrics that were measured."""
    files = []
    ib_rows = [
        {"epoch": r["epoch"], "layer": k[len("i_xt/"):], "i_xt": v, "i_ty": r[f"i_ty/{k[5:]}"]}
        for r in records for k, v in r.items()
        if k.startswith("i_xt/") and f"i_ty/{k[5:]}" in r
    ]
    if ib_rows and _has("foresight.plot.ib", "information_plane_plot"):
        from foresight.plot.ib import information_plane_plot

        path = os.path.join(out, "information_plane.png")
        fig = information_plane_plot(
            ib_rows, title=f"Information plane of the 64-{width}-10 tanh network (binning)"
        )
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    measured = [r for r in records if any(k.startswith("sensitivity/") for k in r)]
    if measured and _has("foresight.plot.causal", "causal_plane"):
        from foresight.plot.causal import causal_plane

        path = os.path.join(out, "causal_plane.png")
        fig = causal_plane(
            measured, title=f"Causal plane of the 64-{width}-10 tanh network's layers"
        )
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files


def phases(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Turning points of the EI curve and the losses (what the seed's figure describes)."""
    pts = [(r["epoch"], r["ei"], r["train_loss"], r["test_loss"]) for r in records if "ei" in r]
    if len(pts) < 3:
        return {}
    epochs = [p[0] for p in pts]
    ei = [p[1] for p in pts]
    test = [p[3] for p in pts]
    early = max(1, len(pts) // 5)
    peak = max(range(early + 1), key=lambda i: ei[i])
    trough = min(range(peak, len(pts)), key=lambda i: ei[i])
    best_test = min(range(len(pts)), key=lambda i: test[i])
    return {
        "ei_start": ei[0],
        "ei_early_peak": {"epoch": epochs[peak], "ei": ei[peak]},
        "ei_trough_after_peak": {"epoch": epochs[trough], "ei": ei[trough]},
        "ei_end": ei[-1],
        "test_loss_min": {"epoch": epochs[best_test], "test_loss": test[best_test]},
        "test_loss_end": test[-1],
        "train_loss_end": pts[-1][2],
    }


def _write_summary(out: str, result: DemoResult) -> None:
    last = result.records[-1]
    summary = {
        "foresight": foresight.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "config": asdict(result.config),
        "metrics": result.metrics,
        "wall_seconds": round(result.wall_s, 2),
        "epochs_measured": len(result.records),
        "phases": phases(result.records),
        "final": {k: v for k, v in last.items() if isinstance(v, (int, float))},
        "files": [os.path.basename(f) for f in result.files],
    }
    result.summary = summary
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(_finite(summary), f, indent=2, allow_nan=False, default=str)
        f.write("\n")


def _finite(value: Any) -> Any:
    """NaN and infinities become ``None`` (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
