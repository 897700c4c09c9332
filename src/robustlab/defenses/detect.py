"""Detectors of adversarial inputs: one interface, ``fit`` / ``score`` / ``flag``.

A :class:`Detector` maps images (N, C, H, W) in [0, 1] to a score per image (higher = more
suspicious). ``fit(clean_data, fpr=0.05)`` sets ``threshold`` to the ``1 - fpr`` quantile of the
scores of held-out clean images (use images the detector's reference set and the model were not
fit on), so that ``flag(x) = score(x) > threshold`` flags about ``fpr`` of clean inputs.
Scores are differentiable in ``x`` where the detector allows (``differentiable``), and
:meth:`Detector.score_surrogate` gives a differentiable stand-in otherwise: the adaptive attacks
of :mod:`robustlab.attacks.adaptive` push it below the threshold (Carlini & Wagner 2017,
arXiv:1705.07263).

- :class:`FeatureSqueezing` (Xu, Evans, Qi 2018, arXiv:1704.01155): ``max_i ||softmax f(x) -
  softmax f(s_i(x))||_1`` over squeezers ``s_i`` (by default bit depth and a 2x2 median filter;
  no non-local means, which the paper adds for colour images); the squeezers are differentiated
  straight-through (BPDA).
- :class:`MagNetDetector` (Meng & Chen 2017, arXiv:1705.09064, sec. 3.1): reconstruction error
  ``mean |x - AE(x)|^p`` of an auto-encoder trained on clean data.
- :class:`KNNDetector`: the fraction of the ``k`` nearest reference (training) points, in pixel or
  feature space, whose label disagrees with the model's prediction (the kNN consistency test of
  Papernot & McDaniel's DkNN, arXiv:1803.04765, reduced to one layer).
- :class:`LID` (Ma et al. 2018, arXiv:1801.02613, eq. 3): the maximum-likelihood local intrinsic
  dimensionality ``-(1/k sum_i log(d_i / d_k))^-1`` of the input's features among a clean reference
  batch, averaged over layers (used directly as the score; the paper feeds per-layer LIDs to a
  logistic regression trained on attacks, which an unsupervised detector cannot see).

:class:`MMDTest` (Grosse et al. 2017, arXiv:1702.06280, sec. 3) is a batch-level test, not a
per-image detector: a kernel two-sample test of a suspect batch against clean reference images
(biased MMD^2 with a Gaussian kernel, p-value by a seeded permutation test).
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from robustlab._checks import check_images, check_labels, check_positive, check_probability
from robustlab.attacks.base import eval_mode
from robustlab.attacks.eot import BPDAWrapper
from robustlab.defenses.transforms import median_filter

__all__ = [
    "Detector", "FeatureSqueezing", "NotFittedError", "KNNDetector", "LID", "MMDResult", "MMDTest", "MagNetDetector",
    "detection_metrics", "roc_auc", "roc_curve", "tap",
]


def _images_of(data: Any, name: str) -> Tensor:
    """Images from a Dataset (``.images``), an ``(images, labels)`` pair or a tensor."""
    if isinstance(data, Tensor):
        images = data
    elif hasattr(data, "images"):
        images = data.images
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        images = data[0]
    else:
        raise TypeError(f"{name} must be a Dataset, an (images, labels) pair or an image tensor, got {type(data).__name__}")
    return check_images(images, name)


def _labelled(data: Any, name: str) -> tuple[Tensor, Tensor]:
    if hasattr(data, "images") and hasattr(data, "labels"):
        images, labels = data.images, data.labels
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = data
    else:
        raise TypeError(f"{name} must be a Dataset or an (images, labels) pair, got {type(data).__name__}")
    check_images(images, name)
    check_labels(labels, images.shape[0], f"{name} labels")
    return images, labels


def _device(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def roc_auc(clean_scores: Tensor, adv_scores: Tensor) -> float:
    """Area under the ROC curve of separating ``adv_scores`` (positives) from ``clean_scores``:
    ``P(s_adv > s_clean) + P(s_adv = s_clean) / 2`` (the Mann-Whitney statistic, ties halved).
    Scores on any device (ranked on the CPU)."""
    c = clean_scores.detach().double().flatten().cpu()
    a = adv_scores.detach().double().flatten().cpu()
    if c.numel() == 0 or a.numel() == 0:
        raise ValueError(f"roc_auc needs scores of both kinds, got {c.numel()} clean and {a.numel()} adversarial")
    both = torch.cat([c, a])
    order = both.argsort()
    ranks = torch.empty_like(both)
    ranks[order] = torch.arange(1, both.numel() + 1, dtype=both.dtype)
    # average ranks over ties
    uniq, inverse = torch.unique(both, return_inverse=True)
    sums = torch.zeros(uniq.numel(), dtype=both.dtype).index_add_(0, inverse, ranks)
    counts = torch.zeros(uniq.numel(), dtype=both.dtype).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (sums / counts)[inverse]
    n_c, n_a = c.numel(), a.numel()
    u = ranks[n_c:].sum() - n_a * (n_a + 1) / 2
    return float(u / (n_a * n_c))


def roc_curve(clean_scores: Tensor, adv_scores: Tensor) -> tuple[list[float], list[float]]:
    """``(false-positive rates, true-positive rates)`` over all thresholds, from (0, 0) to (1, 1)."""
    c = clean_scores.detach().double().flatten()
    a = adv_scores.detach().double().flatten()
    thresholds = torch.unique(torch.cat([c, a])).flip(0)  # decreasing
    fpr = (c[None, :] >= thresholds[:, None]).double().mean(1)
    tpr = (a[None, :] >= thresholds[:, None]).double().mean(1)
    return [0.0, *fpr.tolist()], [0.0, *tpr.tolist()]


class NotFittedError(ValueError):
    """A detector was asked to flag inputs before :meth:`Detector.fit` set its threshold."""


class Detector(abc.ABC):
    """Base class: subclasses implement :meth:`score`; ``fit`` sets the threshold."""

    #: Whether :meth:`score` is differentiable in ``x`` (else use :meth:`score_surrogate`).
    differentiable: bool = True
    name: str = "detector"

    def __init__(self) -> None:
        self.threshold: Optional[float] = None
        self.fpr: Optional[float] = None
        self.fit_fpr: Optional[float] = None

    # -- the interface ---------------------------------------------------------------------
    @abc.abstractmethod
    def _score(self, x: Tensor) -> Tensor:
        """(N,) scores of a checked batch on the detector's device."""

    def _modules(self) -> Sequence[nn.Module]:
        """The networks the score evaluates (kept in eval mode while scoring)."""
        return ()

    @contextlib.contextmanager
    def _eval(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for m in self._modules():
                stack.enter_context(eval_mode(m))
            yield

    def score(self, x: Tensor) -> Tensor:
        """(N,) scores, higher = more likely adversarial; differentiable if ``differentiable``."""
        check_images(x.detach(), "x")
        with self._eval():
            return self._score(x)

    def score_surrogate(self, x: Tensor) -> Tensor:
        """A differentiable stand-in for :meth:`score` on the same scale (default: the score)."""
        return self.score(x)

    def scores(self, data: Any, batch_size: int = 100) -> Tensor:
        """Scores of a whole dataset (no gradient), in chunks of ``batch_size``."""
        images = _images_of(data, "data")
        check_positive(batch_size, "batch_size", integer=True)
        with torch.no_grad():
            return torch.cat([self.score(chunk) for chunk in images.split(batch_size)])

    def fit(self, clean_data: Any, fpr: float = 0.05, *, batch_size: int = 100) -> "Detector":
        """Set ``threshold`` so that about ``fpr`` of the held-out ``clean_data`` is flagged.

        ``threshold`` is the ``ceil((1 - fpr) n)``-th smallest clean score (the "higher" quantile),
        so at most ``fpr`` of these images score above it; ``fit_fpr`` records the fraction that
        does (lower than ``fpr`` when scores tie, e.g. kNN's counts). Returns ``self``."""
        fpr = check_probability(fpr, "fpr")
        s = self.scores(clean_data, batch_size).double()
        if s.numel() < 2:
            raise ValueError(f"clean_data must hold at least 2 images to set a threshold, got {s.numel()}")
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"{self.name} produced non-finite scores on clean_data")
        self.threshold = float(torch.quantile(s, 1.0 - fpr, interpolation="higher"))
        self.fpr = fpr
        self.fit_fpr = float((s > self.threshold).double().mean())
        return self

    def _require_fit(self) -> float:
        if self.threshold is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(clean_data, fpr=...) before flag()")
        return self.threshold

    def flag(self, x: Tensor) -> Tensor:
        """Bool (N,): ``score(x) > threshold`` (needs :meth:`fit`)."""
        threshold = self._require_fit()
        with torch.no_grad():
            return self.score(x) > threshold

    def config(self) -> dict:
        return {"detector": self.name, "threshold": self.threshold, "fpr": self.fpr}


# -- feature taps -----------------------------------------------------------------------------


def _relu_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.ReLU)]


def _last_linear(model: nn.Module) -> nn.Module:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear layer; pass layers=[...] to pick the feature layers")
    return linears[-1]


def tap(model: nn.Module, x: Tensor, layers: Sequence[nn.Module], *, inputs: bool = False) -> tuple[Tensor, list[Tensor]]:
    """``(logits, [features (N, D_l)])``: the outputs (or, with ``inputs``, the inputs) of
    ``layers`` during one forward pass, flattened; differentiable in ``x``."""
    grabbed: list[Optional[Tensor]] = [None] * len(layers)
    handles = []

    def grab(i: int) -> Callable:
        def hook(_m: nn.Module, args: tuple, out: Any = None) -> None:
            grabbed[i] = args[0] if inputs else out

        return hook

    try:
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(grab(i)) if inputs else layer.register_forward_hook(grab(i)))
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    missing = [i for i, g in enumerate(grabbed) if g is None]
    if missing:
        raise ValueError(f"layers {missing} were not used by the model's forward pass")
    return logits, [g.flatten(1) for g in grabbed]  # type: ignore[union-attr]


def _knn_distances(query: Tensor, reference: Tensor, k: int, chunk: int) -> tuple[Tensor, Tensor]:
    """``(distances (N, k), indices (N, k))`` of the k nearest reference rows, ascending, with
    ``torch.cdist`` over reference chunks of ``chunk`` rows (memory ``N x chunk``)."""
    best_d: Optional[Tensor] = None
    best_i: Optional[Tensor] = None
    for start in range(0, reference.shape[0], chunk):
        d = torch.cdist(query, reference[start : start + chunk])  # (N, chunk)
        idx = torch.arange(start, start + d.shape[1], device=query.device).expand_as(d)
        if best_d is not None:
            d, idx = torch.cat([best_d, d], 1), torch.cat([best_i, idx], 1)  # type: ignore[list-item]
        kk = min(k, d.shape[1])
        best_d, pos = d.topk(kk, dim=1, largest=False)
        best_i = idx.gather(1, pos)
    return best_d, best_i  # type: ignore[return-value]


# -- detectors --------------------------------------------------------------------------------


def default_squeezers(channels: int) -> list[Callable[[Tensor], Tensor]]:
    """One channel: 1-bit depth and a 2x2 median filter (Xu et al.'s MNIST joint detector).
    Colour images: 5-bit depth and a 2x2 median filter only. Xu et al.'s CIFAR-10 and ImageNet
    joint detectors also use a non-local means filter (13-3-2 and 11-3-4), which robustlab does not
    implement: the colour default is the paper's detector without that squeezer (pass your own
    ``squeezers`` to add one)."""
    bits = 1 if channels == 1 else 5
    levels = 2**bits - 1

    def bit_depth(x: Tensor) -> Tensor:
        return torch.round(x * levels) / levels

    def median2(x: Tensor) -> Tensor:
        return median_filter(x, 2)

    bit_depth.__name__ = f"bit_depth_{bits}"
    median2.__name__ = "median_2x2"
    return [bit_depth, median2]


class FeatureSqueezing(Detector):
    """``max_i ||softmax f(x) - softmax f(s_i(x))||_1`` (Xu et al. 2018, arXiv:1704.01155, sec. 3.3).

    Args:
        model: the classifier (images -> logits).
        squeezers: functions x -> x' (default :func:`default_squeezers` for the input's channels:
            bit depth and a 2x2 median, without the paper's non-local means for colour images);
            differentiated straight-through (identity backward), so the score has a gradient.
    """

    name = "squeeze"

    def __init__(self, model: nn.Module, squeezers: Optional[Sequence[Callable[[Tensor], Tensor]]] = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if squeezers is not None:
            squeezers = list(squeezers)
            if not squeezers or not all(callable(s) for s in squeezers):
                raise ValueError(f"squeezers must be a non-empty list of callables, got {squeezers!r}")
        self.model = model
        self.squeezers = squeezers

    def _modules(self) -> Sequence[nn.Module]:
        return (self.model,)

    def _score(self, x: Tensor) -> Tensor:
        squeezers = self.squeezers or default_squeezers(x.shape[1])
        n = x.shape[0]
        batch = torch.cat([x] + [BPDAWrapper(s)(x) for s in squeezers])  # ((1+S)*N, C, H, W)
        p = torch.softmax(self.model(batch).float(), dim=1).reshape(1 + len(squeezers), n, -1)
        return (p[1:] - p[:1]).abs().sum(dim=2).amax(dim=0)

    def config(self) -> dict:
        names = [getattr(s, "__name__", type(s).__name__) for s in (self.squeezers or default_squeezers(1))]
        return {**super().config(), "squeezers": names if self.squeezers else "default"}


class MagNetDetector(Detector):
    """Reconstruction error ``mean_pixels |x - AE(x)|^p`` (MagNet, Meng & Chen 2017, detector I/II).

    Train the auto-encoder with :func:`robustlab.defenses.transforms.train_autoencoder`."""

    name = "magnet"

    def __init__(self, autoencoder: nn.Module, p: float = 1.0) -> None:
        super().__init__()
        if not isinstance(autoencoder, nn.Module):
            raise TypeError(f"autoencoder must be a torch.nn.Module, got {type(autoencoder).__name__}")
        if p not in (1, 2, 1.0, 2.0):
            raise ValueError(f"p must be 1 or 2, got {p!r}")
        self.autoencoder = autoencoder
        self.p = float(p)

    def _modules(self) -> Sequence[nn.Module]:
        return (self.autoencoder,)

    def _score(self, x: Tensor) -> Tensor:
        return (x - self.autoencoder(x)).abs().pow(self.p).flatten(1).mean(dim=1)

    def config(self) -> dict:
        return {**super().config(), "p": self.p}


class KNNDetector(Detector):
    """Disagreement of the model with the labels of the input's ``k`` nearest reference points.

    ``score(x) = (1/k) #{j in kNN(x) : y_j != argmax f(x)}`` with neighbours by Euclidean distance in
    pixel space (``space="pixel"``) or in the model's penultimate features (``"feature"``: the input
    of its last ``nn.Linear``, or ``layer``). Counts are piecewise constant: the differentiable
    :meth:`score_surrogate` is ``1 - (1/k) sum_j softmax(f(x))_{y_j}``, the expected disagreement.
    That surrogate holds the neighbours fixed, so descending it pulls the prediction back to the
    neighbours' (the clean) class: it is a weak adaptive attack (9.5% evasion on MNIST at linf
    0.3). The adaptive attack for this detector is :class:`robustlab.attacks.KNNFeaturePGD`, which
    moves the features into another class's neighbourhood (docs/benchmarks/defenses.md).

    Args:
        model: the classifier.
        reference: labelled training data (a Dataset or (images, labels)).
        k: neighbours; chunk: reference rows per ``torch.cdist`` call.
    """

    differentiable = False
    name = "knn"

    def __init__(self, model: nn.Module, reference: Any, *, k: int = 10, space: str = "pixel",
                 layer: Optional[nn.Module] = None, chunk: int = 4096, batch_size: int = 500) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if space not in ("pixel", "feature"):
            raise ValueError(f"space must be 'pixel' or 'feature', got {space!r}")
        images, labels = _labelled(reference, "reference")
        self.k = int(check_positive(k, "k", integer=True))
        if self.k > images.shape[0]:
            raise ValueError(f"k={k} exceeds the {images.shape[0]} reference points")
        self.chunk = int(check_positive(chunk, "chunk", integer=True))
        self.model, self.space = model, space
        self.layer = layer if layer is not None else (_last_linear(model) if space == "feature" else None)
        dev = _device(model)
        self.ref_labels = labels.to(dev)
        with torch.no_grad(), eval_mode(model):
            self.ref_points = torch.cat([self.embed(c.to(dev))[1] for c in images.split(batch_size)])  # (R, D)

    def _modules(self) -> Sequence[nn.Module]:
        return (self.model,)

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits (N, K), points (N, D))``: the model's logits and the input's point in the
        detector's space (pixels or features), from one forward pass, differentiable in ``x``
        (what :class:`robustlab.attacks.KNNFeaturePGD` descends on). The caller sets the mode."""
        if self.space == "pixel":
            return self.model(x), x.flatten(1)
        logits, feats = tap(self.model, x, [self.layer], inputs=True)  # type: ignore[list-item]
        return logits, feats[0]

    def _neighbours(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits, points = self.embed(x)
        _, idx = _knn_distances(points.detach(), self.ref_points, self.k, self.chunk)
        return logits, self.ref_labels[idx]  # (N, K), (N, k)

    def _score(self, x: Tensor) -> Tensor:
        logits, neigh = self._neighbours(x)
        return (neigh != logits.argmax(1, keepdim=True)).to(x.dtype).mean(dim=1)

    def score_surrogate(self, x: Tensor) -> Tensor:
        check_images(x.detach(), "x")
        with self._eval():
            logits, neigh = self._neighbours(x)
            p = torch.softmax(logits, dim=1)
            return 1.0 - p.gather(1, neigh).mean(dim=1)

    def config(self) -> dict:
        return {**super().config(), "k": self.k, "space": self.space, "reference": int(self.ref_points.shape[0])}


class LID(Detector):
    """Local intrinsic dimensionality of the input's features (Ma et al. 2018, arXiv:1801.02613).

    For each layer ``l``, with ``d_1 <= ... <= d_k`` the distances from ``phi_l(x)`` to its ``k``
    nearest neighbours among the reference batch's features, ``LID_l = -((1/k) sum_i log(d_i /
    d_k))^-1`` (eq. 3, the maximum-likelihood estimator); the score is the mean over layers.
    Differentiable in ``x`` (the neighbour set is chosen without gradient).

    Args:
        model: the classifier; layers: modules whose outputs are used (default: every ``nn.ReLU``
            and the logits, as the paper uses every layer).
        reference: clean images (the paper's minibatch; 100 to 1,000 images).
        k: neighbours (the paper: 10 to 20 for minibatches of 100).
    """

    name = "lid"

    def __init__(self, model: nn.Module, reference: Any, *, k: int = 20, layers: Optional[Sequence[nn.Module]] = None,
                 chunk: int = 4096, batch_size: int = 250) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        images = _images_of(reference, "reference")
        self.k = int(check_positive(k, "k", integer=True))
        if self.k >= images.shape[0]:
            raise ValueError(f"k={k} must be smaller than the {images.shape[0]} reference images")
        self.chunk = int(check_positive(chunk, "chunk", integer=True))
        self.model = model
        self.layers = list(layers) if layers is not None else _relu_layers(model)
        dev = _device(model)
        with torch.no_grad(), eval_mode(model):
            parts = [self._features(c.to(dev)) for c in images.split(batch_size)]
        self.ref_features = [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]

    def _modules(self) -> Sequence[nn.Module]:
        return (self.model,)

    def _features(self, x: Tensor) -> list[Tensor]:
        logits, feats = tap(self.model, x, self.layers)
        return [*feats, logits]

    def _score(self, x: Tensor) -> Tensor:
        lids = []
        for f, ref in zip(self._features(x), self.ref_features):
            _, idx = _knn_distances(f.detach(), ref, self.k, self.chunk)  # neighbours without gradient
            d = (f[:, None, :] - ref[idx]).norm(dim=2).clamp_min(1e-12)  # (N, k), differentiable in x
            d = d.sort(dim=1).values
            mean_log = torch.log(d / d[:, -1:]).mean(dim=1)
            lids.append(-1.0 / mean_log.clamp_max(-1e-12))
        return torch.stack(lids).mean(dim=0)

    def config(self) -> dict:
        return {**super().config(), "k": self.k, "layers": len(self.ref_features), "reference": int(self.ref_features[0].shape[0])}


# -- batch-level two-sample test --------------------------------------------------------------


@dataclass(frozen=True)
class MMDResult:
    """Outcome of :meth:`MMDTest.test`: the biased ``MMD^2`` statistic, the permutation p-value,
    the kernel bandwidth used and the number of permutations."""

    statistic: float
    p_value: float
    bandwidth: float
    permutations: int


class MMDTest:
    """Kernel two-sample test of a suspect batch against clean reference images (Grosse et al.
    2017, arXiv:1702.06280; Gretton et al. 2012, JMLR 13, eq. 5).

    ``MMD^2_b = mean k(X, X') + mean k(Y, Y') - 2 mean k(X, Y)`` with the Gaussian kernel
    ``k(a, b) = exp(-||a - b||^2 / (2 s^2))`` on pixels, ``s`` the median pairwise distance of the
    pooled sample (or ``bandwidth``). The p-value is ``(1 + #{b : MMD_b >= MMD}) / (1 + B)`` over
    ``B`` random relabellings of the pooled sample, all evaluated as one batched quadratic form.

    Args:
        reference: clean images (a Dataset, (images, labels) or a tensor), disjoint from tested batches.
        permutations: B; seed: seeds the permutations (the same batch gives the same p-value).
    """

    def __init__(self, reference: Any, *, permutations: int = 1000, bandwidth: Optional[float] = None, seed: int = 0) -> None:
        self.reference = _images_of(reference, "reference")
        self.permutations = int(check_positive(permutations, "permutations", integer=True))
        self.bandwidth = None if bandwidth is None else float(check_positive(bandwidth, "bandwidth"))
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        self.seed = seed

    def test(self, x: Tensor) -> MMDResult:
        """Two-sample test of the batch ``x`` (M >= 2 images) against the reference."""
        check_images(x.detach(), "x")
        if x.shape[0] < 2:
            raise ValueError(f"x must hold at least 2 images for a two-sample test, got {x.shape[0]}")
        ref = self.reference.to(x.device, x.dtype)
        if ref.shape[1:] != x.shape[1:]:
            raise ValueError(f"x has image shape {tuple(x.shape[1:])}, the reference {tuple(ref.shape[1:])}")
        with torch.no_grad():
            pooled = torch.cat([ref, x.detach()]).flatten(1).double()  # (n + m, D)
            d2 = torch.cdist(pooled, pooled).pow(2)
            s = self.bandwidth
            if s is None:
                off = d2[~torch.eye(d2.shape[0], dtype=torch.bool, device=d2.device)]
                s = float(off.sqrt().median().clamp_min(1e-12))
            kern = torch.exp(-d2 / (2 * s * s))
            n, m = ref.shape[0], x.shape[0]
            w = torch.cat([torch.full((n,), 1.0 / n), torch.full((m,), -1.0 / m)]).to(kern)  # (n + m,)
            stat = w @ kern @ w
            gen = torch.Generator(device=x.device).manual_seed(self.seed)
            perm = torch.rand(self.permutations, n + m, generator=gen, device=x.device).argsort(dim=1)
            wp = w[perm]  # (B, n + m): the weights relabelled
            stats = ((wp @ kern) * wp).sum(dim=1)
            p = (1 + (stats >= stat - 1e-12).sum()) / (1 + self.permutations)
        return MMDResult(statistic=float(stat), p_value=float(p), bandwidth=s, permutations=self.permutations)


def detection_metrics(detector: Detector, clean: Tensor, adversarial: Tensor, *, batch_size: int = 100) -> dict:
    """Detection rate at the fitted threshold and ROC AUC of ``adversarial`` vs ``clean`` images:
    ``{"detection_rate", "fpr", "auc", "threshold", "roc": {"fpr": [...], "tpr": [...]}}``."""
    threshold = detector._require_fit()
    s_clean = detector.scores(clean, batch_size)
    s_adv = detector.scores(adversarial, batch_size)
    fpr, tpr = roc_curve(s_clean, s_adv)
    return {
        "detection_rate": float((s_adv > threshold).double().mean()),
        "fpr": float((s_clean > threshold).double().mean()),
        "auc": roc_auc(s_clean, s_adv),
        "threshold": threshold,
        "n_clean": int(s_clean.numel()),
        "n_adversarial": int(s_adv.numel()),
        "roc": {"fpr": fpr, "tpr": tpr},
    }

