"""Dataset: the embedded digits, batching, subsets, and validation of user tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robustlab as rl
from robustlab.data import DIGITS_TRAIN, spec


def test_digits_is_embedded_and_well_formed():
    train, test = rl.data.load("digits", "train"), rl.data.load("digits", "test")
    assert (len(train), len(test)) == (DIGITS_TRAIN, 360)
    for d in (train, test):
        assert d.images.dtype == torch.float32 and d.labels.dtype == torch.int64
        assert d.images.shape[1:] == (1, 8, 8) and d.shape == (1, 8, 8) and d.num_classes == 10
        assert d.classes == tuple("0123456789")
        assert float(d.images.min()) == 0.0 and float(d.images.max()) == 1.0
        # 17 grey levels: every pixel is k/16.
        assert torch.equal(d.images * 16, (d.images * 16).round())
    assert torch.bincount(test.labels, minlength=10).min() >= 28  # every class in the test split
    # The split is fixed and disjoint: together the two splits are scikit-learn's 1797 digits.
    again = rl.data.load("digits", "test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


def test_digits_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.datasets")
    ref = sklearn.load_digits()
    train, test = rl.data.load("digits", "train"), rl.data.load("digits", "test")
    x = torch.cat([train.images, test.images]).reshape(-1, 64) * 16  # (1797, 64) grey levels
    y = torch.cat([train.labels, test.labels])
    ours = sorted(map(tuple, torch.cat([x.round().long(), y[:, None]], 1).tolist()))
    theirs = sorted(map(tuple, np.concatenate([ref.data.astype(np.int64), ref.target[:, None]], 1).tolist()))
    assert ours == theirs  # the two splits together are exactly scikit-learn's 1797 (image, label) pairs


def test_digits_statistics_are_the_train_split_ones():
    x = rl.data.load("digits", "train").images.double()
    s = spec("digits")
    assert s.mean[0] == pytest.approx(float(x.mean()), abs=5e-5)
    assert s.std[0] == pytest.approx(float(x.std(correction=0)), abs=5e-5)
    d = rl.data.load("digits", "test")
    assert (d.mean, d.std) == (s.mean, s.std)


def test_known_statistics_and_aliases():
    assert spec("mnist").mean == (0.1307,) and spec("mnist").std == (0.3081,)
    assert spec("fashion_mnist") == spec("fashion-mnist") == spec("FMNIST")
    assert spec("fashion-mnist").mean == (0.2860,) and spec("fashion-mnist").std == (0.3530,)
    assert spec("cifar-10").mean == (0.4914, 0.4822, 0.4465) and spec("cifar10").shape == (3, 32, 32)
    assert spec("cifar10").classes[0] == "airplane" and spec("fashion-mnist").classes[9] == "Ankle boot"


def test_unknown_names_and_splits_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*cifar10, cifar10-sample, cifar100-sample, digits, fashion-mnist, "
                       "imagenet-sample, imagenet-sample-512, mnist"):
        rl.data.load("imagenet")
    with pytest.raises(ValueError, match="split must be one of train, test, got 'validation'"):
        rl.data.load("digits", "validation")
    with pytest.raises(TypeError, match="dataset name must be a string"):
        rl.data.load(3)  # type: ignore[arg-type]


def test_batches_cover_everything_once_and_shuffle_is_seeded(digits_test):
    xs, ys = zip(*digits_test.batches(64))
    assert [len(y) for y in ys] == [64] * 5 + [40]
    assert torch.equal(torch.cat(ys), digits_test.labels) and torch.equal(torch.cat(xs), digits_test.images)

    def order(**kw):
        return torch.cat([x.flatten(1) @ torch.arange(64.0) + y for x, y in digits_test.batches(50, shuffle=True, **kw)])

    a, b, c = order(seed=1), order(seed=1), order(seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a.sort().values, order().sort().values)  # a permutation of all samples
    assert not torch.equal(a, torch.cat([x.flatten(1) @ torch.arange(64.0) + y for x, y in digits_test.batches(50)]))
    # A generator advances: two epochs differ, and replaying the generator replays both.
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    e1, e2 = order(seed=g1), order(seed=g1)
    assert not torch.equal(e1, e2) and torch.equal(order(seed=g2), e1) and torch.equal(order(seed=g2), e2)
    # drop_last keeps only full batches; the global RNG is not touched.
    state = torch.get_rng_state()
    sizes = [len(y) for _, y in digits_test.batches(100, shuffle=True, drop_last=True)]
    assert sizes == [100, 100, 100] and torch.equal(torch.get_rng_state(), state)
    for bad in (0, -1, 2.5, True):
        with pytest.raises((ValueError, TypeError), match="batch_size"):
            next(digits_test.batches(bad))  # type: ignore[arg-type]


def test_indexing_and_subset(digits_test):
    d = digits_test
    assert len(d.subset(10)) == 10 and torch.equal(d.subset(10).labels, d.labels[:10])
    assert len(d.subset(10_000)) == len(d)  # at most n
    sub = d.subset(torch.tensor([3, 1]))
    assert torch.equal(sub.labels, d.labels[[3, 1]]) and torch.equal(sub.images, d.images[[3, 1]])
    assert torch.equal(d[[5, 0]].labels, d.labels[[5, 0]])
    one = d[-1]
    assert isinstance(one, type(d)) and len(one) == 1 and torch.equal(one.images[0], d.images[-1])
    mask = d.labels == 3
    assert torch.equal(d[mask].labels, d.labels[mask]) and len(d[mask]) == int(mask.sum())
    assert len(d[10:20]) == 10 and d[10:20].classes == d.classes and d[10:20].mean == d.mean
    assert (sub.name, sub.split, sub.source) == (d.name, d.split, d.source)
    with pytest.raises(IndexError, match="out of range"):
        d[len(d)]
    with pytest.raises(IndexError, match="boolean mask"):
        d[torch.ones(3, dtype=torch.bool)]
    with pytest.raises(TypeError, match="integer indices"):
        d[torch.tensor([0.5])]
    with pytest.raises(ValueError, match="subset size must be >= 1"):
        d.subset(0)


def test_to_device_keeps_everything_else(digits_test):
    moved = digits_test.to("cpu")
    assert moved.images.device.type == "cpu" and torch.equal(moved.labels, digits_test.labels)
    assert moved.classes == digits_test.classes and "n=360" in repr(moved)


def test_from_tensors_accepts_good_input():
    x = torch.rand(6, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.int32)
    d = rl.data.from_tensors(x, y, name="mine")
    assert d.images.dtype == torch.float32 and d.labels.dtype == torch.int64 and d.shape == (3, 4, 5)
    assert d.classes == ("0", "1", "2") and d.name == "mine" and len(d) == 6
    assert d.mean == pytest.approx(tuple(x.mean(dim=(0, 2, 3)).tolist()), abs=1e-6) and len(d.std) == 3
    d2 = rl.data.from_tensors(x.float(), y, classes=["a", "b", "c", "d"], mean=[0.5] * 3, std=(0.25, 0.25, 0.25))
    assert d2.num_classes == 4 and d2.mean == (0.5, 0.5, 0.5) and d2.std == (0.25, 0.25, 0.25)


@pytest.mark.parametrize(
    "images, labels, kwargs, error, match",
    [
        (torch.full((2, 1, 4, 4), float("nan")), torch.tensor([0, 1]), {}, ValueError, "NaN"),
        (torch.full((2, 1, 4, 4), 2.0), torch.tensor([0, 1]), {}, ValueError, "expected images in"),
        (torch.zeros(2, 16), torch.tensor([0, 1]), {}, ValueError, r"shape \(N, C, H, W\)"),
        (torch.zeros(2, 1, 4, 4), torch.tensor([0]), {}, ValueError, r"shape \(2,\)"),
        (torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.long), {}, ValueError, "empty batch"),
        (torch.zeros(2, 1, 4, 4), torch.tensor([0, 5]), {"classes": ("a", "b")}, ValueError, "class index 5"),
        (torch.zeros(2, 1, 4, 4), torch.tensor([0, -1]), {}, ValueError, "negative class index"),
        (torch.zeros(2, 1, 4, 4), torch.tensor([0.0, 1.0]), {}, TypeError, "integer class indices"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), {}, TypeError, "floating-point"),
        (np.zeros((2, 1, 4, 4)), torch.tensor([0, 1]), {}, TypeError, "torch.Tensor"),
        (torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), {"mean": (0.1, 0.2)}, ValueError, "mean needs 1 values"),
        (torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), {"std": (0.0,)}, ValueError, "std must hold finite positive"),
        (torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), {"classes": ()}, ValueError, "class"),
    ],
)
def test_from_tensors_rejects_bad_input(images, labels, kwargs, error, match):
    with pytest.raises(error, match=match):
        rl.data.from_tensors(images, labels, **kwargs)


def test_dataset_constructor_checks_types():
    Dataset = rl.data.Dataset
    x, y = torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(TypeError, match="float32"):
        Dataset("d", "train", x.double(), y, ("a",), (0.0,), (1.0,))
    with pytest.raises(TypeError, match=r"int64 tensor of shape \(2,\)"):
        Dataset("d", "train", x, y[:1], ("a",), (0.0,), (1.0,))
    with pytest.raises(ValueError, match="one per channel"):
        Dataset("d", "train", x, y, ("a",), (0.0, 0.0), (1.0,))
