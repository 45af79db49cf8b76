r"""The information plane: :math:`(I(X;T), I(T;Y))` for every hidden representation :math:`T`.

``X`` is uniform over the ``N`` given samples (each sample is its own value of X), ``Y`` the given
labels, and ``T`` a layer's output, captured with forward hooks.

* ``method="binning"`` (Shwartz-Ziv & Tishby 2017): ``T`` is binned, so it is a deterministic
  function of X and :math:`I(X;T) = H(\mathrm{bin}(T)) \le \log_2 N`, and
  :math:`I(T;Y) = H(T) + H(Y) - H(T, Y) \le H(Y)` (plug-in).
* ``method="kde"`` (Kolchinsky & Tracey 2017; Saxe et al. 2018): ``T`` plus Gaussian noise of
  variance ``noise_var``; pairwise upper or lower bounds on both terms.

Both values depend on the bin width or ``noise_var``; for a deterministic network the true
:math:`I(X;T)` is constant (discrete X) and "compression" measured this way is geometric
clustering of the representation. Report the estimator with every number: the results carry it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from foresight._guard import preserved
from foresight._progress import bar as progress_bar
from foresight.distributed import full_weights
from foresight.ib._samples import as_samples, positive_int, same_length
from foresight.ib.binning import bin_indices
from foresight.ib.discrete import (
    code_entropy,
    grouped_codes,
    joint_entropies,
    paired_entropies,
    row_code,
    row_labels,
)
from foresight.ib.estimators import check_options, code_for
from foresight.ib.kde import kde_information_bits
from foresight.ib.layers import OUTPUT, default_layers
from foresight.results import I_XT_LIMITED, Row, Rows

PLANE_METHODS = ("binning", "kde")


@dataclass
class LayerInformation(Row):
    r"""One point of the information plane (a row of :class:`InformationPlane`).

    Attributes:
        name: module name (``"output"`` for the model's output).
        i_xt: :math:`I(X;T)` in bits.
        i_ty: :math:`I(T;Y)` in bits.
        h_t: entropy of T in bits (binned: plug-in; KDE: the bound on the differential entropy
            of T plus noise, which can be negative).
        n_states: number of distinct states of T (occupied bins; distinct rows for KDE).
        width: number of units of T (features per sample).
        method: the estimator.
        options: the estimator's parameters, defaults filled in.
        limited_by: ``"samples"`` when :math:`I(X;T)` is within 1 bit of its ceiling
            :math:`\log_2 N` (binned: nearly every sample is its own state; KDE: the points are
            far apart for ``noise_var``), so it measures N rather than the layer; else ``None``.
    """

    name: str
    i_xt: float
    i_ty: float
    h_t: float
    n_states: int
    width: int
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    limited_by: str | None = None

    metric = "ib"

    def _value(self, field: str) -> Any:
        if field == I_XT_LIMITED:  # the record's flag: I(X;T) at its ceiling
            return self.limited_by is not None
        return getattr(self, field)


@dataclass
class InformationPlane(Rows):
    """Every layer's point of the information plane, with what is needed to read it.

    Rows are looked up by name and iterated like every result's (:mod:`foresight.results`):
    ``plane.row("1")``, ``plane["1"]``, ``"1" in plane``, ``for layer in plane``.

    Attributes:
        layers: one :class:`LayerInformation` per representation, input to output.
        n_samples: N; :math:`I(X;T) \\le \\log_2 N`.
        h_y: plug-in entropy of the labels in bits; :math:`I(T;Y) \\le H(Y)` for binning.
        method: the estimator.
        options: the estimator's parameters, defaults filled in.
    """

    layers: list[LayerInformation]
    n_samples: int
    h_y: float
    method: str
    options: dict[str, Any] = field(default_factory=dict)

    metric = "ib"


def effective_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The estimator's parameters with the defaults filled in (what the results report)."""
    if method == "binning":
        if options.get("bin_size") is not None:
            return {"bin_size": float(options["bin_size"])}
        rng = options.get("range")
        return {
            "bins": int(options.get("bins") or 30),
            "range": "data" if rng is None else tuple(float(v) for v in rng),
        }
    return {
        "noise_var": float(options.get("noise_var", 0.1)),
        "bound": options.get("bound", "upper"),
    }


def _check_method(method: str, options: dict[str, Any]) -> None:
    if method not in PLANE_METHODS:
        raise ValueError(
            f"information_plane supports method='binning' or 'kde', got {method!r} "
            "(use mutual_information for the other estimators)"
        )
    check_options(method, options)


def _resolve_layers(
    model: nn.Module, layers: Sequence[str] | None, inputs: Any = None
) -> list[str]:
    modules = dict(model.named_modules())
    if layers is None:
        return default_layers(model, inputs)
    if isinstance(layers, str):
        raise TypeError("layers must be a list of module names, e.g. layers=['1', '3']")
    names = list(layers)
    for name in names:
        if name != OUTPUT and name not in modules:
            raise ValueError(
                f"layers: no module named {name!r} in the model; names are "
                f"{[n for n in modules if n][:20]} (or 'output' for the model's output)"
            )
    return names


def collect_representations(
    model: nn.Module,
    inputs: torch.Tensor,
    layers: Sequence[str] | None = None,
    batch_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Each chosen layer's output on ``inputs`` as an ``[N, width]`` tensor (and ``"output"``).

    Runs the model in eval mode under ``no_grad`` in batches; the model is restored exactly
    (mode, hooks, buffers, grads). Layers whose output is not a tensor are skipped with a
    warning; a layer called more than once per forward pass raises :class:`ValueError`.
    """
    with full_weights(model):  # the scan that orders the default layers runs the model too
        names = _resolve_layers(model, layers, inputs)
    user_named = layers is not None
    want_output = OUTPUT in names if user_named else True
    hooked = [n for n in names if n != OUTPUT]
    modules = dict(model.named_modules())
    n = inputs.shape[0]
    step = n if batch_size is None else positive_int(batch_size, "batch_size")
    store: dict[str, list[torch.Tensor]] = {name: [] for name in hooked}
    skipped: set[str] = set()
    outputs: list[torch.Tensor] = []
    last_is_output = bool(hooked)

    def make_hook(name: str):
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor):
                skipped.add(name)
                return
            store[name].append(out.detach().reshape(out.shape[0], -1))

        return hook

    with full_weights(model), preserved(model):
        model.eval()
        for name in hooked:
            modules[name].register_forward_hook(make_hook(name))
        with torch.no_grad():
            for start in range(0, n, step):
                batch = inputs[start : start + step]
                out = model(batch)
                if not isinstance(out, torch.Tensor):
                    raise ValueError(
                        "information_plane: the model's output is not a tensor "
                        f"({type(out).__name__}); wrap the model to return one tensor"
                    )
                outputs.append(out.detach().reshape(out.shape[0], -1))
                if hooked and not _same_tensor(store[hooked[-1]], outputs[-1]):
                    last_is_output = False
                expected = len(outputs)
                for name in hooked:
                    if name not in skipped and len(store[name]) != expected:
                        raise ValueError(
                            f"layer {name!r} ran {len(store[name]) - expected + 1} times in one "
                            "forward pass (a shared module); name a module used once"
                        )
    result: dict[str, torch.Tensor] = {}
    for name in hooked:
        if name in skipped:
            warnings.warn(
                f"information_plane: layer {name!r} does not output a tensor; skipped",
                stacklevel=3,
            )
            continue
        result[name] = torch.cat(store[name]) if len(store[name]) > 1 else store[name][0]
    if want_output and not (not user_named and last_is_output and hooked[-1] in result):
        result[OUTPUT] = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
    return result


def _same_tensor(captured: list[torch.Tensor], out: torch.Tensor) -> bool:
    """Whether the last captured tensor is (a view of the same memory as) the model output."""
    if not captured:
        return False
    last = captured[-1]
    return last.data_ptr() == out.data_ptr() and last.shape == out.shape


def _label_symbols(labels: torch.Tensor) -> torch.Tensor:
    y = as_samples(labels, "labels")
    if y.is_floating_point():
        raise ValueError(
            f"labels must be integer class labels (or bool), got {y.dtype}; e.g. labels.long()"
        )
    return y.to(torch.int64)


def _binned_all_layers(
    reps: dict[str, torch.Tensor], y_code: torch.Tensor, y_card: int, options: dict[str, Any]
) -> dict[str, tuple[float, float, int]] | None:
    """``{layer: (H(T), H(T,Y), distinct T)}`` for all layers in one batch, or ``None``.

    Bins the concatenated layers in one go (each layer with its own data range), codes each
    layer's rows, and gets every entropy from one sort. ``None`` when the layers cannot be
    concatenated (devices) or a code would overflow; the caller then goes layer by layer.
    """
    ts = list(reps.values())
    if len({t.device for t in ts}) != 1 or y_code.device != ts[0].device:
        return None
    widths = [t.shape[1] for t in ts]
    bins, bin_size, rng = options.get("bins"), options.get("bin_size"), options.get("range")
    idx = bin_indices(torch.cat(ts, dim=1), bins, bin_size, rng, groups=widths)
    radix = None if bin_size is not None else [30 if bins is None else int(bins)] * idx.shape[1]
    grouped = grouped_codes(idx, widths, radix)
    if grouped is None or max(grouped[1]) * y_card >= 1 << 62:
        return None
    h_t, h_ty, distinct = paired_entropies(grouped[0], y_code, y_card)
    return {name: (h_t[i], h_ty[i], distinct[i]) for i, name in enumerate(reps)}


def information_plane(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    layers: Sequence[str] | None = None,
    method: str = "binning",
    batch_size: int | None = None,
    progress: bool | None = None,
    **options: Any,
) -> InformationPlane:
    r"""Estimate :math:`I(X;T)` and :math:`I(T;Y)` for each hidden representation ``T``.

    Args:
        model: the network; left exactly as it was (mode, hooks, buffers, grads).
        inputs: ``[N, ...]`` samples; X is uniform over them.
        labels: ``[N]`` integer labels Y (rows of an ``[N, k]`` integer tensor are symbols).
        layers: module names (from ``model.named_modules()``; ``"output"`` for the model's
            output). Default: each activation module that follows a weight layer, then the
            model's output (unless the last such activation already is the output).
        method: ``"binning"`` (options ``bins=30``, ``range=(lo, hi)`` or ``bin_size``) or
            ``"kde"`` (options ``noise_var=0.1``, ``bound="upper"|"lower"``, ``chunk_size``).
        batch_size: forward the inputs in batches of this size (default: all at once).
        progress: a bar over the layers on stderr (KDE: each layer is :math:`O(N^2)`):
            ``None`` only once the work has taken a few seconds, ``True`` always, ``False``
            never.
        **options: the estimator's options.

    Returns:
        An :class:`InformationPlane` with one :class:`LayerInformation` per layer. Layers whose
        :math:`I(X;T)` is within 1 bit of :math:`\log_2 N` get ``limited_by="samples"`` and one
        ``RuntimeWarning`` names them.

    With binning, :math:`I(X;T) = H(T) \le \log_2 N` and :math:`I(T;Y) \le H(Y)`:

    >>> torch.manual_seed(0) and None
    >>> net = nn.Sequential(nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 2), nn.Softmax(dim=1))
    >>> x = torch.randint(0, 2, (256, 12)).float()
    >>> y = (x.sum(1) > 6).long()
    >>> plane = information_plane(net, x, y, bins=4, range=(-1, 1))
    >>> [layer.name for layer in plane.layers]
    ['1', '3']
    >>> all(la.i_xt <= 8 and la.i_ty <= plane.h_y + 1e-12 for la in plane.layers)
    True
    """
    _check_method(method, options)
    x = as_samples(inputs, "inputs")
    y = _label_symbols(labels)
    same_length(x, y, "inputs", "labels")
    reps = collect_representations(model, inputs, layers, batch_size)
    if not reps:
        raise ValueError("information_plane: no layer produced a tensor; pass layers=[...]")
    y_code, y_card = row_code(y)
    n = y.shape[0]
    h_y = code_entropy(y_code, y_card)
    params = effective_options(method, options)
    points = []
    if method == "kde":
        y_labels, ky = row_labels(y)
    reps = {name: as_samples(t, f"the output of layer {name!r}") for name, t in reps.items()}
    fast = _binned_all_layers(reps, y_code, y_card, options) if method == "binning" else None
    bar = progress_bar(len(reps), desc=f"information plane ({method})",
                       enabled=progress if fast is None else False, unit="layer")
    for name, t in reps.items():
        if fast is not None:
            h_t, h_ty, n_states = fast[name]
            i_xt, i_ty = h_t, max(h_t + h_y - h_ty, 0.0)
        elif method == "binning":
            t_code, t_card = code_for(
                t, options.get("bins"), options.get("bin_size"), options.get("range")
            )
            h_t, _, h_ty, n_states = joint_entropies(t_code, t_card, y_code, y_card)
            i_xt, i_ty = h_t, max(h_t + h_y - h_ty, 0.0)
        else:
            index = torch.arange(n, device=t.device)
            (i_xt, i_ty), h_t = kde_information_bits(
                t,
                [(index, n), (y_labels.to(t.device), ky)],
                params["noise_var"],
                params["bound"],
                options.get("chunk_size"),
            )
            n_states = int(torch.unique(t, dim=0).shape[0])
        limited = "samples" if n > 1 and i_xt > math.log2(n) - 1.0 else None
        points.append(LayerInformation(name, i_xt, i_ty, h_t, n_states, t.shape[1], method,
                                       dict(params), limited))
        bar.update(1)
    bar.close()
    at_ceiling = [p.name for p in points if p.limited_by]
    if at_ceiling:
        warnings.warn(
            f"information_plane: I(X;T) of layer(s) {at_ceiling} is within 1 bit of log2(N) = "
            f"{math.log2(n):.3g} bits, the most {n} samples can show ({method}: "
            + ("nearly every sample is its own binned state" if method == "binning" else
               "the points are far apart for this noise_var")
            + "), so it measures N, not the layer; they carry limited_by='samples'. Coarser "
            + ("bins" if method == "binning" else "noise (a larger noise_var)")
            + " or more samples show structure",
            RuntimeWarning,
            stacklevel=2,
        )
    return InformationPlane(points, n, h_y, method, params)

