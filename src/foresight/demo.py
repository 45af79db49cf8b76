r"""``foresight demo``: the seed's headline experiment, trained the way the seed trained it.

A single-layer softmax classifier (``nn.Linear(64, 10)``, no hidden layer) is trained with plain
mini-batch SGD (batches of 32, learning rate 0.5, no momentum, no weight decay) on 300 of
scikit-learn's bundled 8x8 digits (:func:`foresight.data.digits`; the other 1,497 are the test
set) for 40,000 steps, long enough to overfit clearly. Every ``every`` steps (100 by default,
plus log-spaced steps before the first 100, where EI moves fastest) it records the effective
information of its weight graph (with determinism and degeneracy), the train and test loss and
accuracy, and the gradient noise scale of its own training steps. A small hidden-layer network
(64-4-10, tanh) is trained alongside on the same data to show what needs hidden layers: the
information plane of its representations and the causal (perturbational) EI of its layers,
measured on log-spaced steps.

Each metric joins in only if its module is installed, so the demo runs with whatever part of the
library is present. Outputs in ``out``:

* ``demo.csv`` -- one row per measurement (step), one column per quantity (``ei`` ...);
* ``summary.json`` -- the configuration, the run time, the final values and the turning points
  of the EI curve (:func:`phases`);
* ``ei.png`` -- the seed's figure: accuracy, train/test loss and EI against steps (linear axis),
  the test-loss minimum and the phases marked (:func:`foresight.plot.ei.ei_training`);
* ``dashboard.png`` -- one panel per metric, with the losses alongside;
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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

import foresight
from foresight._optional import require
from foresight._progress import progress
from foresight.monitor import EI, CausalEI, GradientNoise, InformationPlane, Monitor
from foresight.monitor.sinks import CSVSink, History
from foresight.results import CAUSAL_RECORD_KEYS, Record, Result, tidy
from foresight.schedule import log_spaced, never

HIDDEN_PREFIX = "hidden_"

#: Default turning-point threshold of :func:`phases`, as a fraction of the EI curve's range.
PROMINENCE = 0.05


@dataclass
class DemoConfig:
    """The experiment's settings (the defaults reproduce the README's figure)."""

    steps: int = 40_000
    seed: int = 0
    n_train: int = 300
    batch_size: int = 32
    lr: float = 0.5
    every: int = 100
    hidden: bool = True
    hidden_width: int = 4
    ib_bins: int = 8
    causal_bins: int = 8
    causal_samples: int = 8192


@dataclass
class DemoResult(Result):
    """What :func:`run` produced (``to_dict()``; ``to_records()``: the records, tidy)."""

    config: DemoConfig
    records: list[dict[str, Any]]
    files: list[str]
    wall_s: float
    metrics: list[str]
    summary: dict[str, Any] = field(default_factory=dict)

    metric = "demo"

    def to_records(self) -> list[Record]:
        """Every measured value of :attr:`records` as a tidy record (with its step)."""
        return tidy(self.records)

    def summary_table(self) -> str:
        """A short text table: each headline quantity at the start, its extremes, and the end.

        Noise-scale estimates that are not positive (unresolved: the :math:`|G|^2` estimate is
        below its own noise) are left out of the ``b_simple`` row and counted in a note below.
        """
        last = self.records[-1]["step"]
        rows = [("quantity", "step 0", "min", "max", f"step {last}")]
        keys = [k for k in ("ei", "determinism", "degeneracy", "train_loss", "test_loss",
                            "train_accuracy", "test_accuracy", "b_simple")
                if any(k in r for r in self.records)]
        keys += [k for k in History(self.records).keys()
                 if k.startswith(("i_xt/", "i_ty/", CAUSAL_RECORD_KEYS["ei"] + "/",
                                  CAUSAL_RECORD_KEYS["ei_parts"] + "/"))]
        notes = []
        for key in keys:
            values = [(r["step"], r[key]) for r in self.records
                      if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if key == "b_simple":
                measured = sum(1 for r in self.records if key in r)
                values = [(r["step"], r[key]) for r in self.records
                          if key in r and _noise_scale_note(r) is None]
                if len(values) < measured:
                    notes.append(f"b_simple: {measured - len(values)} of {measured} estimates "
                                 "unresolved (|G|^2 not above its noise) and left out")
            if not values:
                continue
            ys = [v for _, v in values]
            first = values[0][1] if values[0][0] == 0 else math.nan
            end = values[-1][1] if values[-1][0] == last else math.nan
            rows.append((key, _fmt(first), _fmt(min(ys)), _fmt(max(ys)), _fmt(end)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines + notes)


def _fmt(v: float) -> str:
    return "" if not math.isfinite(v) else f"{v:.4g}"


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
    """:func:`foresight.data.digits`: ``n_train`` training examples (stratified, chosen with
    ``seed``), the rest of the 1,797 for testing."""
    from foresight import data

    split = data.digits(n_train=n_train, seed=seed)
    return _Data(split.x_train, split.y_train, split.x_test, split.y_test)


class MeasureSchedule:
    """Every ``every`` steps, plus log-spaced steps before the first ``every``.

    The early steps are where EI jumps; a linear schedule alone would draw the jump as one
    straight segment.

    >>> [s for s in range(250) if MeasureSchedule(100)(s)]
    [0, 1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 32, 40, 50, 63, 79, 100, 200]
    """

    def __init__(self, every: int) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.every = every
        self._early = log_spaced(dense_until=5, per_decade=10)

    def __call__(self, step: int) -> bool:
        return step % self.every == 0 or (step < self.every and self._early(step))


class _Trainer:
    """One network, its SGD optimizer and its shuffled mini-batches (the remainder of each epoch
    is dropped, like ``DataLoader(shuffle=True, drop_last=True)``)."""

    def __init__(self, model: nn.Module, data: _Data, config: DemoConfig, seed: int) -> None:
        self.model = model
        self.data = data
        self.optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.batch_size = config.batch_size
        self.order = torch.randperm(len(data.x_train), generator=self.generator)
        self.position = 0
        self.epochs = 0

    def step(self, monitors: Sequence[Monitor]) -> None:
        n = len(self.data.x_train)
        if self.position + self.batch_size > n:
            self.order = torch.randperm(n, generator=self.generator)
            self.position = 0
            self.epochs += 1
            for monitor in monitors:
                monitor.epoch_end()
        idx = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        self.model.train()
        self.optimizer.zero_grad()
        loss = nn.functional.cross_entropy(self.model(self.data.x_train[idx]),
                                           self.data.y_train[idx])
        loss.backward()
        for monitor in monitors:  # before optimizer.step(): the noise-scale tracker reads .grad
            monitor.step()
        self.optimizer.step()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        d = self.data
        out_train = self.model(d.x_train)
        out_test = self.model(d.x_test)
        return {
            "train_loss": float(nn.functional.cross_entropy(out_train, d.y_train)),
            "test_loss": float(nn.functional.cross_entropy(out_test, d.y_test)),
            "train_accuracy": float((out_train.argmax(1) == d.y_train).float().mean()),
            "test_accuracy": float((out_test.argmax(1) == d.y_test).float().mean()),
        }


def _hidden_net(width: int) -> nn.Sequential:
    layers = [("fc1", nn.Linear(64, width)), ("tanh", nn.Tanh()), ("fc2", nn.Linear(width, 10))]
    return nn.Sequential(OrderedDict(layers))


def run(
    out: str | os.PathLike[str] = "foresight-demo",
    steps: int = 40_000,
    seed: int = 0,
    n_train: int = 300,
    batch_size: int = 32,
    lr: float = 0.5,
    every: int = 100,
    hidden: bool = True,
    show_progress: bool = True,
    figures: bool = True,
) -> DemoResult:
    """Run the demo and write its CSV, JSON summary and figures to ``out``.

    Args:
        out: output directory (created if needed).
        steps: SGD steps (mini-batches); the default 40,000 overfits clearly in about a minute.
        seed: seeds the data split, the initial weights and the batch order.
        n_train: training examples (a small subset, so that the model overfits).
        batch_size: examples per SGD step (at most ``n_train``).
        lr: SGD learning rate.
        every: measure every ``every`` steps (and at log-spaced steps before the first).
        hidden: also train the hidden-layer network for the information plane and causal EI.
        show_progress: draw a progress bar on stderr.
        figures: write the PNG figures (needs matplotlib).

    Returns:
        A :class:`DemoResult` (records, written files, wall time).

    Raises:
        ValueError: a setting out of range (named in the message).
    """
    config = DemoConfig(steps=steps, seed=seed, n_train=n_train, batch_size=batch_size, lr=lr,
                        every=every, hidden=hidden)
    _check(config)
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: threads cost more than they save
    try:
        return _run(config, out, show_progress, figures)
    finally:
        torch.set_num_threads(threads)


def _check(config: DemoConfig) -> None:
    def positive_int(name: str, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")

    for name in ("steps", "n_train", "batch_size", "every"):
        positive_int(name, getattr(config, name))
    if config.batch_size > config.n_train:
        raise ValueError(f"batch_size ({config.batch_size}) must be at most n_train "
                         f"({config.n_train})")
    if not (isinstance(config.lr, (int, float)) and math.isfinite(config.lr) and config.lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {config.lr!r}")


def _run(config: DemoConfig, out: str, show_progress: bool, figures: bool) -> DemoResult:
    seed = config.seed
    started = time.perf_counter()
    torch.manual_seed(seed)
    data = load_digits(config.n_train, seed)
    schedule = MeasureSchedule(config.every)

    linear = nn.Sequential(nn.Linear(64, 10))  # the seed's network: no hidden layer
    metrics: list[Any] = [EI(input=data.x_train[:1])]
    if _has("foresight.gns", "GradientNoiseScale"):
        metrics.append(GradientNoise())
    seed_run = _Trainer(linear, data, config, seed)
    seed_monitor = Monitor(linear, metrics, unit="step", schedule=never)

    hidden_run = None
    hidden_monitors: list[tuple[Monitor, Any]] = []
    hidden_metrics: list[Any] = []
    if config.hidden:
        torch.manual_seed(seed + 1)
        net = _hidden_net(config.hidden_width)
        if _has("foresight.ib", "information_plane"):
            x_all = torch.cat([data.x_train, data.x_test])
            y_all = torch.cat([data.y_train, data.y_test])
            ib = InformationPlane(x_all, y_all, bins=config.ib_bins)
            hidden_metrics.append(ib)
            hidden_monitors.append((Monitor(net, [ib], unit="step", schedule=never),
                                    log_spaced(dense_until=10, per_decade=12)))
        if _has("foresight.causal", "report"):
            causal = CausalEI(samples=config.causal_samples, bins=config.causal_bins, seed=seed)
            hidden_metrics.append(causal)
            hidden_monitors.append((Monitor(net, [causal], unit="step", schedule=never),
                                    log_spaced(dense_until=2, per_decade=5)))
        if hidden_monitors:
            hidden_run = _Trainer(net, data, config, seed + 1)

    records: dict[int, dict[str, Any]] = {}

    def measure(step: int) -> None:
        due = [m for m, sched in hidden_monitors if sched(step) or step == config.steps]
        main = schedule(step) or step == config.steps
        if not main and not due:
            return
        row = records.setdefault(step, {"step": step, "epoch": seed_run.epochs})
        if main:
            record = seed_monitor.measure(**seed_run.evaluate())
            row.update({k: v for k, v in record.items() if k not in ("step", "epoch")})
        if hidden_run is not None:
            row.update({HIDDEN_PREFIX + k: v for k, v in hidden_run.evaluate().items()})
            for monitor in due:
                record = monitor.measure()
                row.update({k: v for k, v in record.items() if k not in ("step", "epoch")})

    hidden_only = [m for m, _ in hidden_monitors]
    bar = progress(range(config.steps + 1), total=config.steps + 1, desc="foresight demo",
                   enabled=show_progress)
    for step in bar:
        if step > 0:
            seed_run.step([seed_monitor])
            if hidden_run is not None:
                hidden_run.step(hidden_only)
        measure(step)
        row = records.get(step)
        if row is not None and "ei" in row:
            bar.set_postfix({"ei": row["ei"], "train": row["train_loss"],
                             "test": row["test_loss"]})
    for monitor in [seed_monitor, *hidden_only]:
        monitor.close()

    rows = [records[s] for s in sorted(records)]
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

    c = result.config
    main_rows = [r for r in result.records if "ei" in r]
    ei_path = os.path.join(out, "ei.png")
    fig = ei_training(
        main_rows, x="step", phases=phases(main_rows), zoom=3 * c.every,
        title=(f"Single-layer softmax classifier, 8x8 digits: {c.n_train} training examples, "
               f"SGD (batch {c.batch_size}, lr {c.lr:g}), seed {c.seed}"),
    )
    fig.savefig(ei_path, dpi=120)
    plt.close(fig)

    hidden_losses = (HIDDEN_PREFIX + "train_loss", HIDDEN_PREFIX + "test_loss")
    dash_path = os.path.join(out, "dashboard.png")
    fig = training_dashboard(
        result.records, x="step", logx=True,
        losses_for={p: hidden_losses for p in ("i_xt/", "i_ty/", *(
            k + "/" for k in CAUSAL_RECORD_KEYS.values()))},
        exclude=(*hidden_losses, HIDDEN_PREFIX + "test_accuracy",
                 HIDDEN_PREFIX + "train_accuracy", "test_accuracy", "train_accuracy"),
        ncols=3,
        title=f"foresight demo: the single-layer classifier (EI, noise scale) and a "
              f"64-{c.hidden_width}-10 tanh network (information plane, causal EI)",
    )
    fig.savefig(dash_path, dpi=100)
    plt.close(fig)
    return [ei_path, dash_path, *_metric_figures(out, result.records, plt, c.hidden_width)]


def _metric_figures(out: str, records: list[dict[str, Any]], plt: Any, width: int) -> list[str]:
    """The metric owners' own figures, for the metrics that were measured."""
    files = []
    has_plane = any(k.startswith("i_xt/") for r in records for k in r)
    if has_plane and _has("foresight.plot.ib", "information_plane_plot"):
        from foresight.plot.ib import information_plane_plot

        path = os.path.join(out, "information_plane.png")
        # the figure reads the records themselves; the points are SGD steps, not epochs
        fig = information_plane_plot(
            records, x="step",
            title=f"Information plane of the 64-{width}-10 tanh network (binning)",
        )
        if len(fig.axes) > 1:  # the colour bar
            fig.axes[-1].set_ylabel("SGD step")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    sensitivity = CAUSAL_RECORD_KEYS["sensitivity"] + "/"
    measured = [r for r in records if any(k.startswith(sensitivity) for k in r)]
    if measured and _has("foresight.plot.causal", "causal_plane"):
        from foresight.plot.causal import causal_plane

        path = os.path.join(out, "causal_plane.png")
        fig = causal_plane(
            measured, x="step",
            title=f"Causal plane of the 64-{width}-10 tanh network's layers",
        )
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files


# -- the turning points of the EI curve ------------------------------------------------------------


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties given their average rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(a: Sequence[float], b: Sequence[float]) -> float:
    n = len(a)
    if n < 2:
        return math.nan
    ma, mb = sum(a) / n, sum(b) / n
    sab = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    saa = sum((x - ma) ** 2 for x in a)
    sbb = sum((y - mb) ** 2 for y in b)
    if saa == 0 or sbb == 0:
        return math.nan
    return sab / math.sqrt(saa * sbb)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's correlation of the average ranks); ``nan`` when
    either sequence is constant or shorter than 2.

    >>> spearman([1, 2, 3, 4], [10, 20, 15, 40])
    0.8
    """
    if len(a) != len(b):
        raise ValueError(f"spearman: sequences of different lengths ({len(a)}, {len(b)})")
    return _pearson(_ranks(list(a)), _ranks(list(b)))


def slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``y`` against ``x`` (``nan`` for fewer than 2 distinct ``x``).

    >>> slope([0, 1, 2], [1.0, 3.0, 5.0])
    2.0
    """
    n = len(x)
    if n < 2:
        return math.nan
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    if sxx == 0:
        return math.nan
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx


def turning_points(values: Sequence[float], delta: float) -> list[tuple[str, int, int]]:
    r"""Confirmed local extremes of a series, with hysteresis ``delta``.

    A maximum at index :math:`i` is confirmed at the first later index :math:`j` where the series
    has fallen more than ``delta`` below :math:`y_i` (the highest value since the previous
    minimum); a minimum likewise when the series has risen more than ``delta`` above it. Maxima and
    minima alternate. The first move larger than ``delta`` only sets the direction: the extreme
    it starts from is where the series starts (a wiggle smaller than ``delta`` before it is not
    a turning point), so it is not returned. Wiggles smaller than ``delta`` are ignored, so SGD
    noise does not make turning points.

    Returns:
        ``[(kind, index, confirmed_index), ...]`` with ``kind`` ``"max"`` or ``"min"``, in order.

    >>> turning_points([0.0, 1.0, 0.9, 0.5, 0.6, 2.0], delta=0.2)
    [('max', 1, 3), ('min', 3, 5)]
    """
    if not values:
        return []
    out: list[tuple[str, int, int]] = []
    hi = lo = 0  # the highest / lowest value since the last confirmed turning point
    looking: str | None = None  # None until the first move larger than delta
    for i, v in enumerate(values):
        if v > values[hi]:
            hi = i
        if v < values[lo]:
            lo = i
        if looking in (None, "max") and values[hi] - v > delta:
            if looking is not None:
                out.append(("max", hi, i))
            looking = "min"
            lo = min(range(hi, i + 1), key=values.__getitem__)
        elif looking in (None, "min") and v - values[lo] > delta:
            if looking is not None:
                out.append(("min", lo, i))
            looking = "max"
            hi = max(range(lo, i + 1), key=values.__getitem__)
    return out


def phases(
    history: Any,
    *,
    x: str = "step",
    ei: str = "ei",
    test_loss: str = "test_loss",
    prominence: float = PROMINENCE,
) -> dict[str, Any]:
    r"""The seed's three phases, measured: EI's turning points and its trend after the test-loss
    minimum.

    With the finite points :math:`(t_i, \text{EI}_i, L_i)` in order of ``x``:

    * ``test_loss_min``: the first :math:`t^* = \arg\min_t L`; ``overfits`` when :math:`t^*` is
      at least 3 points before the end, the test loss ends above its minimum and its Spearman
      rank correlation with ``x`` after :math:`t^*` is above 0.5 (it rises);
    * ``ei_first_max``, ``ei_first_min``: EI's first confirmed maximum (the end of the jump) and
      minimum (the end of the decay), from :func:`turning_points` with hysteresis
      :math:`\delta` = ``prominence`` :math:`\times` (max EI - min EI) (``None`` when there is
      none); ``confirmed_step`` is when a live observer would know it;
    * ``after_min``: EI's change from :math:`t^*` to the end, its least-squares slope (bits per
      10,000 ``x`` units) and Spearman correlation with ``x`` on :math:`[t^*, t_{end}]`, and the
      test loss's slope there; ``before_min`` the EI slope on :math:`[t^*/2, t^*]`;
    * ``phase3``: the seed's third phase -- the model overfits and EI climbs while the test loss
      rises (correlation at least 0.5 and a rise larger than :math:`\delta`);
    * ``ei_min_precedes_test_min`` and ``lead``: whether EI's first minimum comes before
      :math:`t^*`, and by how many units of ``x``.

    Args:
        history: records (``monitor.history``, a list of dicts), a ``pandas.DataFrame`` or a dict
            of columns.
        x, ei, test_loss: the column names.
        prominence: the turning-point threshold as a fraction of EI's range.

    Returns:
        A JSON-serialisable dict (empty when fewer than 3 points have all three columns).

    >>> rows = [{"step": 100 * i, "ei": e, "test_loss": t} for i, (e, t) in enumerate(
    ...     [(1.0, 2.0), (1.8, 1.0), (1.4, 0.6), (1.3, 0.5), (1.5, 0.55), (1.6, 0.6),
    ...      (1.7, 0.65)])]
    >>> p = phases(rows)
    >>> p["ei_first_max"]["step"], p["ei_first_min"]["step"], p["test_loss_min"]["step"]
    (100, 300, 300)
    >>> p["overfits"], p["phase3"], p["ei_min_precedes_test_min"]
    (True, True, False)
    """
    from foresight.plot._history import columns

    cols = columns(history)
    if any(k not in cols for k in (x, ei, test_loss)):
        return {}
    pts = sorted(
        (t, e, lo) for t, e, lo in zip(cols[x], cols[ei], cols[test_loss])
        if math.isfinite(t) and math.isfinite(e) and math.isfinite(lo)
    )
    if len(pts) < 3:
        return {}
    ts = [p[0] for p in pts]
    es = [p[1] for p in pts]
    ls = [p[2] for p in pts]
    n = len(pts)
    delta = prominence * (max(es) - min(es))
    turns = turning_points(es, delta) if delta > 0 else []
    first_max = next((t for t in turns if t[0] == "max"), None)
    first_min = next((t for t in turns if t[0] == "min"), None)
    best = min(range(n), key=ls.__getitem__)
    t_best = ts[best]
    after = range(best, n)
    rho_test = spearman([ts[i] for i in after], [ls[i] for i in after]) if n - best >= 3 else 0.0
    overfits = n - best >= 3 and ls[-1] > ls[best] and rho_test > 0.5
    rho_ei = spearman([ts[i] for i in after], [es[i] for i in after]) if n - best >= 3 else math.nan
    ei_change = es[-1] - es[best]
    per = 1e4
    before = [i for i in range(best + 1) if ts[i] >= t_best / 2]

    def point(turn: tuple[str, int, int] | None) -> dict[str, Any] | None:
        if turn is None:
            return None
        return {"step": _num(ts[turn[1]]), "ei": es[turn[1]],
                "confirmed_step": _num(ts[turn[2]])}

    precedes = first_min is not None and ts[first_min[1]] < t_best
    return {
        "x": x,
        "delta": delta,
        "prominence": prominence,
        "ei_start": es[0],
        "ei_end": es[-1],
        "ei_first_max": point(first_max),
        "ei_first_min": point(first_min),
        "test_loss_min": {"step": _num(t_best), "test_loss": ls[best]},
        "test_loss_end": ls[-1],
        "overfits": bool(overfits),
        "after_min": {
            "points": n - best,
            "ei_change": ei_change,
            "ei_slope_per_10k": slope([ts[i] for i in after], [es[i] for i in after]) * per,
            "ei_spearman": rho_ei,
            "test_loss_slope_per_10k":
                slope([ts[i] for i in after], [ls[i] for i in after]) * per,
            "test_loss_spearman": rho_test,
        },
        "before_min": {
            "points": len(before),
            "ei_slope_per_10k": slope([ts[i] for i in before], [es[i] for i in before]) * per,
        },
        "phase3": bool(overfits and rho_ei >= 0.5 and ei_change > delta),
        "ei_min_precedes_test_min": bool(precedes),
        "lead": _num(t_best - ts[first_min[1]]) if first_min is not None else None,
    }


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else v


# -- summary.json ----------------------------------------------------------------------------------


def _noise_scale_note(last: Mapping[str, Any]) -> str | None:
    """Why the last ``b_simple`` is not reported, or ``None`` when it is a resolved estimate."""
    if "b_simple" not in last:
        return None
    b = last["b_simple"]
    g2 = last.get("grad_sq_norm", math.nan)
    g2_known = isinstance(g2, (int, float)) and math.isfinite(g2)
    if isinstance(b, (int, float)) and math.isfinite(b) and b > 0 and not (g2_known and g2 <= 0):
        return None
    if g2_known and g2 <= 0:
        return ("unresolved: the |G|^2 estimate is not positive (the true gradient is below the "
                "estimator's noise once the model fits its training set), so B_simple is not "
                "meaningful")
    return "unresolved: the noise-scale estimate is not a positive finite number"


def _write_summary(out: str, result: DemoResult) -> None:
    main_rows = [r for r in result.records if "ei" in r]
    last = main_rows[-1]
    final = {k: v for k, v in last.items() if isinstance(v, (int, float))}
    note = _noise_scale_note(last)
    if note is not None:
        final["b_simple"] = None
        final["b_simple_note"] = note
    summary = {
        "foresight": foresight.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "config": asdict(result.config),
        "metrics": result.metrics,
        "wall_seconds": round(result.wall_s, 2),
        "measurements": len(main_rows),
        "phases": phases(main_rows),
        "final": final,
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
