"""Deprecated location of the result base class: it is public as :class:`foresight.results.Result`.

Kept for one release so that code importing ``foresight._result.Result`` keeps working.
"""

from __future__ import annotations

from foresight.results import Result, _plain

__all__ = ["Result", "_plain"]
