"""Nearest-neighbour classification: brute-force agreement, chunking, deep kNN, the soft surrogate,
its attacks (property suite and strength) and input errors, on digits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustlab as rl
from robustlab.defenses.knn import BoundaryWalk, NearestNeighbor, SurrogatePGD, knn_search, penultimate
from robustlab.testing import check_attack


def _brute_votes(train_x, train_y, x, k, num_classes=10):
    d = ((x.flatten(1)[:, None, :] - train_x.flatten(1)[None, :, :]) ** 2).sum(-1)  # (N, M)
    idx = d.argsort(dim=1, stable=True)[:, :k]
    votes = torch.zeros(x.shape[0], num_classes)
    votes.scatter_add_(1, train_y[idx], torch.ones(idx.shape, dtype=votes.dtype))
    return votes, idx


@pytest.mark.parametrize("k", [1, 3, 7])
def test_knn_equals_brute_force(digits_train, digits_test, k):
    x = digits_test.images[:80]
    knn = NearestNeighbor(digits_train, k=k, exact=True)
    votes, idx = _brute_votes(digits_train.images, digits_train.labels, x, k)
    assert torch.equal(knn(x), votes)
    _, got = knn.neighbors(x)
    assert torch.equal(got, idx)
    fast = NearestNeighbor(digits_train, k=k)  # matrix-product distances: same decisions here
    assert torch.equal(fast(x).argmax(1), votes.argmax(1))
    assert float((knn(digits_test.images).argmax(1) == digits_test.labels).double().mean()) > 0.95


def test_chunking_gives_identical_results(digits_train, digits_test):
    x = digits_test.images[:50]
    ref_d, ref_i = knn_search(x.flatten(1), digits_train.images.flatten(1), 5, 10**9, exact=True)
    for chunk in (3, 100, 1436):
        d, i = knn_search(x.flatten(1), digits_train.images.flatten(1), 5, chunk, exact=True)
        assert torch.equal(i, ref_i) and torch.equal(d, ref_d)
    whole = NearestNeighbor(digits_train, k=5, exact=True)(x)
    assert torch.equal(NearestNeighbor(digits_train, k=5, chunk_size=64, exact=True)(x), whole)


def test_deep_knn_on_penultimate_features(digits_train, digits_test):
    model = rl.models.create("mlp", digits_train, seed=0)
    feats = penultimate(model)
    assert feats(digits_test.images[:2]).shape == (2, 256)
    assert feats.net[1].weight is model.net[1].weight  # shared, not copied
    knn = NearestNeighbor(digits_train, space="features", k=3, feature_model=model, exact=True)
    assert knn.index.shape == (digits_train.images.shape[0], 256)
    x = digits_test.images[:30]
    with torch.no_grad():
        f_train, f_x = feats(digits_train.images), feats(x)
    votes, _ = _brute_votes(f_train, digits_train.labels, f_x, 3)
    assert torch.equal(knn(x), votes)
    assert model.training  # the caller's mode is untouched (create() returns a training-mode module)


def test_soft_votes_and_surrogate(digits_train, digits_test):
    x = digits_test.images[:40]
    soft = NearestNeighbor(digits_train, k=5, votes="soft", temperature=2.0)
    assert torch.allclose(soft(x).exp().sum(1), torch.ones(40), atol=1e-5)
    knn = NearestNeighbor(digits_train, k=1)
    sur = knn.surrogate()
    x_req = x.clone().requires_grad_(True)
    logits = sur(x_req)
    assert logits.shape == (40, 10) and torch.isfinite(logits).all()
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(logits, digits_test.labels[:40]), x_req)
    assert g.abs().sum() > 0
    agree = (logits.argmax(1) == knn(x).argmax(1)).double().mean()
    assert float(agree) >= 0.9


@pytest.fixture(scope="module")
def small_knn(digits_train):
    return NearestNeighbor((digits_train.images[:300], digits_train.labels[:300]), k=1, num_classes=10)


@pytest.fixture(scope="module")
def knn_batch(small_knn, digits_test):
    x, y = digits_test.images[:40], digits_test.labels[:40]
    keep = (small_knn(x).argmax(1) == y).nonzero().squeeze(1)[:8]
    return x[keep], y[keep]


def test_boundary_walk_passes_property_suite(small_knn, knn_batch, digits_train):
    starts = (digits_train.images[:300], digits_train.labels[:300])
    tm = rl.ThreatModel("linf", 0.3)
    res = check_attack(lambda seed: BoundaryWalk(tm, starts, iterations=3, directions=10, seed=seed),
                       small_knn, *knn_batch)
    assert res.queries is not None and bool((res.queries > 0).all())


def test_surrogate_pgd_passes_property_suite(small_knn, knn_batch):
    tm = rl.ThreatModel("linf", 0.3)
    check_attack(lambda seed: SurrogatePGD(tm, steps=5, seed=seed), small_knn, *knn_batch)


def test_attacks_break_knn_at_large_eps(small_knn, knn_batch, digits_train):
    starts = (digits_train.images[:300], digits_train.labels[:300])
    x, y = knn_batch
    tm = rl.ThreatModel("linf", 0.3)
    walk = BoundaryWalk(tm, starts, iterations=5, directions=20).attack(small_knn, x, y)
    pgd = SurrogatePGD(tm, steps=20).attack(small_knn, x, y)
    assert walk.robust_accuracy <= 0.25 and pgd.robust_accuracy <= 0.5
    assert bool((walk.distance[walk.success] <= 0.3 + 1e-6).all())


def test_bad_inputs(digits_train, digits_test):
    empty = (digits_train.images[:0], digits_train.labels[:0])
    with pytest.raises(ValueError, match="empty"):
        NearestNeighbor(empty)
    with pytest.raises(ValueError, match="labels"):
        NearestNeighbor((digits_train.images[:10], digits_train.labels[:9]))
    with pytest.raises(ValueError, match="k=20"):
        NearestNeighbor((digits_train.images[:10], digits_train.labels[:10]), k=20)
    with pytest.raises(ValueError, match="space"):
        NearestNeighbor(digits_train, space="latent")
    with pytest.raises(TypeError, match="feature_model"):
        NearestNeighbor(digits_train, space="features")
    with pytest.raises(ValueError, match="num_classes"):
        NearestNeighbor(digits_train, num_classes=5)
    with pytest.raises(TypeError, match="Dataset"):
        NearestNeighbor(digits_train.images)
    knn = NearestNeighbor((digits_train.images[:50], digits_train.labels[:50]))
    with pytest.raises(ValueError, match="image shape"):
        knn(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="threat"):
        BoundaryWalk(rl.ThreatModel("l1", 1.0), digits_train)
