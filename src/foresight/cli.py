"""The ``foresight`` command.

* ``foresight demo``: train the seed's single-layer digits classifier with mini-batch SGD (and a
  small hidden-layer network) while measuring every metric; write a CSV, a JSON summary and PNG
  figures.
* ``foresight report MODULE:FACTORY --input-shape SHAPE``: the per-layer EI table of a model
  (``--arg NAME=VALUE`` for the factory, ``--seed``, ``--weights`` with ``--strip-prefix``,
  ``--device``, ``--strict``, ``--verbose``, ``--format table|json|csv``).
* ``foresight causal MODULE:FACTORY``: the per-layer causal measures (EI, EI_parts, sensitivity,
  degeneracy) of a feedforward model, with a progress bar and the sample-limited layers named.
* ``foresight batch-size [MODULE:FACTORY --data MODULE:FACTORY]``: measure the critical batch
  size (by default on the bundled digits task) beside the gradient noise scale.

User errors (an unknown module, a bad shape, weights that do not fit, a missing file) print one
line, ``foresight: error: ...``, on stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import ast
import csv
import dataclasses
import importlib
import importlib.util
import io
import json
import math
import os
import pickle
import random
import re
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import foresight

__all__ = [
    "main", "build_parser", "parse_shape", "parse_range", "parse_factory_args", "load_factory",
    "build_model", "load_weights", "format_report", "format_causal", "skipped_entries",
    "skipped_summary", "clean", "UserError", "EXIT_USER_ERROR",
]

#: Exit status of a mistake in the command line or its inputs (one ``foresight: error:`` line).
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


def parse_factory_args(items: Sequence[str] | None) -> dict[str, Any]:
    """``["depth=18", "name=resnet"]`` -> ``{"depth": 18, "name": "resnet"}``.

    Each value is read as a Python literal (numbers, ``True``/``False``/``None``, strings in
    quotes, tuples, lists, dicts); anything else is kept as the string it is.

    >>> parse_factory_args(["model_name=resnet18", "num_classes=10", "pretrained=False"])
    {'model_name': 'resnet18', 'num_classes': 10, 'pretrained': False}
    >>> parse_factory_args(["sizes=(3, 4)", "tag='7'"])
    {'sizes': (3, 4), 'tag': '7'}
    """
    out: dict[str, Any] = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise UserError(
                f"--arg {item!r} must be NAME=VALUE with NAME a Python identifier, e.g. "
                "--arg num_classes=10"
            )
        if name in out:
            raise UserError(f"--arg {name} is given twice")
        try:
            out[name] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            out[name] = text
    return out


def build_model(spec: str, kwargs: Mapping[str, Any] | None = None) -> Any:
    """Call the factory named by ``spec`` with ``kwargs``; check it returned an ``nn.Module``."""
    import torch

    factory = load_factory(spec)
    kwargs = dict(kwargs or {})
    call = f"{spec}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        hint = ""
        missing = re.search(r"missing \d+ required (?:positional|keyword-only) argument", str(exc))
        if missing:
            hint = "; pass factory arguments with --arg NAME=VALUE"
        raise UserError(f"calling {call} failed: TypeError: {_one_line(exc)}{hint}") from None
    except Exception as exc:
        raise UserError(f"calling {call} failed: {type(exc).__name__}: {_one_line(exc)}") from None
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"{call} returned {type(model).__name__}, not a torch.nn.Module")
    return model


_ZIP_MAGIC = b"PK\x03\x04"


def _check_weights_file(path: str) -> None:
    """One-line errors for files that cannot be PyTorch weights, before torch.load sees them."""
    if os.path.isdir(path):
        raise UserError(
            f"--weights {path!r} is a directory, not a file: pass the checkpoint file itself "
            "(e.g. a .pt/.pth/.ckpt written by torch.save)"
        )
    if not os.path.exists(path):
        raise UserError(f"weights file {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise UserError(f"cannot open weights file {path!r}: {exc.strerror or exc}") from None
    if not head:
        raise UserError(f"weights file {path!r} is empty (0 bytes): was the save interrupted?")
    if head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80":  # torch.save zip / legacy pickle
        return
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 30:
        raise UserError(
            f"{path!r} looks like a safetensors file; foresight report reads torch.save files: "
            "convert it with torch.save(safetensors.torch.load_file(PATH), 'weights.pt')"
        )
    text = head.decode("utf-8", errors="replace")
    printable = all(c.isprintable() or c in "\r\n\t" for c in text.rstrip("\ufffd"))
    what = f"it is a text file starting {text.split(chr(10))[0][:40]!r}" if printable else (
        "it does not start like a file written by torch.save"
    )
    raise UserError(f"{path!r} is not a PyTorch weights file: {what}")


def load_weights(model: Any, path: str, strip_prefix: str | None = None) -> None:
    """Load a state dict (or a checkpoint holding one under ``state_dict`` or ``model``).

    The file is read with ``torch.load(weights_only=True)``: tensors and plain containers only, so
    a pickle that would run code is refused without running it. ``strip_prefix`` keeps only the
    keys that start with it, without it (``"net."`` for a Lightning checkpoint whose module holds
    the model as ``self.net``); a ``module.`` prefix on every key (DataParallel/DDP) is removed.
    When the keys do not fit, the error names a prefix that would make them fit.
    """
    import torch

    _check_weights_file(path)
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
            f"cannot read weights from {path!r} (damaged or not written by torch.save): "
            f"{type(exc).__name__}: {_one_line(exc)}"
        ) from None
    state = _state_dict_of(data, path)
    if strip_prefix:
        kept = {k[len(strip_prefix):]: v for k, v in state.items() if k.startswith(strip_prefix)}
        if not kept:
            raise UserError(
                f"--strip-prefix {strip_prefix!r}: no key in {path!r} starts with it "
                f"(keys look like {_sample_keys(state)})"
            )
        state = kept
    if state and all(k.startswith("module.") for k in state):  # saved from (D)DP
        state = {k[len("module."):]: v for k, v in state.items()}
    expected = set(model.state_dict())
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as exc:
        prefix = None if strip_prefix else _fitting_prefix(state, expected)
        if prefix is not None:
            raise UserError(
                f"weights in {path!r} do not fit the model: every model key is there under the "
                f"prefix {prefix!r} (e.g. {prefix + next(iter(sorted(expected)))!r}); pass "
                f"--strip-prefix {prefix}"
            ) from None
        raise UserError(
            f"weights in {path!r} do not fit the model: {_one_line(exc)}"
        ) from None


def _sample_keys(state: Mapping[str, Any], n: int = 3) -> str:
    keys = list(state)[:n]
    return ", ".join(repr(k) for k in keys) + (", ..." if len(state) > n else "")


def _fitting_prefix(state: Mapping[str, Any], expected: set[str]) -> str | None:
    """A key prefix of ``state`` under which every key the model expects is found."""
    if not expected:
        return None
    candidates: dict[str, None] = {}
    for key in state:
        parts = key.split(".")
        for depth in range(1, min(len(parts), 4)):
            candidates.setdefault(".".join(parts[:depth]) + ".", None)
    for prefix in candidates:
        if expected <= {k[len(prefix):] for k in state if k.startswith(prefix)}:
            return prefix
    return None


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


# The library's warning about layers it leaves out: the report's ``skipped`` list says the same.
_SKIP_WARNING = "foresight.ei:"
_SKIPPED_ENTRY = re.compile(r"^(?P<name>.*?) \((?P<type>[^,()]+)(?:, (?P<reason>.*))?\)$")


def skipped_entries(skipped: Sequence[Any]) -> list[dict[str, str]]:
    """Each skipped layer as ``{"name", "type", "reason"}`` (from ``EIReport.skipped``).

    >>> skipped_entries(["encoder.ln (LayerNorm)", "head (Linear, not called by the forward pass)"])
    ... # doctest: +NORMALIZE_WHITESPACE
    [{'name': 'encoder.ln', 'type': 'LayerNorm', 'reason': 'no weight graph registered'},
     {'name': 'head', 'type': 'Linear', 'reason': 'not called by the forward pass'}]
    """
    out = []
    for entry in skipped:
        if isinstance(entry, Mapping):
            row = {k: str(entry.get(k, "")) for k in ("name", "type", "reason")}
        elif hasattr(entry, "name") and hasattr(entry, "type"):
            row = {k: str(getattr(entry, k, "")) for k in ("name", "type", "reason")}
        else:
            match = _SKIPPED_ENTRY.match(str(entry))
            if match:
                row = {"name": match["name"], "type": match["type"],
                       "reason": match["reason"] or ""}
            else:
                row = {"name": str(entry), "type": "", "reason": ""}
        row["reason"] = row["reason"] or "no weight graph registered"
        out.append(row)
    return out


def skipped_summary(skipped: Sequence[Any]) -> str:
    """One short line: how many layers were left out, counted by type and reason.

    >>> print(skipped_summary(["a (LayerNorm)", "b (LayerNorm)", "c (Bilinear)"]))
    left out of EI: 3 layers with parameters -- 2 LayerNorm, 1 Bilinear (no weight graph registered)
    """
    rows = skipped_entries(skipped)
    if not rows:
        return ""
    by_reason: dict[str, dict[str, int]] = {}
    for r in rows:
        kinds = by_reason.setdefault(r["reason"], {})
        kinds[r["type"] or "?"] = kinds.get(r["type"] or "?", 0) + 1
    parts = []
    for reason, kinds in by_reason.items():
        counted = sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))
        parts.append(", ".join(f"{n} {t}" for t, n in counted) + f" ({reason})")
    noun = "layer" if len(rows) == 1 else "layers"
    return f"left out of EI: {len(rows)} {noun} with parameters -- " + "; ".join(parts)


def _device(text: str | None) -> Any:
    import torch

    if text is None:
        return None
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(
            f"--device {text!r} is not a device: use e.g. cpu, cuda, cuda:1, mps"
        ) from None
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise UserError(f"--device {text!r} cannot be used here: {_one_line(exc)}") from None
    return device


def _example_input(shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
    import torch

    numel = math.prod(shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    try:
        return torch.zeros((1, *shape), dtype=dtype, device=device)
    except (RuntimeError, MemoryError, OverflowError) as exc:
        raise UserError(
            f"--input-shape {','.join(map(str, shape))}: an input of {numel:,} elements "
            f"({_size(numel * itemsize)}) cannot be allocated"
            f"{'' if device is None else f' on {device}'} ({type(exc).__name__}); give one "
            "example's shape without the batch dimension"
        ) from None


def _size(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes} bytes"  # pragma: no cover


def run_report(args: argparse.Namespace) -> int:
    shape = parse_shape(args.input_shape)  # cheap checks first: torch is imported after them
    kwargs = parse_factory_args(args.arg)
    module_name, _ = _split_spec(args.model)
    _add_cwd_to_path()
    top = module_name.split(".")[0]
    if importlib.util.find_spec(top) is None:
        raise UserError(f"cannot import module {module_name!r} (No module named {top!r})")
    if args.weights:
        _check_weights_file(args.weights)
    import torch

    from foresight import ei as fei

    device = _device(args.device)
    torch.manual_seed(args.seed)  # the factory's random initialisation is reproducible
    random.seed(args.seed)
    try:
        import numpy

        numpy.random.seed(args.seed % 2**32)  # noqa: NPY002 - the global RNG factories use
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    model = build_model(args.model, kwargs)
    if args.weights:
        load_weights(model, args.weights, strip_prefix=args.strip_prefix)
    elif args.strip_prefix:
        raise UserError("--strip-prefix needs --weights")
    if device is not None:
        model.to(device)
    norm = {"lin": fei.lin_norm, "soft": fei.soft_norm, "sig": fei.sig_norm}[args.norm]
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if device is None:
        device = next((p.device for p in model.parameters()), None)
    example = _example_input(shape, dtype, device)
    model.eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fei.report(model, example, norm=norm)
        except ValueError as exc:
            raise UserError(_one_line(exc)) from None
        except torch.OutOfMemoryError as exc:
            raise UserError(
                f"out of memory running the model on an input of shape {tuple(example.shape)}: "
                f"{_one_line(exc)}"
            ) from None
        except RuntimeError as exc:
            raise UserError(
                f"the model failed on an input of shape {tuple(example.shape)} (batch of 1 + "
                f"--input-shape): {_one_line(exc)}"
            ) from None
    _report_warnings(caught)
    summary = skipped_summary(result.skipped)
    if args.strict and result.skipped:
        raise UserError(
            f"--strict: {summary}; run without --strict, with --verbose, to list them"
        )
    sys.stdout.write(format_report(result, args.format, verbose=args.verbose))
    if summary and args.format != "table":  # the table carries it; keep JSON/CSV parseable
        print(f"foresight: note: {summary}"
              + ("" if args.verbose else " (--verbose lists them)"), file=sys.stderr)
    return 0


def _report_warnings(caught: Sequence[warnings.WarningMessage]) -> None:
    """Other warnings raised during the run, each once and on one line."""
    seen: set[str] = set()
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning)):
            continue  # about libraries' code, not about this model (hidden by default too)
        text = " ".join(str(w.message).split())
        if text.startswith(_SKIP_WARNING) and "left out" in text:
            continue  # the skipped summary says it
        if text in seen:
            continue
        seen.add(text)
        short = text if len(text) <= 300 else text[:297] + "..."
        print(f"foresight: warning: {w.category.__name__}: {short}", file=sys.stderr)


#: Values smaller than this (bits) are float rounding of a true 0: the entropies are sums of
#: float32 terms of a few bits each.
ROUNDING = 1e-6


def clean(value: float, *, unit_interval: bool = False) -> float:
    """``value`` with float rounding removed: ``|value| < 1e-6`` becomes ``0.0``; with
    ``unit_interval``, an excess over ``[0, 1]`` smaller than ``1e-6`` is clamped. Larger
    excursions are left as they are (they are not rounding).

    >>> clean(-5.8e-07), clean(1.0000000632, unit_interval=True), clean(1.5, unit_interval=True)
    (0.0, 1.0, 1.5)
    """
    if not isinstance(value, float) or not math.isfinite(value):
        return value
    if abs(value) < ROUNDING:
        return 0.0
    if unit_interval and 1.0 < value < 1.0 + ROUNDING:
        return 1.0
    return value


_NUMBERS = ("determinism", "degeneracy", "ei")


def _clean_row(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in _NUMBERS:
        if key in out:
            out[key] = clean(out[key])
    if "effectiveness" in out:
        out["effectiveness"] = clean(out["effectiveness"], unit_interval=True)
    return out


def format_report(result: Any, fmt: str, *, verbose: bool = False) -> str:
    """The report as ``table``, ``json`` or ``csv`` text.

    Rounding noise is printed as 0 (:func:`clean`). The table ends with one line counting the
    skipped layers by type (each listed with ``verbose``); JSON has them under ``skipped`` (the
    library's entries), ``skipped_layers`` (name, type, reason) and ``skipped_counts``; CSV has a
    ``total`` row and one ``skipped`` row per left-out layer, told apart by the ``row`` column.
    """
    data = result.to_dict()
    layers = [_clean_row(r) for r in data["layers"]]
    skipped = skipped_entries(data.get("skipped", []))
    if fmt == "json":
        keys = ("ei", "determinism", "degeneracy", "layers", "skipped", "norm")
        out = {k: data[k] for k in keys if k in data}
        out.update(_clean_row({k: out[k] for k in _NUMBERS}))
        out["layers"] = layers
        out["skipped_layers"] = skipped
        counts: dict[str, int] = {}
        for r in skipped:
            counts[r["type"] or "?"] = counts.get(r["type"] or "?", 0) + 1
        out["skipped_counts"] = counts
        return json.dumps(out, indent=2) + "\n"
    if fmt == "csv":
        fields = [*(list(layers[0]) if layers else ["name", "type", "ei"]), "row"]
        rows: list[dict[str, Any]] = [{"row": "layer", **r} for r in layers]
        total = _clean_row({k: data[k] for k in _NUMBERS})
        rows.append({
            "row": "total", "name": "total", **total,
            **({"inputs": sum(r["inputs"] for r in layers),
                "outputs": sum(r["outputs"] for r in layers)} if "inputs" in fields else {}),
        })
        if skipped:
            fields.append("reason")
        rows += [{"row": "skipped", "name": s["name"], "type": s["type"],
                  "reason": s["reason"]} for s in skipped]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n",
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    table = str(dataclasses.replace(result, skipped=[])) if skipped else str(result)
    lines = [table]
    if skipped:
        lines.append(skipped_summary(data["skipped"])
                     + ("" if verbose else " (--verbose lists them)"))
        if verbose:
            lines += [f"  {s['name']} ({s['type']}): {s['reason']}" for s in skipped]
    return "\n".join(lines) + "\n"


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
    if args.epochs is not None:
        raise UserError(
            "--epochs was replaced by --steps: the demo now trains with mini-batch SGD for a "
            "number of steps, as the seed did (default --steps 40000)"
        )
    for name in ("steps", "batch_size", "every"):
        value = getattr(args, name)
        if value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if not 10 <= args.n_train <= 1700:
        raise UserError(f"--n-train must be between 10 and 1700 (the digits data has 1,797 "
                        f"images; the rest are the test set), got {args.n_train}")
    if args.batch_size > args.n_train:
        raise UserError(f"--batch-size ({args.batch_size}) must be at most --n-train "
                        f"({args.n_train})")
    if not (args.lr > 0 and args.lr < float("inf")):
        raise UserError(f"--lr must be a positive number, got {args.lr}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out!r} exists and is not a directory")
    from foresight import demo

    result = demo.run(
        out=args.out, steps=args.steps, seed=args.seed, n_train=args.n_train,
        batch_size=args.batch_size, lr=args.lr, every=args.every,
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
            "Train a single-layer softmax classifier (the seed's headline experiment) with "
            "mini-batch SGD on scikit-learn's bundled 8x8 digits until it overfits, and a small "
            "hidden-layer network alongside, recording effective information, accuracy, losses "
            "and the gradient noise scale every --every steps (information plane and causal EI "
            "of the hidden-layer network at log-spaced steps); write a CSV, a JSON summary and "
            "PNG figures to --out."
        ),
    )
    demo.add_argument("--out", default="foresight-demo", help="output directory "
                      "(default: ./foresight-demo)")
    demo.add_argument("--steps", type=int, default=40_000,
                      help="SGD steps, i.e. mini-batches (default: 40000)")
    demo.add_argument("--batch-size", type=int, default=32,
                      help="examples per SGD step (default: 32)")
    demo.add_argument("--lr", type=float, default=0.5, help="SGD learning rate (default: 0.5)")
    demo.add_argument("--n-train", type=int, default=300,
                      help="training examples, a small subset so that the model overfits; the "
                      "rest of the 1,797 digits are the test set (default: 300)")
    demo.add_argument("--every", type=int, default=100,
                      help="measure every N steps, plus log-spaced steps before the first N "
                      "(default: 100)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--epochs", type=int, default=None, help=argparse.SUPPRESS)
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
    report.add_argument("--arg", action="append", metavar="NAME=VALUE",
                        help="keyword argument for FACTORY, repeatable; VALUE is read as a Python "
                        "literal (10, 0.5, True, None, 'text', (3, 4)), else kept as a string: "
                        "e.g. timm:create_model --arg model_name=resnet18 --arg num_classes=10")
    report.add_argument("--seed", type=int, default=0,
                        help="seed of torch's (and Python's and numpy's) random number generators "
                        "before FACTORY runs, so a randomly initialised model is the same every "
                        "run (default: 0)")
    report.add_argument("--device", metavar="DEVICE",
                        help="move the model there and compute there (cpu, cuda, cuda:1, mps; "
                        "default: where FACTORY put it)")
    report.add_argument("--strip-prefix", metavar="PREFIX",
                        help="use only the --weights keys that start with PREFIX, without it "
                        "(e.g. 'net.' for a Lightning checkpoint whose module keeps the model as "
                        "self.net)")
    report.add_argument("--strict", action="store_true",
                        help="fail (exit status 2) if a layer with parameters is left out of EI")
    report.add_argument("--verbose", "-v", action="store_true",
                        help="list every layer left out of EI, with the reason")
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
    from foresight.cli_batch_size import add_parser as add_batch_size

    add_batch_size(sub)
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
