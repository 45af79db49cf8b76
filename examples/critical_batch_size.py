"""Predict the batch size, then prove it: B_crit measured beside B_simple and B_noise.

For two tasks -- the digits MLP (SGD) and a one-block character transformer on generated text
(Adam), both from :mod:`foresight.gns.tasks` -- this script

1. measures the critical batch size with :func:`foresight.gns.critical_batch_size` (every batch
   size trained to the target loss with the best of several learning rates, the front
   S = S_min (1 + B_crit / B) fitted, a bootstrap interval), with the tracked B_simple, a
   fresh-batch B_simple and B_noise measured where each run crossed the target;
2. for the digits task, follows B_crit through training by branching from checkpoints of the
   smallest batch size's run (:func:`foresight.gns.critical_batch_size_branched`);
3. trains once more with a batch-size warmup (:class:`foresight.gns.BatchSizeWarmup`): start at
   the smallest batch size, grow the batch with the tracked B_simple (resolved estimates only),
   learning rate = the sweep's best learning rate for the current batch size; and compares its
   steps to the target with the fixed batch sizes.

Prints one table per task and writes ``critical_digits.png`` and ``critical_chars.png`` to
``--out`` (default: ``docs/figures``). ``--quick`` runs a smaller version (the slow test).

Run: ``python examples/critical_batch_size.py`` (several minutes on two cores).
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings
from typing import Any

import torch

from foresight.gns import (
    BatchSizeWarmup,
    GradientNoiseScale,
    critical_batch_size,
    critical_batch_size_branched,
)
from foresight.gns.tasks import Task, char_transformer, digits_mlp


def measure(task: Task, *, seed: int, quick: bool) -> Any:
    batch_sizes = task.batch_sizes[1::2] if quick else task.batch_sizes
    lrs = task.lrs[::2] if quick and len(task.lrs) > 6 else task.lrs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the notes are printed with the table
        return critical_batch_size(
            task.model_fn, task.loss_fn, task.sample, batch_sizes=sorted(set(batch_sizes)),
            target_loss=task.target_loss, eval_data=task.eval_data, lrs=lrs,
            optimizer=task.optimizer, seed=seed, progress=not quick, b_noise=True,
            noise_batch_size=256 if quick else 512,
        )


def branched(task: Task, result: Any, *, seed: int) -> Any:
    ref = next(r for r in result.runs if r["reached"])
    steps = int(ref["steps"])
    window = max(16, steps // 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return critical_batch_size_branched(
            task.model_fn, task.loss_fn, task.sample, batch_size=ref["batch_size"],
            lr=ref["lr"], eval_data=task.eval_data, window=window, ks=(1, 2, 4, 8, 16),
            checkpoints=sorted({max(1, steps // 16), steps // 8, steps // 4, steps // 2,
                                3 * steps // 4}),
            optimizer=task.optimizer, seed=seed, progress=False,
        )


def warmup_run(task: Task, result: Any, *, seed: int, update_every: int = 10,
               max_steps: int = 10_000) -> dict[str, Any]:
    """Train with the batch grown by the tracked B_simple; the sweep's learning-rate rule."""
    reached = [r for r in result.runs if r["reached"]]
    start = reached[0]["batch_size"]
    warmup = BatchSizeWarmup(start, result.lr_for(start),
                             max_batch_size=max(r["batch_size"] for r in reached),
                             lr_rule=result.lr_for)
    evaluate = task.eval_data
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = task.model_fn()
        opt = (torch.optim.SGD if task.optimizer == "sgd" else torch.optim.Adam)(
            model.parameters(), lr=warmup.lr)
        gen = torch.Generator().manual_seed(seed + 12345)
        examples = 0
        with GradientNoiseScale(model, beta=0.95) as gns:
            for step in range(1, max_steps + 1):
                x, y = task.sample(warmup.batch_size, gen)
                examples += warmup.batch_size
                task.loss_fn(model(x), y).backward()
                est = gns.step()
                opt.step()
                opt.zero_grad()
                model.eval()
                with torch.no_grad():
                    loss = float(task.loss_fn(model(evaluate[0]), evaluate[1]))
                model.train()
                if loss <= task.target_loss:
                    break
                if step % update_every == 0:
                    warmup.update(est)
                    warmup.apply(opt)
    return dict(steps=step, examples=examples, final_batch_size=warmup.batch_size,
                start_batch_size=start, reached=loss <= task.target_loss,
                schedule=[(h["update"] * update_every, h["batch_size"]) for h in warmup.history])


def front_steps(result: Any, examples: float) -> float:
    """Steps the fitted front needs for a fixed batch size using ``examples`` examples."""
    if not (math.isfinite(result.b_crit) and examples > result.e_min):
        return math.nan
    return result.s_min * (1.0 + 1.0 / (examples / result.e_min - 1.0))


def compare(result: Any, warm: dict[str, Any]) -> dict[str, Any]:
    fixed = [r for r in result.runs if r["reached"]]
    within = [r for r in fixed if r["examples"] <= warm["examples"]]
    best = min(within or fixed, key=lambda r: (r["steps"], r["examples"]))
    return dict(
        best_fixed_batch_size=best["batch_size"], best_fixed_steps=best["steps"],
        best_fixed_examples=best["examples"], front_steps_at_same_examples=front_steps(
            result, warm["examples"]),
        fewest_steps_any_fixed=min(r["steps"] for r in fixed),
    )


def summary(name: str, result: Any, warm: dict[str, Any], cmp: dict[str, Any],
            br: Any = None) -> dict[str, Any]:
    return dict(
        task=name, target_loss=result.target_loss, b_crit=result.b_crit,
        b_crit_low=result.interval[0], b_crit_high=result.interval[1],
        b_simple_tracker=result.b_simple, b_simple_tracker_lower=result.b_simple_lower,
        b_simple_batch=result.b_simple_batch, b_noise=result.b_noise,
        warmup_steps=warm["steps"], warmup_examples=warm["examples"],
        warmup_batch=f"{warm['start_batch_size']}->{warm['final_batch_size']}",
        warmup_reached=warm["reached"], **cmp,
        branched=[(r["step"], r["b_crit"], r["bound"]) for r in br.checkpoints] if br else None,
    )


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster version")
    parser.add_argument("--no-figure", action="store_true")
    parser.add_argument("--out", default=os.path.join("docs", "figures"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", default="digits,chars")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    makers = {"digits": digits_mlp, "chars": char_transformer}
    tables = {}
    for key in args.tasks.split(","):
        task = makers[key](seed=args.seed)
        t0 = time.time()
        result = measure(task, seed=args.seed, quick=args.quick)
        br = branched(task, result, seed=args.seed) if key == "digits" else None
        warm = warmup_run(task, result, seed=args.seed)
        cmp = compare(result, warm)
        tables[key] = summary(task.name, result, warm, cmp, br)
        print(f"== {task.name} ({time.time() - t0:.0f} s)")
        print(result)
        if br is not None:
            print(br)
        print(f"warmup: {warm['steps']} steps, {warm['examples']} examples, batch "
              f"{warm['start_batch_size']} -> {warm['final_batch_size']}; best fixed batch size "
              f"with at most as many examples: {cmp['best_fixed_batch_size']} in "
              f"{cmp['best_fixed_steps']} steps ({cmp['best_fixed_examples']} examples); the "
              f"fitted front at the same examples: {cmp['front_steps_at_same_examples']:.1f} "
              f"steps")
        if not args.no_figure:
            from foresight.plot.critical import critical_batch_size_figure

            fig = critical_batch_size_figure(result, br)
            fig.suptitle(task.name, fontsize=10)
            os.makedirs(args.out, exist_ok=True)
            path = os.path.join(args.out, f"critical_{key}.png")
            fig.savefig(path, dpi=110)
            print(f"saved {path}")
    return tables


if __name__ == "__main__":
    main()
