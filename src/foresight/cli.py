"""The ``foresight`` command.

* ``foresight demo``: train the seed's single-layer digits classifier (and a small hidden-layer
  network) while measuring every metric; write a CSV, a JSON summary and PNG figures.
* ``foresight report MODULE:FACTORY --input-shape SHAPE``: the per-layer EI table of a model.
* ``foresight causal MODULE:FACTORY``: the per-layer causal measures (EI, EI_parts, sensitivity,
  degeneracy) of a feedforward model, with a progress bar and the sample-limited layers named.

User errors (an unknown module, a bad shape, weights that do not fit, a missing file) print one
line, ``foresight: error: ...``, on stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.util
import io
import json
import os
import pickle
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import foresight

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in the command line or its inputs, reported as one line without a traceback."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UserError(f"{message} (see '{self.prog} --help')")


# -- report ----------------------------------------------------------------------------------------

_NORMS = ("lin", "soft", "sig")


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3,224,224"`` -> ``(3, 224, 224)``; positive integers only (brackets are ignored).

    >>> parse_shape("3,32,32")
    (3, 32, 32)
    """
    stripped = text.strip().strip("()[]").strip()
    parts = [p.strip() for p in stripped.split(",")]
    if parts and parts[-1] == "":  # "3," (a one-element tuple)
        parts.pop()
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(n <= 0 for n in shape):
        raise UserError(
            f"--input-shape {text!r} is not a shape: give one example's size without the batch "
            "dimension as positive integers separated by commas, e.g. 3,224,224"
        )
    return shape


def _add_cwd_to_path() -> None:
    """Like ``python -m``: modules in the current directory can be imported."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())


def _split_spec(spec: str) -> tuple[str, str]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(
            f"model {spec!r} must be MODULE:FACTORY, e.g. torchvision.models:resnet18"
        )
    return module_name, attr


def load_factory(spec: str) -> Callable[[], Any]:
    """Resolve ``"package.module:factory"`` (``factory`` may be dotted) to a callable."""
    module_name, attr = _split_spec(spec)
    _add_cwd_to_path()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UserError(f"cannot import module {module_name!r} ({exc})") from None
    except Exception as exc:
        raise UserError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise UserError(f"module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UserError(f"{spec!r} is not callable: FACTORY must build and return the model")
    return target


def build_model(spec: str) -> Any:
    """Call the factory named by ``spec`` and check that it returned an ``nn.Module``."""
    import torch

    factory = load_factory(spec)
    try:
        model = factory()
    except Exception as exc:
        raise UserError(f"calling {spec}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: Any, path: str) -> None:
    """Load a state dict (or a checkpoint holding one under ``state_dict`` or ``model``).

    The file is read with ``torch.load(weights_only=True)``: tensors and plain containers only, so
    a pickle that would run code is refused without running it.
    """
    import torch

    if not os.path.isfile(path):
        raise UserError(f"weights file {path!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(exc)
        if "global" in detail.lower():
            raise UserError(
                f"refusing to load {path!r}: it holds Python objects, not just tensors, and "
                f"unpickling them could run code ({detail}); save model.state_dict() instead"
            ) from None
        raise UserError(f"cannot read weights from {path!r}: not a PyTorch weights file "
                        f"({detail})") from None
    except Exception as exc:
        raise UserError(
            f"cannot read weights from {path!r}: {type(exc).__name__}: {_one_line(exc)}"
        ) from None
    state = _state_dict_of(data, path)
    if state and all(k.startswith("module.") for k in state):  # saved from (D)DP
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise UserError(
            f"weights in {path!r} do not fit the model: {_one_line(exc)}"
        ) from None


def _state_dict_of(data: Any, path: str) -> Mapping[str, Any]:
    import torch

    if isinstance(data, Mapping):
        for key in ("state_dict", "model"):
            inner = data.get(key)
            if isinstance(inner, Mapping):
                data = inner
                break
        if all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
            return dict(data)
    raise UserError(
        f"{path!r} holds no state dict: expected a dict of tensors, or a checkpoint with one "
        "under 'state_dict' or 'model'"
    )


def _unpickler_detail(exc: BaseException) -> str:
    """The informative part of torch's weights-only refusal message, on one line."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text[text.index(marker) + len(marker):]
    text = text.split("Check the documentation")[0]
    text = " ".join(text.split())
    return text.split(". ")[0][:200]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def run_report(args: argparse.Namespace) -> int:
    shape = parse_shape(args.input_shape)  # cheap checks first: torch is imported after them
    module_name, _ = _split_spec(args.model)
    _add_cwd_to_path()
    top = module_name.split(".")[0]
    if importlib.util.find_spec(top) is None:
        raise UserError(f"cannot import module {module_name!r} (No module named {top!r})")
    if args.weights and not os.path.isfile(args.weights):
        raise UserError(f"weights file {args.weights!r} does not exist")
    import torch

    from foresight import ei as fei

    model = build_model(args.model)
    if args.weights:
        load_weights(model, args.weights)
    norm = {"lin": fei.lin_norm, "soft": fei.soft_norm, "sig": fei.sig_norm}[args.norm]
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    example = torch.zeros((1, *shape), dtype=dtype)
    model.eval()
    try:
        result = fei.report(model, example, norm=norm)
    except ValueError as exc:
        raise UserError(_one_line(exc)) from None
    except RuntimeError as exc:
        raise UserError(
            f"the model failed on an input of shape {tuple(example.shape)} (batch of 1 + "
            f"--input-shape): {_one_line(exc)}"
        ) from None
    sys.stdout.write(format_report(result, args.format))
    return 0


def format_report(result: Any, fmt: str) -> str:
    """The report as ``table``, ``json`` or ``csv`` text."""
    data = result.to_dict()
    if fmt == "json":
        keys = ("ei", "determinism", "degeneracy", "layers", "skipped", "norm")
        return json.dumps({k: data[k] for k in keys if k in data}, indent=2) + "\n"
    if fmt == "csv":
        rows = data["layers"]
        buffer = io.StringIO()
        fields = list(rows[0]) if rows else ["name", "ei"]
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    return str(result) + "\n"


# -- causal ----------------------------------------------------------------------------------------


def parse_range(text: str, name: str = "--in-range") -> tuple[float, float]:
    """``"0,1"`` -> ``(0.0, 1.0)``: two finite numbers, low < high.

    >>> parse_range("-1, 1")
    (-1.0, 1.0)
    """
    parts = [p.strip() for p in text.strip().strip("()[]").split(",")]
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        lo = hi = float("nan")
    if not (lo < hi and abs(lo) < float("inf") and abs(hi) < float("inf")):
        raise UserError(f"{name} {text!r} is not a range: give two numbers low,high with "
                        "low < high, e.g. 0,1")
    return lo, hi


def run_causal(args: argparse.Namespace) -> int:
    in_range = parse_range(args.in_range)
    if args.bins < 2:
        raise UserError(f"--bins must be at least 2, got {args.bins}")
    if args.samples is not None and args.samples < 1:
        raise UserError(f"--samples must be positive, got {args.samples}")
    module_name, _ = _split_spec(args.model)
    _add_cwd_to_path()
    top = module_name.split(".")[0]
    if importlib.util.find_spec(top) is None:
        raise UserError(f"cannot import module {module_name!r} (No module named {top!r})")
    if args.weights and not os.path.isfile(args.weights):
        raise UserError(f"weights file {args.weights!r} does not exist")
    import foresight.causal as fc

    model = build_model(args.model)
    if args.weights:
        load_weights(model, args.weights)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        try:
            rep = fc.report(model, in_range=in_range, bins=args.bins, samples=args.samples,
                            seed=args.seed, method=args.method, progress=not args.no_progress)
        except (ValueError, TypeError) as exc:
            raise UserError(_one_line(exc)) from None
    for message in dict.fromkeys(str(w.message) for w in caught
                                 if issubclass(w.category, RuntimeWarning)):
        print(f"foresight: warning: {message}", file=sys.stderr)
    sys.stdout.write(format_causal(rep, args.format))
    return 0


def format_causal(rep: Any, fmt: str) -> str:
    """A :class:`foresight.causal.CausalReport` as ``table``, ``json`` or ``csv`` text."""
    data = rep.to_dict()
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    rows = data["layers"]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ";".join(v) if isinstance(v, list) and k == "unconverged" else v
                             for k, v in row.items()})
        return buffer.getvalue()
    head = (f"{'layer':<12} {'type':<8} {'activation':<10} {'in->out':>9} {'EI':>9} "
            f"{'EI_parts':>9} {'sens':>9} {'degen':>9} {'EI samples':>11}  pairwise")
    lines = [f"causal measures (bits), {rows[0]['bins']} bins, seed {data['seed']}", head,
             "-" * len(head)]
    flagged = False
    for r in rows:
        mark = {m: "*" if m in r["unconverged"] else " " for m in ("ei", "ei_parts",
                                                                    "sensitivity")}
        flagged = flagged or bool(r["unconverged"])
        method = ("exact" if r["method_ei_parts"] == r["method_sensitivity"] == "exact" else
                  f"{r['method_ei_parts']}/{r['method_sensitivity']}")
        samples = r["samples_ei"] if r["samples_ei"] is not None else "-"
        lines.append(
            f"{(r['name'] or '<model>'):<12} {r['layer']:<8} {r['activation']:<10} "
            f"{str(r['n_in']) + '->' + str(r['n_out']):>9} {r['ei']:8.3f}{mark['ei']} "
            f"{r['ei_parts']:8.3f}{mark['ei_parts']} {r['sensitivity']:8.3f}"
            f"{mark['sensitivity']} {r['degeneracy']:9.3f} {samples:>11}  {method}")
    if flagged:
        lines.append("* limited by the sample count (converged=False): see the warnings above")
    return "\n".join(lines) + "\n"


# -- demo ------------------------------------------------------------------------------------------


def run_demo(args: argparse.Namespace) -> int:
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    if args.n_train < 10:
        raise UserError(f"--n-train must be at least 10, got {args.n_train}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out!r} exists and is not a directory")
    from foresight import demo

    result = demo.run(
        out=args.out, epochs=args.epochs, seed=args.seed, n_train=args.n_train,
        hidden=not args.no_hidden, show_progress=not args.no_progress,
    )
    print(result.summary_table())
    print(f"\nwrote {', '.join(result.files)}")
    return 0


# -- the parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``foresight`` argument parser (subcommands ``demo``, ``report`` and ``causal``)."""
    parser = _Parser(
        prog="foresight",
        description="Measurements of what happens inside a neural network as it trains.",
    )
    parser.add_argument("--version", action="version", version=f"foresight {foresight.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser(
        "demo",
        help="train the seed's digits experiment and measure every metric",
        description=(
            "Train a single-layer softmax classifier (the seed's headline experiment) and a small "
            "hidden-layer network on scikit-learn's bundled 8x8 digits, recording effective "
            "information, gradient noise scale, information plane and causal EI every epoch; write "
            "a CSV, a JSON summary and PNG figures to --out."
        ),
    )
    demo.add_argument("--out", default="foresight-demo", help="output directory "
                      "(default: ./foresight-demo)")
    demo.add_argument("--epochs", type=int, default=300, help="training epochs (default: 300)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--n-train", type=int, default=100,
                      help="training examples, a small subset so that the model overfits "
                      "(default: 100)")
    demo.add_argument("--no-hidden", action="store_true",
                      help="skip the hidden-layer network (no information plane or causal EI)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=run_demo)

    report = sub.add_parser(
        "report",
        help="per-layer EI table of a model built by an importable factory",
        description=(
            "Build a model by calling FACTORY() from an importable MODULE, optionally load "
            "weights, and print the effective information of its weight graph per layer."
        ),
    )
    report.add_argument("model", metavar="MODULE:FACTORY",
                        help="e.g. torchvision.models:resnet18 or mypackage.nets:build")
    report.add_argument("--input-shape", required=True, metavar="SHAPE",
                        help="one example's shape without the batch dimension, e.g. 3,224,224")
    report.add_argument("--weights", metavar="FILE",
                        help="a state dict (or a checkpoint with one under 'state_dict' or "
                        "'model'), loaded with torch.load(weights_only=True): files that carry "
                        "code are refused")
    report.add_argument("--norm", choices=_NORMS, default="lin",
                        help="row normalisation: lin_norm, soft_norm or sig_norm (default: lin)")
    report.add_argument("--format", choices=("table", "json", "csv"), default="table",
                        help="output format (default: table)")
    report.set_defaults(func=run_report)

    causal = sub.add_parser(
        "causal",
        help="per-layer causal measures (EI, EI_parts, sensitivity, degeneracy) of a model",
        description=(
            "Build a feedforward model by calling FACTORY() from an importable MODULE, optionally "
            "load weights, and print each weight layer's perturbational EI, EI_parts, sensitivity "
            "and degeneracy (Marrow, Michaud & Hoel 2020). EI_parts and sensitivity are exact for "
            "monotone activations; EI is sampled, and sample-limited values are marked."
        ),
    )
    causal.add_argument("model", metavar="MODULE:FACTORY",
                        help="e.g. mypackage.nets:build (a model of Linear/Conv layers)")
    causal.add_argument("--weights", metavar="FILE",
                        help="a state dict (or a checkpoint with one), loaded with "
                        "torch.load(weights_only=True)")
    causal.add_argument("--bins", type=int, default=64, help="bins per neuron (default: 64)")
    causal.add_argument("--samples", type=int, default=None,
                        help="samples per sampled measure (default: adaptive, doubling from "
                        "10,000 until settled)")
    causal.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    causal.add_argument("--in-range", default="0,1", metavar="LOW,HIGH",
                        help="input range of the first layer (default: 0,1)")
    causal.add_argument("--method", choices=("auto", "exact", "sampled"), default="auto",
                        help="EI_parts and sensitivity: exact where the activation allows "
                        "(auto, the default), exact only, or sampled")
    causal.add_argument("--format", choices=("table", "json", "csv"), default="table",
                        help="output format (default: table)")
    causal.add_argument("--no-progress", action="store_true", help="no progress bar")
    causal.set_defaults(func=run_causal)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``foresight`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            parser.print_help(sys.stderr)
            return EXIT_USER_ERROR
        return int(args.func(args))
    except UserError as exc:
        print(f"foresight: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ImportError as exc:  # an optional dependency is missing: require() says what to install
        print(f"foresight: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("foresight: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
