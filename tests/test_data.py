"""Tests of foresight.data: bundled scikit-learn data and the generated 12-bit patterns."""

from __future__ import annotations

import itertools
import socket

import numpy as np
import pytest
import torch

from foresight import data

try:
    import sklearn.datasets as sklearn_datasets
except ImportError:  # pragma: no cover - scikit-learn is in the test extra
    sklearn_datasets = None

needs_sklearn = pytest.mark.skipif(sklearn_datasets is None, reason="needs scikit-learn")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a socket fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("foresight.data tried to open a network connection")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ------------------------------------------------------------------------------------- digits


@needs_sklearn
@pytest.mark.parametrize("n_train", [1, 7, 10, 200, 500, 1796])
def test_digits_shapes_ranges_and_partition(n_train: int, no_network: None) -> None:
    split = data.digits(n_train=n_train, seed=3)
    raw = sklearn_datasets.load_digits()
    n = len(raw.target)
    assert split.x_train.shape == (n_train, 64) and split.x_test.shape == (n - n_train, 64)
    assert split.y_train.shape == (n_train,) and split.y_test.shape == (n - n_train,)
    assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.int64
    for x in (split.x_train, split.x_test):
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # train and test together are exactly the raw data set (as a multiset of (image, label) rows)
    ours = torch.cat(
        [
            torch.cat([split.x_train, split.y_train[:, None].float()], 1),
            torch.cat([split.x_test, split.y_test[:, None].float()], 1),
        ]
    ).double().numpy()
    theirs = np.concatenate([raw.data / 16.0, raw.target[:, None]], axis=1)
    np.testing.assert_allclose(
        ours[np.lexsort(ours.T[::-1])], theirs[np.lexsort(theirs.T[::-1])], atol=1e-7
    )


@needs_sklearn
def test_digits_stratified_counts() -> None:
    n_train = 200
    split = data.digits(n_train=n_train, seed=0)
    counts = torch.bincount(split.y_train, minlength=10)
    full = torch.bincount(torch.as_tensor(sklearn_datasets.load_digits().target), minlength=10)
    expected = full.double() * n_train / full.sum()
    assert int(counts.sum()) == n_train
    # largest-remainder rounding: every class within one of its proportional share
    assert bool(((counts.double() - expected).abs() < 1).all())


@needs_sklearn
def test_digits_determinism_and_seed() -> None:
    a, b = data.digits(n_train=50, seed=1), data.digits(n_train=50, seed=1)
    c = data.digits(n_train=50, seed=2)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.x_train, c.x_train)


@needs_sklearn
def test_digits_accepts_numpy_and_torch_integers() -> None:
    ref = data.digits(n_train=30, seed=4)
    for n_train in (np.int64(30), torch.tensor(30)):
        split = data.digits(n_train=n_train, seed=4)  # type: ignore[arg-type]
        assert torch.equal(split.x_train, ref.x_train) and torch.equal(split.y_test, ref.y_test)


@needs_sklearn
def test_digits_dtype() -> None:
    split = data.digits(n_train=20, dtype=torch.float64)
    assert split.x_train.dtype == torch.float64 and split.x_test.dtype == torch.float64


@needs_sklearn
@pytest.mark.parametrize("bad", [0, -1, 1797, 5000, 2.5, "100", True, None])
def test_digits_bad_n_train(bad: object) -> None:
    with pytest.raises(ValueError, match="n_train"):
        data.digits(n_train=bad)  # type: ignore[arg-type]


def test_bad_dtype() -> None:
    with pytest.raises(ValueError, match="dtype"):
        data.digits(dtype=torch.int64)
    with pytest.raises(ValueError, match="dtype"):
        data.iris(dtype=torch.int32)


# --------------------------------------------------------------------------------------- iris


@needs_sklearn
def test_iris_scaled_per_column(no_network: None) -> None:
    x, y = data.iris()
    raw = sklearn_datasets.load_iris()
    assert x.shape == (150, 4) and y.shape == (150,)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    lo, hi = raw.data.min(0), raw.data.max(0)
    np.testing.assert_allclose(x.numpy(), (raw.data - lo) / (hi - lo), rtol=0, atol=1e-6)
    assert torch.equal(x.min(0).values, torch.zeros(4))
    assert torch.equal(x.max(0).values, torch.ones(4))
    assert torch.equal(y, torch.as_tensor(raw.target, dtype=torch.int64))
    assert data.iris(dtype=torch.float64)[0].dtype == torch.float64


# ------------------------------------------------------------------------------ 12-bit patterns


def _ring_statistic_loop(bits: list[int]) -> int:
    """Independent scalar version of the documented statistic."""
    n = len(bits)
    s = [2 * b - 1 for b in bits]
    nn1 = sum(s[i] * s[(i + 1) % n] for i in range(n))
    nn2 = sum(s[i] * s[(i + 2) % n] for i in range(n))
    return 2 * nn1 - nn2 + sum(s)


def test_tishby_shapes_and_all_patterns() -> None:
    x, y = data.tishby_patterns()
    assert x.shape == (4096, 12) and x.dtype == torch.float32
    assert y.shape == (4096,) and y.dtype == torch.int64
    assert set(torch.unique(x).tolist()) == {0.0, 1.0}
    assert set(torch.unique(y).tolist()) == {0, 1}
    # every pattern exactly once, row k is k in binary (MSB first)
    rows = {tuple(int(v) for v in r) for r in x.tolist()}
    assert rows == set(itertools.product((0, 1), repeat=12))
    weights = 2 ** torch.arange(11, -1, -1)
    assert torch.equal((x.long() * weights).sum(1), torch.arange(4096))


def test_tishby_labels_follow_documented_rule() -> None:
    x, y = data.tishby_patterns()
    stats = [_ring_statistic_loop([int(v) for v in r]) for r in x.tolist()]
    assert torch.equal(data.ring_statistic(x.long()), torch.tensor(stats))
    # balance: the threshold 0 is the best possible one for this statistic
    positives = int(y.sum())
    assert positives == 2049
    for t in sorted(set(stats)):
        assert abs(sum(s > t for s in stats) - 2048) >= abs(positives - 2048)
    assert torch.equal(y, (torch.tensor(stats) > 0).long())


def test_tishby_rotation_and_reflection_invariance() -> None:
    x, y = data.tishby_patterns()
    label = {tuple(int(v) for v in r): int(t) for r, t in zip(x.tolist(), y.tolist())}
    for pattern, t in label.items():
        for k in range(1, 12):
            rotated = pattern[k:] + pattern[:k]
            assert label[rotated] == t
        assert label[pattern[::-1]] == t


def test_tishby_not_a_function_of_the_count_alone() -> None:
    x, y = data.tishby_patterns()
    count = x.sum(1).long()
    mixed = [c for c in range(13) if len(torch.unique(y[count == c])) == 2]
    assert mixed, "the rule should depend on the arrangement of the bits, not only their number"


def test_tishby_seed_shuffles_rows_only() -> None:
    x0, y0 = data.tishby_patterns()
    x1, y1 = data.tishby_patterns(seed=5)
    x2, y2 = data.tishby_patterns(seed=5)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x0, x1)
    weights = 2 ** torch.arange(11, -1, -1)
    codes = (x1.long() * weights).sum(1)
    assert torch.equal(torch.sort(codes).values, torch.arange(4096))
    assert torch.equal(y1, y0[codes])


# ------------------------------------------------------------------------------------ one_hot


def test_one_hot() -> None:
    y = torch.tensor([2, 0, 1, 2])
    out = data.one_hot(y, 3)
    assert out.dtype == torch.float32
    assert torch.equal(out.argmax(1), y) and torch.equal(out.sum(1), torch.ones(4))
    assert data.one_hot(y, 4, dtype=torch.float64).shape == (4, 4)
    with pytest.raises(ValueError, match="labels must lie"):
        data.one_hot(y, 2)
    with pytest.raises(ValueError, match="integer"):
        data.one_hot(y.float(), 3)
    with pytest.raises(ValueError, match="num_classes"):
        data.one_hot(y, 0)
