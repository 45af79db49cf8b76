"""``nn.Linear`` -- re-exported from the layer core (:mod:`foresight.layers.rules.linear`).

As in the 2020 package, a ``Linear`` layer applied to inputs with extra leading dimensions
(e.g. a sequence ``(B, T, features)``) is counted once, as its ``in_features x out_features``
weight graph (``linear_positions="once"``; ``"each"`` counts it at every position).
"""

from foresight.layers.rules.linear import LinearGraph, linear_create_matrix

__all__ = ["linear_create_matrix", "LinearGraph"]
