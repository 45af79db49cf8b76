"""The gradient noise scale (McCandlish et al. 2018, arXiv 1812.06162).

* :func:`per_example_sq_norms` -- exact per-example squared gradient norms in one backward pass;
* :func:`noise_scale` / :func:`two_batch` -- unbiased :math:`|G|^2`, :math:`\\mathrm{tr}(\\Sigma)`
  and :math:`B_\\text{simple}`;
* :func:`b_noise` -- the Hessian-aware :math:`B_\\text{noise}`;
* :class:`GradientNoiseScale` -- the tracker for training loops (accumulation, DDP, loss scaling);
* :func:`steps_needed`, :func:`examples_needed`, :func:`optimal_lr`, :func:`suggested_batch_size`
  -- batch-size planning;
* :func:`critical_batch_size`, :func:`critical_batch_size_branched` -- measure the critical batch
  size the noise scale predicts (a batch-size sweep, or branches from checkpoints of one run);
* :class:`BatchSizeWarmup` -- grow the batch size as the measured noise scale grows.
"""

from __future__ import annotations

from foresight.gns.critical import (
    BranchedCriticalBatchSize,
    CriticalBatchSize,
    critical_batch_size,
    critical_batch_size_branched,
)
from foresight.gns.estimators import LayerNoiseScale, NoiseScale, noise_scale, two_batch
from foresight.gns.hessian import BNoise, b_noise
from foresight.gns.per_example import per_example_sq_norms, per_parameter_sq_norms
from foresight.gns.planning import (
    examples_needed,
    optimal_lr,
    steps_needed,
    suggested_batch_size,
)
from foresight.gns.tracker import GradientNoiseScale
from foresight.gns.warmup import BatchSizeWarmup

__all__ = [
    "BNoise",
    "BatchSizeWarmup",
    "BranchedCriticalBatchSize",
    "CriticalBatchSize",
    "GradientNoiseScale",
    "LayerNoiseScale",
    "NoiseScale",
    "b_noise",
    "critical_batch_size",
    "critical_batch_size_branched",
    "examples_needed",
    "noise_scale",
    "optimal_lr",
    "per_example_sq_norms",
    "per_parameter_sq_norms",
    "steps_needed",
    "suggested_batch_size",
    "two_batch",
]
