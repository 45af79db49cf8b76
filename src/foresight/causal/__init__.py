r"""Causal (perturbational) information of layers: EI, EI_parts, sensitivity, degeneracy.

Mattsson (Marrow), Michaud & Hoel (2020), "Examining the Causal Structures of Deep Neural Networks
Using Information Theory": perturb a layer's inputs with independent uniform noise and measure, in
bits, how much its (binned) outputs say about them. See :mod:`foresight.causal.measures` for the
definitions and the exact estimator, :func:`report` for a whole network.

>>> import torch
>>> import foresight.causal as fc
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 2))
>>> rep = fc.report(net, bins=8, samples=100_000, seed=0)
>>> [row.name for row in rep.layers], rep.layers[0].activation, rep.layers[0].method_ei_parts
(['0', '2'], 'Sigmoid', 'exact')
>>> rep.converged  # 8^4 joint input states: 10^5 samples cover them
True
"""

from __future__ import annotations

from foresight.causal.activations import known_range
from foresight.causal.affine import affine_map, is_weight_layer, register_affine
from foresight.causal.measures import (
    CausalValue,
    LayerCausal,
    degeneracy,
    ei_parts,
    layer_ei,
    layer_measures,
    sensitivity,
)
from foresight.causal.report import CONVERGED_KEYS, RECORD_KEYS, CausalReport, CausalRow, report
from foresight.causal.tracker import CausalTracker

__all__ = [
    "CausalReport",
    "CausalRow",
    "CausalTracker",
    "CausalValue",
    "CONVERGED_KEYS",
    "LayerCausal",
    "RECORD_KEYS",
    "affine_map",
    "degeneracy",
    "ei_parts",
    "is_weight_layer",
    "known_range",
    "layer_ei",
    "layer_measures",
    "register_affine",
    "report",
    "sensitivity",
]
