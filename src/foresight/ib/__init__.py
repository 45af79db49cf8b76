"""Mutual-information estimators and the information plane (Shwartz-Ziv & Tishby 2017).

* :func:`mutual_information` -- ``"discrete"``, ``"binning"``, ``"kde"`` and ``"ksg"`` estimators,
  in bits;
* :func:`entropy` -- plug-in entropy of symbols or of binned floats;
* :func:`information_plane` -- :math:`I(X;T)`, :math:`I(T;Y)` of every hidden layer;
* :class:`InformationPlaneTracker` -- the information plane during training, on a schedule.

Plots: :mod:`foresight.plot.ib`. The science and the caveats: ``docs/ib.rst``.
"""

from __future__ import annotations

from foresight.ib.estimators import entropy, mutual_information
from foresight.ib.plane import InformationPlane, LayerInformation, information_plane
from foresight.ib.tracker import InformationPlaneRecord, InformationPlaneTracker

__all__ = [
    "InformationPlane",
    "InformationPlaneRecord",
    "InformationPlaneTracker",
    "LayerInformation",
    "entropy",
    "information_plane",
    "mutual_information",
]
