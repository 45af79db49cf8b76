"""Mutual-information estimators and the information plane (Shwartz-Ziv & Tishby 2017).

* :func:`mutual_information` -- ``"discrete"``, ``"binning"``, ``"kde"`` and ``"ksg"`` estimators,
  in bits;
* :func:`entropy` -- plug-in entropy of symbols or binned floats;
"""

from __future__ import annotations

from foresight.ib.estimators import entropy, mutual_information

__all__ = ["entropy", "mutual_information"]
