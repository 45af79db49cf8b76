r"""Does EI predict overfitting? The seed's headline claim, tested over many runs.

The 2020 README showed one run of a single-layer softmax network in which the effective
information (EI) of the weight graph jumps, decays, and then climbs steadily while the test loss
rises -- "EI tracks overfitting". This study trains many runs the way the seed (and
``foresight demo``) did -- plain mini-batch SGD, batches of 32, long enough to overfit clearly --
on scikit-learn's bundled 8x8 digits (:func:`foresight.data.digits`, the rest of the 1,797
images as test set), over

* seeds (each seed draws its own training subset, initial weights and batch order),
* training-set sizes ``n_train`` (100, 300, 1000),
* learning rates (0.1, 0.5),
* two networks: the seed's single layer ``64-10`` and a hidden-layer variant ``64-32-10``
  (tanh),

for ``36 n_train / lr`` steps (single layer) or ``10 n_train / lr`` steps (hidden layer), which
puts the test-loss minimum in the first fifth or so of each run. Every ``steps / 400`` steps
(and at log-spaced steps before that) it records the train and test loss and EI with each of
the three norms (``lin``, ``soft``, ``sig``; they measure the same weights, so the norms share
the runs). Each EI costs a few hundred microseconds: :func:`foresight.ei.ei` with ``shapes=``
computed once per network.

For each run and norm, :func:`foresight.demo.phases` gives the test-loss minimum :math:`t^*`,
EI's first maximum and minimum (turning points with a hysteresis of 5% of EI's range), EI's
trend after :math:`t^*` (least-squares slope, Spearman correlation with the step) and whether
EI's first minimum comes before :math:`t^*` (an early warning) and by how many steps. The
fractions are reported with 95% Wilson score intervals. ``phase 3`` is the seed's claim: EI
climbs (rank correlation with the step at least 0.5, and a rise larger than the hysteresis)
while the test loss rises.

The seeds of one configuration are trained together as a batch of independent networks
(``torch.bmm`` and hand-written backpropagation; each network takes the SGD step of its own mean
loss, which is ``nn.Linear`` + ``torch.optim.SGD`` per seed to rounding, see
``tests/test_seed_claim_study.py``): a few times faster on a CPU than one autograd loop per run.

Run: ``python examples/seed_claim_study.py`` (``make repro``): about 15-25 minutes on 2 cores
(``--procs 2``, the default). Writes ``seed-claim-study/runs.csv`` (one row per run and norm),
``seed-claim-study/summary.json``, ``docs/figures/seed_claim_study.png`` and the table
``docs/seed_claim_table.inc`` shown on the docs page ``docs/seed_claim.rst``.
``--quick`` runs 3 seeds.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import foresight.ei as fei
from foresight import data
from foresight.demo import PROMINENCE, MeasureSchedule, phases, spearman

ROOT = Path(__file__).resolve().parents[1]
NORMS = {"lin": fei.lin_norm, "soft": fei.soft_norm, "sig": fei.sig_norm}
MODELS = {"linear": 0, "hidden": 32}  # hidden width (0: the seed's single layer)
STEPS_PER = {"linear": 36, "hidden": 10}  # steps = STEPS_PER * n_train / lr
SEEDS = tuple(range(20))
N_TRAIN = (100, 300, 1000)
LRS = (0.1, 0.5)
BATCH = 32
POINTS = 400  # measurements per run on the linear schedule
Z95 = 1.959963984540054


# -- training ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One cell of the grid; its seeds are trained together."""

    model: str
    n_train: int
    lr: float
    seeds: tuple[int, ...]
    steps: int
    every: int
    batch_size: int = BATCH


def make_config(model: str, n_train: int, lr: float, seeds: Sequence[int],
                scale: float = 1.0, points: int = POINTS) -> Config:
    steps = int(round(scale * STEPS_PER[model] * n_train / lr))
    every = max(1, steps // points)
    steps = every * math.ceil(steps / every)
    return Config(model, n_train, lr, tuple(seeds), steps, every)


def network(model: str, seed: int) -> nn.Sequential:
    """The network of ``seed`` (its initial weights are drawn right after ``manual_seed(seed)``,
    as in ``foresight demo``)."""
    torch.manual_seed(seed)
    width = MODELS[model]
    if width == 0:
        return nn.Sequential(nn.Linear(64, 10))
    return nn.Sequential(nn.Linear(64, width), nn.Tanh(), nn.Linear(width, 10))


class BatchedNets:
    r"""Independent copies of one architecture (Linear layers with tanh between them), one per
    seed, trained together with batched matrix products and hand-written backpropagation.

    For seed :math:`s` with logits :math:`z_s` of its batch of :math:`B` examples, the gradient
    of its mean cross-entropy with respect to the logits is :math:`(\mathrm{softmax}(z_s) -
    \mathrm{onehot}(y_s)) / B`; it is propagated back through each layer (:math:`\partial h /
    \partial a = 1 - h^2` for tanh) and every weight takes the step :math:`-\mathrm{lr}\, g`,
    exactly what ``torch.optim.SGD`` (no momentum, no weight decay) does for each seed's own
    ``nn.Sequential`` (tests/test_seed_claim_study.py compares the two).
    """

    def __init__(self, nets: Sequence[nn.Sequential]) -> None:
        self.nets = list(nets)
        self.linears = [[m for m in net if isinstance(m, nn.Linear)] for net in self.nets]
        self.params: list[tuple[torch.Tensor, torch.Tensor]] = []
        for j in range(len(self.linears[0])):
            w = torch.stack([ls[j].weight.detach() for ls in self.linears]).clone()
            b = torch.stack([ls[j].bias.detach() for ls in self.linears]).clone()
            self.params.append((w, b))
        self._eye = torch.eye(self.params[-1][0].shape[1])

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[x, h_1, ..., logits]`` for ``x [S, B, in]``."""
        out = [x]
        for j, (w, b) in enumerate(self.params):
            a = torch.baddbmm(b.unsqueeze(1), out[-1], w.transpose(1, 2))
            out.append(torch.tanh(a) if j < len(self.params) - 1 else a)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x [S, B, in]`` -> logits ``[S, B, classes]``."""
        return self.activations(x)[-1]

    @torch.no_grad()
    def sgd_step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        """One SGD step of every seed on its own batch ``x [S, B, in]``, ``y [S, B]``."""
        acts = self.activations(x)
        g = torch.softmax(acts[-1], dim=-1)
        g -= self._eye[y]
        g /= x.shape[1]
        grads = []
        for j in range(len(self.params) - 1, -1, -1):
            w, _ = self.params[j]
            grads.append((torch.bmm(g.transpose(1, 2), acts[j]), g.sum(1)))
            if j > 0:
                g = torch.bmm(g, w) * (1 - acts[j] * acts[j])
        for (w, b), (gw, gb) in zip(reversed(self.params), grads):
            w.sub_(gw, alpha=lr)
            b.sub_(gb, alpha=lr)

    @torch.no_grad()
    def sync(self) -> None:
        """Copy the trained weights into the per-seed modules (which foresight.ei measures)."""
        for s, layers in enumerate(self.linears):
            for (w, b), layer in zip(self.params, layers):
                layer.weight.copy_(w[s])
                layer.bias.copy_(b[s])


def train(config: Config) -> list[dict[str, Any]]:
    """Train every seed of ``config``; return one run (a dict with its ``history``) per seed.

    Runs on one thread (restored afterwards): the matrices are small, and the study runs
    configurations in parallel processes instead.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(config)
    finally:
        torch.set_num_threads(threads)


def _train(config: Config) -> list[dict[str, Any]]:
    seeds = config.seeds
    splits = [data.digits(n_train=config.n_train, seed=s) for s in seeds]
    x_train = torch.stack([sp.x_train for sp in splits])
    y_train = torch.stack([sp.y_train for sp in splits])
    x_test = torch.stack([sp.x_test for sp in splits])
    y_test = torch.stack([sp.y_test for sp in splits])
    nets = BatchedNets([network(config.model, s) for s in seeds])
    shapes = [fei.get_shapes(net, sp.x_train[:1]) for net, sp in zip(nets.nets, splits)]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    orders = torch.stack([torch.randperm(config.n_train, generator=g) for g in generators])
    rows = torch.arange(len(seeds))[:, None]
    bs, n, lr = config.batch_size, config.n_train, config.lr
    schedule = MeasureSchedule(config.every)
    histories: list[list[dict[str, float]]] = [[] for _ in seeds]
    position = 0
    for step in range(config.steps + 1):
        if schedule(step) or step == config.steps:
            _measure(step, nets, shapes, x_train, y_train, x_test, y_test, histories)
        if step == config.steps:
            break
        if position + bs > n:
            orders = torch.stack([torch.randperm(n, generator=g) for g in generators])
            position = 0
        idx = orders[:, position:position + bs]
        position += bs
        nets.sgd_step(x_train[rows, idx], y_train[rows, idx], lr)
    base = {k: v for k, v in asdict(config).items() if k != "seeds"}
    return [{**base, "seed": s, "history": h} for s, h in zip(seeds, histories)]


@torch.no_grad()
def _measure(step, nets, shapes, x_train, y_train, x_test, y_test, histories) -> None:
    stats = {}
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        logits = nets(x)
        losses = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)
        accuracy = (logits.argmax(-1) == y).double().mean(1)
        stats[split] = (losses.tolist(), accuracy.tolist())
    nets.sync()
    for s, (net, shape) in enumerate(zip(nets.nets, shapes)):
        row = {"step": step,
               "train_loss": stats["train"][0][s], "test_loss": stats["test"][0][s],
               "train_accuracy": stats["train"][1][s], "test_accuracy": stats["test"][1][s]}
        for name, norm in NORMS.items():
            row[f"ei_{name}"] = fei.ei(net, shapes=shape, norm=norm)
        histories[s].append(row)


def run_grid(configs: Sequence[Config], procs: int = 1, verbose: bool = True) -> list[dict]:
    """Train every configuration (in ``procs`` processes), longest first."""
    order = sorted(configs, key=lambda c: -c.steps * (1 + MODELS[c.model] / 16))
    runs: list[dict] = []
    started = time.perf_counter()
    if procs > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(procs) as pool:
            for i, result in enumerate(pool.imap_unordered(_train_timed, order)):
                runs += _report(result, i, len(order), started, verbose)
    else:
        for i, config in enumerate(order):
            runs += _report(_train_timed(config), i, len(order), started, verbose)
    key = (list(MODELS), list(N_TRAIN), list(LRS))
    runs.sort(key=lambda r: (_index(key[0], r["model"]), r["n_train"], r["lr"], r["seed"]))
    return runs


def _index(values: list, value: Any) -> int:
    return values.index(value) if value in values else len(values)


def _train_timed(config: Config) -> tuple[Config, list[dict], float]:
    t0 = time.perf_counter()
    return config, train(config), time.perf_counter() - t0


def _report(result, i, total, started, verbose) -> list[dict]:
    config, runs, seconds = result
    if verbose:
        print(f"[{i + 1}/{total}] {config.model} n_train={config.n_train} lr={config.lr} "
              f"{len(config.seeds)} seeds x {config.steps} steps: {seconds:.0f} s "
              f"(elapsed {time.perf_counter() - started:.0f} s)", flush=True)
    return runs


# -- analysis --------------------------------------------------------------------------------------


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    r"""Wilson score interval for a binomial proportion :math:`k/n`:

    .. math::
        \frac{\hat p + z^2/2n \pm z \sqrt{\hat p(1-\hat p)/n + z^2/4n^2}}{1 + z^2/n}

    ``(nan, nan)`` when ``n == 0``.
    """
    if n == 0:
        return math.nan, math.nan
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def analyse(runs: Sequence[dict], prominence: float = PROMINENCE,
            norms: Sequence[str] = tuple(NORMS)) -> list[dict[str, Any]]:
    """One row per run and norm: the configuration and what :func:`phases` measured."""
    rows = []
    for run in runs:
        for norm in norms:
            p = phases(run["history"], ei=f"ei_{norm}", prominence=prominence)
            first_max, first_min = p["ei_first_max"], p["ei_first_min"]
            after, before = p["after_min"], p["before_min"]
            t_star = p["test_loss_min"]["step"]
            rows.append({
                "model": run["model"], "n_train": run["n_train"], "lr": run["lr"],
                "seed": run["seed"], "steps": run["steps"], "norm": norm,
                "overfits": p["overfits"],
                "test_loss_min_step": t_star,
                "test_loss_min": p["test_loss_min"]["test_loss"],
                "test_loss_end": p["test_loss_end"],
                "test_loss_slope_after": after["test_loss_slope_per_10k"],
                "ei_first_max_step": first_max["step"] if first_max else None,
                "ei_first_min_step": first_min["step"] if first_min else None,
                "ei_first_min_confirmed": first_min["confirmed_step"] if first_min else None,
                "three_phase_shape": bool(first_max and first_min
                                          and first_max["step"] < first_min["step"]),
                "ei_change_after": after["ei_change"],
                "ei_slope_after": after["ei_slope_per_10k"],
                "ei_spearman_after": after["ei_spearman"],
                "ei_slope_before": before["ei_slope_per_10k"],
                "phase3": p["phase3"],
                "ei_min_precedes": p["ei_min_precedes_test_min"],
                "ei_min_confirmed_before": bool(first_min
                                                and first_min["confirmed_step"] < t_star),
                "lead": p["lead"],
                "delta": p["delta"],
            })
    return rows


def _fraction(rows: Sequence[dict], test) -> dict[str, Any]:
    k = sum(1 for r in rows if test(r))
    lo, hi = wilson(k, len(rows))
    return {"k": k, "n": len(rows), "p": k / len(rows) if rows else math.nan, "lo": lo, "hi": hi}


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if not values:
        return math.nan, math.nan, math.nan
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def summarise(rows: Sequence[dict]) -> dict[str, Any]:
    """The fractions (with Wilson intervals) and lead statistics of a group of rows."""
    over = [r for r in rows if r["overfits"]]
    hits = [r for r in over if r["ei_min_precedes"]]
    leads = sorted(r["lead"] for r in hits)
    rel = sorted(r["ei_first_min_step"] / r["test_loss_min_step"] for r in hits)
    with_min = [r for r in over if r["ei_first_min_step"] is not None]
    timing = math.nan
    if len(with_min) > 2:
        timing = spearman([r["ei_first_min_step"] for r in with_min],
                          [r["test_loss_min_step"] for r in with_min])
    slopes = spearman([r["ei_slope_after"] for r in over],
                      [r["test_loss_slope_after"] for r in over]) if len(over) > 2 else math.nan
    within = []  # the same correlation inside each configuration (seeds only differ)
    for key in sorted({(r["n_train"], r["lr"]) for r in over}):
        sel = [r for r in over if (r["n_train"], r["lr"]) == key]
        if len(sel) > 2:
            rho = spearman([r["ei_slope_after"] for r in sel],
                           [r["test_loss_slope_after"] for r in sel])
            if not math.isnan(rho):
                within.append(rho)
    return {
        "runs": len(rows),
        "overfit": _fraction(rows, lambda r: r["overfits"]),
        "phase3": _fraction(over, lambda r: r["phase3"]),
        "three_phases": _fraction(over, lambda r: r["three_phase_shape"] and r["phase3"]),
        "steeper_after": _fraction(over, lambda r: r["ei_slope_after"] > r["ei_slope_before"]),
        "warning": _fraction(over, lambda r: r["ei_min_precedes"]),
        "warning_confirmed": _fraction(over, lambda r: r["ei_min_confirmed_before"]),
        "lead_quartiles": _quartiles(leads),
        "min_over_tstar_quartiles": _quartiles(rel),
        "timing_spearman": timing,
        "slope_spearman": slopes,
        "slope_spearman_within": statistics.median(within) if within else math.nan,
    }


def groups(rows: Sequence[dict]) -> list[tuple[str, str, list[dict]]]:
    out = []
    for model in MODELS:
        for norm in NORMS:
            sel = [r for r in rows if r["model"] == model and r["norm"] == norm]
            if sel:
                out.append((model, norm, sel))
    return out


def network_name(model: str) -> str:
    return "64-10" if MODELS[model] == 0 else f"64-{MODELS[model]}-10 tanh"


def _pct(f: dict[str, Any]) -> str:
    if not f["n"]:
        return "--"
    return f"{f['k']}/{f['n']} = {100 * f['p']:.0f}% [{100 * f['lo']:.0f}, {100 * f['hi']:.0f}]"


def _q(q: tuple[float, float, float], fmt: str = "{:,.0f}") -> str:
    if any(math.isnan(v) for v in q):
        return "--"
    return f"{fmt.format(q[1])} [{fmt.format(q[0])}, {fmt.format(q[2])}]"


def _r(v: float) -> str:
    return "--" if math.isnan(v) else f"{v:+.2f}"


#: The table's rows: label and how to format a group's summary.
MEASURES = (
    ("runs that overfit", lambda s: _pct(s["overfit"])),
    ("phase 3: EI climbs after the test-loss minimum", lambda s: _pct(s["phase3"])),
    ("all three phases: jump, decay, climb", lambda s: _pct(s["three_phases"])),
    ("EI climbs faster after the minimum than before it", lambda s: _pct(s["steeper_after"])),
    ("early warning: EI's first minimum comes first (hit rate)", lambda s: _pct(s["warning"])),
    ("lead of the warning in steps, median [IQR]", lambda s: _q(s["lead_quartiles"])),
    ("step of EI's minimum / step of the test-loss minimum, median [IQR]",
     lambda s: _q(s["min_over_tstar_quartiles"], "{:.4f}")),
    ("rank correlation of those two steps across runs", lambda s: _r(s["timing_spearman"])),
    ("rank correlation of EI's and the test loss's slope after the minimum: all runs",
     lambda s: _r(s["slope_spearman"])),
    ("... the same within one configuration (median over configurations)",
     lambda s: _r(s["slope_spearman_within"])),
)


def table_cells(rows: Sequence[dict]) -> list[tuple[str, ...]]:
    """Rows of the table: a header, then one row per measure, one column per network and norm."""
    gs = groups(rows)
    summaries = [summarise(sel) for _, _, sel in gs]
    cells = [("measure", *(f"{network_name(m)}, {n}_norm" for m, n, _ in gs))]
    for label, fmt in MEASURES:
        cells.append((label, *(fmt(s) for s in summaries)))
    return cells


def sensitivity(runs: Sequence[dict], norm: str = "lin",
                prominences: Sequence[float] = (0.01, 0.05, 0.2)) -> list[tuple[str, ...]]:
    """The EI turning-point results for other hysteresis thresholds (one norm)."""
    cells = [("network", "hysteresis (fraction of EI's range)", "phase 3",
              "early warning (hit rate)", "EI min step / test min step, median",
              "rank corr. of the two steps")]
    for model in MODELS:
        for prominence in prominences:
            selected = [r for r in runs if r["model"] == model]
            rows = analyse(selected, prominence=prominence, norms=(norm,))
            s = summarise(rows)
            cells.append((network_name(model), f"{prominence:g}", _pct(s["phase3"]),
                          _pct(s["warning"]), _q(s["min_over_tstar_quartiles"], "{:.4f}"),
                          _r(s["timing_spearman"])))
    return cells


def format_text(cells: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in cells)


def format_rst(cells: Sequence[Sequence[str]], title: str = "") -> str:
    """An RST ``list-table`` (included by docs/seed_claim.rst)."""
    lines = [f".. list-table:: {title}".rstrip(), "   :header-rows: 1", "   :stub-columns: 1", ""]
    for row in cells:
        lines.append(f"   * - {row[0]}")
        lines += [f"     - {c}" for c in row[1:]]
    return "\n".join(lines) + "\n"


# -- figure ----------------------------------------------------------------------------------------


def figure(rows: Sequence[dict], path: str | os.PathLike[str]) -> None:
    """EI slope against test-loss slope after the minimum, and the step of EI's first minimum
    against the step of the test-loss minimum; one point per run, one column per norm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    colors = {100: "tab:blue", 300: "tab:orange", 1000: "tab:green"}
    markers = {"linear": "o", "hidden": "^"}

    def dot(ax, x, y, r):
        color = colors.get(r["n_train"], "gray")
        filled = r["lr"] == max(LRS)
        ax.scatter(x, y, s=20, marker=markers[r["model"]], alpha=0.75, linewidths=0.8,
                   facecolors=color if filled else "none", edgecolors=color)

    fig, axes = plt.subplots(2, 3, figsize=(13, 8.5), layout="constrained")
    for c, norm in enumerate(NORMS):
        sel = [r for r in rows if r["norm"] == norm and r["overfits"]]
        ax = axes[0][c]
        for r in sel:
            dot(ax, r["test_loss_slope_after"], r["ei_slope_after"], r)
        ax.set_xscale("log")
        ys = [r["ei_slope_after"] for r in sel]
        if ys and min(ys) > 0:
            ax.set_yscale("log")
        elif ys:
            small = sorted(abs(y) for y in ys if y != 0)
            ax.set_yscale("symlog", linthresh=small[len(small) // 10])
            top = max(abs(y) for y in ys) * 2
            ax.set_ylim(-top, top)
            ax.axhline(0, color="0.4", lw=0.8)
        ax.set_xlabel("test-loss slope after its minimum (per 10k steps)")
        ax.set_ylabel("EI slope after the test-loss minimum\n(bits per 10k steps)")
        falling = sum(1 for y in ys if y <= 0)
        ax.set_title(f"{norm}_norm: EI falls after the minimum in {falling} of {len(sel)} runs",
                     fontsize="medium")
        ax.grid(alpha=0.25)

        ax = axes[1][c]
        timed = [r for r in sel if r["ei_first_min_step"] is not None]
        for r in timed:
            dot(ax, r["test_loss_min_step"], max(r["ei_first_min_step"], 1), r)
        if sel:
            lo = min(r["test_loss_min_step"] for r in sel)
            hi = max(r["test_loss_min_step"] for r in sel)
            ax.plot([1, hi * 2], [1, hi * 2], ":", color="0.4", lw=1)
            ax.set_xlim(lo / 2, hi * 2)
            ax.set_ylim(0.7, hi * 2)
        if sel and not timed:
            ax.text(0.5, 0.5, "EI has no turning point in any run:\nit rises all the way",
                    transform=ax.transAxes, ha="center", va="center", fontsize="medium",
                    color="0.3")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step of the test-loss minimum")
        ax.set_ylabel("step of EI's first minimum")
        ax.set_title(f"{norm}_norm: {len(timed)} of {len(sel)} runs have an EI minimum",
                     fontsize="medium")
        ax.grid(alpha=0.25)
    handles = [Line2D([], [], ls="", marker="s", color=col, label=f"n_train {n}")
               for n, col in colors.items()]
    handles += [Line2D([], [], ls="", marker=m, color="0.3", label=network_name(k))
                for k, m in markers.items()]
    handles += [Line2D([], [], ls="", marker="o", color="0.3", label=f"lr {max(LRS):g} (filled)"),
                Line2D([], [], ls="", marker="o", mfc="none", color="0.3",
                       label=f"lr {min(LRS):g} (open)"),
                Line2D([], [], ls=":", color="0.4", label="same step")]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False,
               fontsize="small")
    fig.suptitle("Does EI predict overfitting? One point per overfitting run: top, the trends "
                 "after the test-loss minimum; bottom, when EI's first minimum comes",
                 fontsize="medium")
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- command line ----------------------------------------------------------------------------------


def grid(seeds: Sequence[int], n_trains: Sequence[int] = N_TRAIN, lrs: Sequence[float] = LRS,
         models: Sequence[str] = tuple(MODELS), scale: float = 1.0,
         points: int = POINTS) -> list[Config]:
    return [make_config(m, n, lr, seeds, scale, points)
            for m in models for n in n_trains for lr in lrs]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="seeds per configuration")
    parser.add_argument("--quick", action="store_true", help="3 seeds")
    parser.add_argument("--procs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every run's steps (smoke tests; below 1 runs may not "
                        "overfit)")
    parser.add_argument("--out", default="seed-claim-study", help="directory for the run data")
    parser.add_argument("--analyse-only", action="store_true",
                        help="re-analyse OUT/histories.json.gz instead of training")
    parser.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "seed_claim_study.png"))
    parser.add_argument("--table", default=str(ROOT / "docs" / "seed_claim_table.inc"))
    args = parser.parse_args(argv)
    seeds = range(3 if args.quick else args.seeds)
    configs = grid(seeds, scale=args.scale)
    histories = os.path.join(args.out, "histories.json.gz")
    t0 = time.perf_counter()
    if args.analyse_only:
        with gzip.open(histories, "rt") as f:
            saved = json.load(f)
        runs = saved["runs"]
        configs = [Config(**{**c, "seeds": tuple(c["seeds"])}) for c in saved["configs"]]
        wall = saved["wall_seconds"]
    else:
        runs = run_grid(configs, procs=args.procs)
        wall = time.perf_counter() - t0
        os.makedirs(args.out, exist_ok=True)
        with gzip.open(histories, "wt") as f:
            json.dump({"runs": runs, "configs": [asdict(c) for c in configs],
                       "wall_seconds": wall, "procs": args.procs}, f)
    rows = analyse(runs)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "runs.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    n_seeds = len({r["seed"] for r in runs})
    summary = {
        "wall_seconds": round(wall, 1), "seeds": n_seeds, "runs": len(runs),
        "configs": [asdict(c) for c in configs],
        "groups": {f"{m}/{n}": summarise(sel) for m, n, sel in groups(rows)},
    }
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    main_table, sens_table = table_cells(rows), sensitivity(runs)
    print(f"\n{len(runs)} runs ({len(configs)} configurations x {n_seeds} seeds), trained in "
          f"{wall:.0f} s\n")
    print(format_text(main_table))
    print("\nlin_norm with other turning-point thresholds:\n")
    print(format_text(sens_table))
    Path(args.table).write_text(
        f".. {len(runs)} runs ({len(configs)} configurations x {n_seeds} seeds); generated by "
        "examples/seed_claim_study.py\n\n"
        + format_rst(main_table, "Fractions of runs with 95% Wilson intervals")
        + "\n" + format_rst(sens_table, "lin_norm: other thresholds for EI's turning points")
    )
    figure(rows, args.figure)
    print(f"\nwrote {args.out}/runs.csv, {args.out}/summary.json, {histories}, {args.table}, "
          f"{args.figure}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
