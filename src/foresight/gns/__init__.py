"""The gradient noise scale (McCandlish et al. 2018, arXiv 1812.06162).

* :func:`per_example_sq_norms` -- exact per-example squared gradient norms in one backward pass;
* :func:`noise_scale` / :func:`two_batch` -- unbiased :math:`|G|^2`, :math:`\\mathrm{tr}(\\Sigma)`
  and :math:`B_\\text{simple}`;
* :func:`b_noise` -- the Hessian-aware :math:`B_\\text{noise}`;
* :class:`GradientNoiseScale` -- the tracker for training loops (accumulation, DDP, loss scaling);
* :mod:`foresight.gns.planning` -- steps/examples and learning-rate scaling at a batch size.
"""

from __future__ import annotations

from foresight.gns.per_example import per_example_sq_norms, per_parameter_sq_norms

__all__ = ["per_example_sq_norms", "per_parameter_sq_norms"]
