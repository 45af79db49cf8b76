r"""Small data sets for examples, tests and paper reproductions -- nothing is downloaded.

* :func:`digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images), split into a small
  stratified training subset (so that a softmax classifier overfits, the seed's headline figure)
  and a test set made of everything else.
* :func:`iris`: scikit-learn's bundled Iris data (150 flowers, 4 features, 3 classes), features
  min-max scaled to :math:`[0, 1]` (the causal-structure reproduction of Marrow et al. 2020).
* :func:`tishby_patterns`: all :math:`2^{12} = 4096` binary patterns of 12 bits with a
  rotation-invariant binary label, in the style of Shwartz-Ziv & Tishby (2017).

scikit-learn (extra ``data``) is imported only when :func:`digits` or :func:`iris` is called.

>>> from foresight import data
>>> x, y = data.tishby_patterns()
>>> tuple(x.shape), tuple(y.shape)
((4096, 12), (4096,))
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

from foresight._optional import require

__all__ = ["Split", "TISHBY_BITS", "digits", "iris", "one_hot", "ring_statistic", "tishby_patterns"]

TISHBY_BITS = 12
"""Number of bits of :func:`tishby_patterns` (12 points on a ring)."""


@dataclass
class Split:
    """A train/test split: ``x_*`` features ``[N, D]``, ``y_*`` int64 class labels ``[N]``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def _stratified_indices(
    y: torch.Tensor, n_train: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``n_train`` indices drawn per class in proportion to its size, and the rest (both sorted).

    Each class ``c`` of size :math:`n_c` gets :math:`\lfloor n_{\text{train}} n_c / N \rfloor`
    examples; the remaining ones go to the classes with the largest fractional parts (ties: the
    smaller class label). Within a class the examples are a uniform random subset.
    """
    classes, counts = torch.unique(y, return_counts=True)
    quota = counts.double() * n_train / len(y)
    take = quota.floor().long()
    left = n_train - int(take.sum())
    if left > 0:
        frac = quota - take.double()
        # stable sort by descending fractional part keeps the smaller label first on ties
        order = torch.sort(-frac, stable=True).indices
        take[order[:left]] += 1
    chosen = []
    for c, k in zip(classes.tolist(), take.tolist()):
        members = torch.nonzero(y == c).flatten()
        perm = torch.randperm(len(members), generator=generator)
        chosen.append(members[perm[:k]])
    train = torch.sort(torch.cat(chosen)).values
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[train] = False
    return train, torch.nonzero(mask).flatten()


def digits(n_train: int = 200, seed: int = 0, dtype: torch.dtype = torch.float32) -> Split:
    r"""scikit-learn's bundled 8x8 digits: a small stratified training set, the rest for testing.

    Pixels (0..16) are divided by 16 so that :math:`x \in [0, 1]^{64}` (images flattened row by
    row); labels are int64 digits 0-9. The training set holds ``n_train`` of the 1,797 images,
    each class represented in proportion to its size (largest-remainder rounding), chosen at
    random with ``seed``; every other image is in the test set.

    Args:
        n_train: size of the training subset, ``1 <= n_train < 1797``. The default 200 is small
            enough for a softmax classifier to overfit.
        seed: seed of the random subset (the split depends only on ``seed`` and ``n_train``).
        dtype: floating dtype of the features.

    Returns:
        :class:`Split` with ``x_train [n_train, 64]``, ``y_train [n_train]``,
        ``x_test [1797 - n_train, 64]`` and ``y_test [1797 - n_train]``.

    Raises:
        ValueError: ``n_train`` is not an integer in ``[1, 1796]``, or ``dtype`` is not floating.

    >>> split = digits(n_train=100, seed=0)
    >>> tuple(split.x_train.shape), tuple(split.x_test.shape)
    ((100, 64), (1697, 64))
    """
    _check_float_dtype(dtype)
    datasets = require("sklearn.datasets", "foresight.data.digits")
    bunch = datasets.load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float64) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    n = len(y)
    try:
        count = operator.index(n_train)  # int, numpy or torch integers; not bool/float/str
    except TypeError:
        count = None
    if isinstance(n_train, bool) or count is None or not 1 <= count < n:
        raise ValueError(
            f"n_train must be an integer with 1 <= n_train < {n} (the digits data has {n} "
            f"images and the test set needs at least one), got {n_train!r}"
        )
    generator = torch.Generator().manual_seed(int(seed))
    train, test = _stratified_indices(y, count, generator)
    x = x.to(dtype)
    return Split(x[train], y[train], x[test], y[test])


def iris(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    r"""scikit-learn's bundled Iris data, each feature min-max scaled to :math:`[0, 1]`.

    .. math::
        x_{ij} \leftarrow \frac{x_{ij} - \min_k x_{kj}}{\max_k x_{kj} - \min_k x_{kj}}

    Returns:
        ``(x, y)``: features ``[150, 4]`` of ``dtype`` (sepal length, sepal width, petal length,
        petal width) and int64 labels ``[150]`` in ``{0, 1, 2}`` (setosa, versicolor, virginica),
        in scikit-learn's order.

    >>> x, y = iris()
    >>> tuple(x.shape), float(x.min()), float(x.max())
    ((150, 4), 0.0, 1.0)
    """
    _check_float_dtype(dtype)
    datasets = require("sklearn.datasets", "foresight.data.iris")
    bunch = datasets.load_iris()
    x = torch.as_tensor(bunch.data, dtype=torch.float64)
    lo, hi = x.min(dim=0).values, x.max(dim=0).values
    x = (x - lo) / (hi - lo)
    return x.to(dtype), torch.as_tensor(bunch.target, dtype=torch.int64)


def _all_patterns(n_bits: int) -> torch.Tensor:
    """Every ``n_bits``-bit pattern as rows of 0/1 (int64), most significant bit first."""
    codes = torch.arange(2**n_bits)
    shifts = torch.arange(n_bits - 1, -1, -1)
    return (codes[:, None] >> shifts) & 1


def ring_statistic(bits: torch.Tensor) -> torch.Tensor:
    r"""The rotation-invariant statistic behind :func:`tishby_patterns`' labels.

    With spins :math:`\sigma_i = 2 x_i - 1 \in \{-1, +1\}` on a ring of :math:`n` sites
    (indices mod :math:`n`),

    .. math::
        s(x) = 2 \sum_i \sigma_i \sigma_{i+1} - \sum_i \sigma_i \sigma_{i+2} + \sum_i \sigma_i ,

    an integer: an Ising-like energy (nearest neighbours aligned, next-nearest anti-aligned) plus
    the magnetisation. Every term is a sum over all sites, so :math:`s` is invariant under cyclic
    rotation (and reflection) of the ring.

    Args:
        bits: ``[..., n]`` tensor of 0/1.

    Returns:
        ``[...]`` int64 tensor.

    >>> ring_statistic(torch.tensor([[1] * 12, [0] * 12]))
    tensor([24,  0])
    """
    s = 2 * bits.long() - 1
    nn1 = (s * s.roll(-1, dims=-1)).sum(-1)
    nn2 = (s * s.roll(-2, dims=-1)).sum(-1)
    return 2 * nn1 - nn2 + s.sum(-1)


def _balanced_threshold(stat: torch.Tensor) -> int:
    """The threshold ``t`` such that ``stat > t`` is as close to half of the rows as possible.

    Candidates are the distinct values of ``stat``; equally good candidates resolve to the
    smallest one. Every row with ``stat == t`` is negative, so the rule stays a function of
    ``stat`` (rows tied at the threshold are never split).
    """
    values = torch.unique(stat)  # sorted ascending
    positives = (stat[None, :] > values[:, None]).sum(1)
    gap = (2 * positives - len(stat)).abs()
    return int(values[int(torch.argmin(gap))])  # argmin returns the first minimum


def tishby_patterns(seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""All 4096 12-bit binary patterns with a rotation-invariant binary label.

    Shwartz-Ziv & Tishby (2017, arXiv 1703.00810) trained a 12-10-7-5-4-3-2 network on every
    12-bit pattern, the bits standing for 12 points on a sphere and the label a thresholded
    spherically symmetric function. Their file cannot be fetched, so this data set is generated
    with the same ingredients on a ring: the 12 bits sit on a ring, and

    .. math::
        y = \mathbb{1}\left[ s(x) > \theta \right],

    with :math:`s` the rotation-invariant statistic of :func:`ring_statistic` and :math:`\theta`
    the threshold making the classes as balanced as possible (:math:`\theta = 0`; patterns with
    :math:`s = \theta` are negative, so ties are never split and the labels are invariant under
    every cyclic rotation of the bits). This gives 2,049 positives out of 4,096
    (fraction 0.50024). Like the original rule, the label depends on which bits are set (here
    through their neighbourhoods), not only on how many.

    Args:
        seed: ``None`` (default) returns the patterns in binary counting order (row ``k`` is
            ``k`` in binary, most significant bit first); an integer shuffles the rows with that
            seed. The labels of a pattern never depend on ``seed``.

    Returns:
        ``(x, y)``: float32 ``[4096, 12]`` of 0/1 and int64 ``[4096]`` of 0/1.

    >>> x, y = tishby_patterns()
    >>> int(y.sum()), float(y.double().mean())
    (2049, 0.500244140625)
    >>> bool((y == tishby_patterns()[1]).all())
    True
    """
    bits = _all_patterns(TISHBY_BITS)
    stat = ring_statistic(bits)
    y = (stat > _balanced_threshold(stat)).long()
    x = bits.float()
    if seed is not None:
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(int(seed)))
        x, y = x[perm], y[perm]
    return x, y


def one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot encode int labels ``[N]`` into ``[N, num_classes]`` of ``dtype``.

    Raises:
        ValueError: a label outside ``[0, num_classes)``, or non-integer labels.

    >>> one_hot(torch.tensor([0, 2]), 3)
    tensor([[1., 0., 0.],
            [0., 0., 1.]])
    """
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"one_hot: labels y must be an integer tensor, got dtype {y.dtype}")
    if num_classes < 1:
        raise ValueError(f"one_hot: num_classes must be >= 1, got {num_classes}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"one_hot: labels must lie in [0, {num_classes}), got range "
            f"[{int(y.min())}, {int(y.max())}]"
        )
    return torch.nn.functional.one_hot(y.long(), num_classes).to(dtype)


def _check_float_dtype(dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
