"""``foresight batch-size``: measure the critical batch size and the noise scale that predicts it.

By default it runs :func:`foresight.gns.critical_batch_size` on the bundled digits task
(:func:`foresight.gns.tasks.digits_mlp`, about 20 s on two cores); with ``MODULE:FACTORY``
and ``--data MODULE:FACTORY`` on your own model and data. It prints the table, writes a figure
(steps against examples with the fitted front and :math:`B_\\text{crit}`; :math:`B_\\text{simple}`
over training with :math:`B_\\text{crit}` beside it) and, with ``--json``, the whole result.

The ``--data`` factory is called without arguments and returns a
:class:`foresight.gns.tasks.Task`, or a mapping (or object) with ``sample``
(``sample(batch_size, generator) -> (inputs, targets)``) and ``eval_data`` (``(inputs,
targets)`` or ``model -> loss``), and optionally ``loss_fn`` (default: cross-entropy),
``target_loss``, ``batch_sizes``, ``lrs`` and ``optimizer``; the command-line options override
them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import warnings
from typing import Any

__all__ = ["add_parser", "run"]


def _user_error(message: str) -> Exception:
    from foresight.cli import UserError

    return UserError(message)


def _numbers(text: str, kind: type, name: str) -> list:
    try:
        values = [kind(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        values = []
    if not values:
        raise _user_error(f"{name} {text!r} is not a comma-separated list of numbers")
    return values


def add_parser(sub: Any) -> None:
    """Register the ``batch-size`` subcommand on an ``add_subparsers()`` object."""
    p = sub.add_parser(
        "batch-size",
        help="measure the critical batch size and compare it with the noise scale",
        description=(
            "Train to a target loss at several batch sizes (the best of several learning rates "
            "each), fit S = S_min (1 + B_crit / B), and report B_crit beside the gradient noise "
            "scale B_simple tracked during the runs. Without MODEL: the bundled digits task."
        ),
    )
    p.add_argument("model", nargs="?", metavar="MODULE:FACTORY",
                   help="a factory of the model (default: the bundled digits MLP)")
    p.add_argument("--data", metavar="MODULE:FACTORY",
                   help="a factory returning the sampler and evaluation data (needed with MODEL)")
    p.add_argument("--target-loss", type=float, help="the loss to reach on the evaluation data")
    p.add_argument("--batch-sizes", metavar="LIST", help="e.g. 4,8,16,32,64,128,256,512")
    p.add_argument("--lrs", metavar="LIST", help="learning rates, e.g. 0.05,0.1,0.2,0.4,0.8")
    p.add_argument("--optimizer", choices=("sgd", "adam"), help="default: sgd (or the task's)")
    p.add_argument("--max-steps", type=int, default=10_000, help="default: 10000")
    p.add_argument("--repeats", type=int, default=1,
                   help="data streams per learning rate, median steps (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="default: 0")
    p.add_argument("--b-noise", action="store_true", help="also measure B_noise at the target")
    p.add_argument("--branched", action="store_true",
                   help="also follow B_crit through training by branching from checkpoints of "
                   "the smallest batch size's run (Merrill et al. 2025)")
    p.add_argument("--out", default="batch-size.png", help="figure file (default: batch-size.png)")
    p.add_argument("--no-figure", action="store_true", help="write no figure")
    p.add_argument("--json", metavar="FILE", help="write the whole result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int,
                   help="torch threads (default: 1 for the bundled task, whose models are tiny; "
                   "torch's default otherwise)")
    p.set_defaults(func=run)


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _load_task(args: argparse.Namespace) -> Any:
    from foresight.cli import build_model, load_factory

    if args.model is None:
        if args.data:
            raise _user_error("--data needs a MODEL (MODULE:FACTORY) as well")
        from foresight.gns.tasks import digits_mlp

        return digits_mlp(seed=args.seed)
    if not args.data:
        raise _user_error("with a MODEL, --data MODULE:FACTORY must give the sampler and the "
                          "evaluation data")
    build_model(args.model)  # fails early with one line if the model cannot be built
    factory = load_factory(args.data)
    try:
        data = factory()
    except Exception as exc:
        raise _user_error(f"calling {args.data}() failed: {type(exc).__name__}: {exc}") from None
    for name in ("sample", "eval_data"):
        if _field(data, name) is None:
            raise _user_error(f"{args.data}() must return a mapping or object with {name!r}")
    import torch.nn.functional as F

    from foresight.gns.tasks import Task

    model_factory = load_factory(args.model)
    return Task(
        name=f"{args.model} on {args.data}",
        model_fn=model_factory,
        loss_fn=_field(data, "loss_fn") or F.cross_entropy,
        sample=_field(data, "sample"),
        eval_data=_field(data, "eval_data"),
        target_loss=_field(data, "target_loss", math.nan),
        batch_sizes=list(_field(data, "batch_sizes", None) or []),
        lrs=list(_field(data, "lrs", None) or []),
        optimizer=_field(data, "optimizer", "sgd") or "sgd",
    )


def run(args: argparse.Namespace) -> int:
    """Run the command (the ``func`` of the parsed arguments)."""
    import torch

    if args.threads is not None and args.threads < 1:
        raise _user_error(f"--threads must be at least 1, got {args.threads}")
    threads = torch.get_num_threads()
    want = args.threads if args.threads is not None else (1 if args.model is None else None)
    if want is not None:
        torch.set_num_threads(want)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    if args.max_steps < 1:
        raise _user_error(f"--max-steps must be at least 1, got {args.max_steps}")
    if args.repeats < 1:
        raise _user_error(f"--repeats must be at least 1, got {args.repeats}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not args.no_figure and not os.path.isdir(out_dir):
        raise _user_error(f"--out {args.out!r}: directory {out_dir!r} does not exist")
    task = _load_task(args)
    batch_sizes = (_numbers(args.batch_sizes, int, "--batch-sizes") if args.batch_sizes
                   else task.batch_sizes)
    lrs = _numbers(args.lrs, float, "--lrs") if args.lrs else task.lrs
    target = args.target_loss if args.target_loss is not None else task.target_loss
    if not lrs:
        raise _user_error("--lrs is required (the data factory gives no learning rates)")
    if not batch_sizes:
        raise _user_error("--batch-sizes is required (the data factory gives none)")
    if target is None or not math.isfinite(float(target)):
        raise _user_error("--target-loss is required (the data factory gives no target_loss)")
    from foresight.gns import critical_batch_size, critical_batch_size_branched

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the notes are printed with the table
        try:
            result = critical_batch_size(
                task.model_fn, task.loss_fn, task.sample, batch_sizes=batch_sizes,
                target_loss=float(target), eval_data=task.eval_data, lrs=lrs,
                optimizer=args.optimizer or task.optimizer, max_steps=args.max_steps,
                seed=args.seed, progress=not args.no_progress, repeats=args.repeats,
                b_noise=args.b_noise,
            )
        except ValueError as exc:
            raise _user_error(_one_line(exc)) from None
        except RuntimeError as exc:
            raise _user_error(f"training failed: {_one_line(exc)}") from None
        branched = None
        if args.branched:
            branched = _branched(result, task, args, critical_batch_size_branched)
    print(f"task: {task.name}")
    print(result)
    if branched is not None:
        print()
        print(branched)
    written = []
    if not args.no_figure:
        from foresight.plot.critical import critical_batch_size_figure

        fig = critical_batch_size_figure(result, branched)
        fig.suptitle(task.name, fontsize=10)
        fig.savefig(args.out, dpi=120)
        written.append(args.out)
    if args.json:
        data = dict(sweep=result.to_dict(), branched=branched.to_dict() if branched else None)
        with open(args.json, "w") as f:
            json.dump(_finite(data), f, indent=1, default=str)
        written.append(args.json)
    if written:
        print(f"\nwrote {', '.join(written)}")
    return 0


def _branched(result: Any, task: Any, args: argparse.Namespace, fn: Any) -> Any:
    reached = [r for r in result.runs if r["reached"]]
    if not reached:
        raise _user_error("--branched needs a batch size that reached the target")
    ref = reached[0]
    steps = int(ref["steps"])
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k * ref["batch_size"] <= 4 * max(
        r["batch_size"] for r in result.runs)]
    window = max(ks[-1], steps // 4)
    checkpoints = sorted({max(1, steps // 16), steps // 8, steps // 4, steps // 2,
                          (3 * steps) // 4})
    try:
        return fn(
            task.model_fn, task.loss_fn, task.sample, batch_size=ref["batch_size"], lr=ref["lr"],
            eval_data=task.eval_data, checkpoints=checkpoints, window=window, ks=ks,
            optimizer=args.optimizer or task.optimizer, seed=args.seed,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        raise _user_error(_one_line(exc)) from None


def _finite(value: Any) -> Any:
    """``nan``/``inf`` -> ``None`` (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
