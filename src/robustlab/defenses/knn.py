"""Nearest-neighbour classification as a defence, and the attacks that test it honestly.

* :class:`NearestNeighbor`: ``k``-NN in pixel space or on a network's penultimate features (deep
  kNN, Papernot & McDaniel 2018, arXiv:1803.04765), L2 distance, an ``nn.Module`` whose "logits"
  are the class vote counts among the ``k`` nearest training points (``votes="hard"``; ties go to
  the lower class index, as ``argmax``) or soft votes ``log sum_{j in kNN, y_j = c} exp(-d_j^2 /
  T)`` (``votes="soft"``). Distances are ``torch.cdist`` over chunks of the index, so memory is
  ``O(N * chunk_size)`` whatever the training set's size.
* :class:`SoftNearestNeighbor` (``NearestNeighbor.surrogate()``): the differentiable soft kNN,
  ``logit_c(x) = logsumexp_{j in top-m(x), y_j = c} (-||f(x) - f(x_j)||^2 / T)``, the top-m
  neighbours chosen without gradient and their distances recomputed with it. kNN's hard vote has
  zero gradient almost everywhere, so white-box attacks run on this surrogate (BPDA-style,
  Athalye et al. 2018, arXiv:1802.00420: the forward pass of the attack's success check is
  still the true kNN). :class:`SurrogatePGD` is PGD on the surrogate, judged on the real model.
* :class:`BoundaryWalk`: a decision-based attack (labels only) in an Lp ball: starts from the
  nearest training images of other classes projected into the ball, then HopSkipJump-style
  iterations (Chen, Jordan, Wainwright 2020, arXiv:1904.02144): a binary search to the decision
  boundary toward ``x``, a Monte Carlo estimate of the boundary's normal from label flips around
  the boundary point, a geometric step along it and a new binary search.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from robustlab._checks import check_images, check_positive
from robustlab.attacks.base import Attack, RawResult, eval_mode
from robustlab.threat import ThreatModel

__all__ = ["BoundaryWalk", "NearestNeighbor", "SoftNearestNeighbor", "SurrogatePGD", "knn_search", "penultimate"]

SPACES = ("pixel", "features")
VOTES = ("hard", "soft")


def knn_search(queries: Tensor, index: Tensor, k: int, chunk_size: int, *, exact: bool = False) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest rows of ``index`` (M, D) to each query (N, D) in L2: ``(distances (N, k),
    indices (N, k))``, ascending. ``torch.cdist`` on ``chunk_size`` index rows at a time, keeping a
    running top-k (memory ``N * (chunk_size + k)``). ``exact=True`` computes each distance as
    ``sqrt(sum (a - b)^2)`` instead of the faster matrix-product form."""
    mode = "donot_use_mm_for_euclid_dist" if exact else "use_mm_for_euclid_dist_if_necessary"
    best_d: Optional[Tensor] = None
    best_i: Optional[Tensor] = None
    for start in range(0, index.shape[0], chunk_size):
        d = torch.cdist(queries, index[start : start + chunk_size], compute_mode=mode)  # (N, c)
        if exact:  # stable: among equal distances the lower training index comes first
            dv, di = d.sort(dim=1, stable=True)
            dv, di = dv[:, :k], di[:, :k]  # (N, k')
        else:
            dv, di = d.topk(min(k, d.shape[1]), dim=1, largest=False)  # (N, k')
        di = di + start
        if best_d is None or best_i is None:
            best_d, best_i = dv, di
            continue
        cd, ci = torch.cat([best_d, dv], dim=1), torch.cat([best_i, di], dim=1)  # (N, <= 2k)
        order = cd.argsort(dim=1, stable=True)[:, :k]  # earlier chunks first among ties
        best_d, best_i = cd.gather(1, order), ci.gather(1, order)
    assert best_d is not None and best_i is not None
    return best_d, best_i


def penultimate(model: nn.Module) -> nn.Module:
    """The feature extractor of a classifier: ``model`` without its last Linear layer.

    For robustlab's :class:`~robustlab.models.Normalize` around an ``nn.Sequential`` (or a bare
    ``nn.Sequential``) ending in ``nn.Linear``: a module sharing the weights that returns the last
    layer's input (N, D). Other models: TypeError (pass a feature extractor with
    ``feature_layer="output"``)."""
    from robustlab.models.normalize import Normalize

    net = model.net if type(model) is Normalize else model
    if not isinstance(net, nn.Sequential) or not isinstance(net[-1], nn.Linear):
        raise TypeError("penultimate() needs an nn.Sequential classifier (optionally in Normalize) ending in "
                        f"nn.Linear, got {type(net).__name__}; pass your own extractor with feature_layer='output'")
    body = nn.Sequential(*list(net)[:-1], nn.Flatten())  # (N, D)
    if type(model) is Normalize:
        return Normalize(body, model.mean.flatten().tolist(), model.std.flatten().tolist())
    return body


def _as_tensors(data: Any, name: str) -> tuple[Tensor, Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = data
    else:
        images, labels = getattr(data, "images", None), getattr(data, "labels", None)
    if not isinstance(images, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a Dataset or an (images, labels) pair of tensors, got {type(data).__name__}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(images.shape)}); a nearest-neighbour index needs points")
    check_images(images, f"{name} images")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0] or labels.is_floating_point():
        raise ValueError(f"{name} labels must be integer (N,) with N = {images.shape[0]} images, "
                         f"got shape {tuple(labels.shape)}, dtype {labels.dtype}")
    if bool((labels < 0).any()):
        raise ValueError(f"{name} labels must be >= 0, got min {int(labels.min())}")
    return images, labels.long()


class NearestNeighbor(nn.Module):
    """k-nearest-neighbour classifier over ``train_data`` (see the module docstring).

    Args:
        train_data: a Dataset or ``(images (M, C, H, W) in [0, 1], labels (M,))``; not empty.
        space: ``"pixel"`` (flattened images) or ``"features"`` (``feature_model``'s features).
        k: neighbours that vote (>= 1, at most M).
        feature_model: required for ``space="features"``; a classifier cut at its penultimate
            layer (``feature_layer="penultimate"``) or an extractor used as is (``"output"``).
        chunk_size: index rows per ``cdist`` call (memory bound).
        votes: ``"hard"`` (vote counts) or ``"soft"`` (distance-weighted, temperature ``T``).
        num_classes: K (default: max label + 1, or the Dataset's class count).
        batch_size: training images per feature-extraction pass when building the index.
        exact: exact per-pair distances (slower) instead of the matrix-product form.
    """

    def __init__(self, train_data: Any, space: str = "pixel", k: int = 1, feature_model: Optional[nn.Module] = None,
                 *, chunk_size: int = 8192, votes: str = "hard", temperature: float = 1.0,
                 num_classes: Optional[int] = None, feature_layer: str = "penultimate", batch_size: int = 1000,
                 exact: bool = False) -> None:
        super().__init__()
        if space not in SPACES:
            raise ValueError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
        if votes not in VOTES:
            raise ValueError(f"votes must be one of {', '.join(VOTES)}, got {votes!r}")
        images, labels = _as_tensors(train_data, "train_data")
        self.k = int(check_positive(k, "k", integer=True))
        if self.k > images.shape[0]:
            raise ValueError(f"k={k} exceeds the {images.shape[0]} training points")
        self.chunk_size = int(check_positive(chunk_size, "chunk_size", integer=True))
        self.batch_size = int(check_positive(batch_size, "batch_size", integer=True))
        self.temperature = float(check_positive(temperature, "temperature"))
        self.space, self.votes, self.exact = space, votes, bool(exact)
        k_data = len(getattr(train_data, "classes", ()) or ()) or int(labels.max()) + 1
        self.num_classes = int(num_classes) if num_classes is not None else max(k_data, 2)
        if int(labels.max()) >= self.num_classes:
            raise ValueError(f"train_data has label {int(labels.max())} but num_classes={self.num_classes}")
        self.image_shape = tuple(images.shape[1:])
        self.features: Optional[nn.Module] = None
        if space == "features":
            if not isinstance(feature_model, nn.Module):
                raise TypeError(f"space='features' needs feature_model (an nn.Module), got {type(feature_model).__name__}")
            if feature_layer not in ("penultimate", "output"):
                raise ValueError(f"feature_layer must be 'penultimate' or 'output', got {feature_layer!r}")
            self.features = penultimate(feature_model) if feature_layer == "penultimate" else feature_model
        elif feature_model is not None:
            raise ValueError("feature_model is only used with space='features'")
        with torch.no_grad():
            index = self.embed(images.to(self._device()), grad=False)
        self.register_buffer("index", index)  # (M, D)
        self.register_buffer("index_labels", labels.to(index.device))  # (M,)

    def _device(self) -> torch.device:
        if self.features is not None:
            for p in self.features.parameters():
                return p.device
        return torch.device("cpu")

    def extra_repr(self) -> str:
        return (f"space={self.space}, k={self.k}, points={self.index.shape[0]}, dim={self.index.shape[1]}, "
                f"votes={self.votes}, chunk_size={self.chunk_size}")

    def embed(self, x: Tensor, *, grad: bool = True) -> Tensor:
        """Points in the search space (N, D): flattened pixels or features (eval mode)."""
        if x.shape[1:] != self.image_shape:
            raise ValueError(f"x has image shape {tuple(x.shape[1:])}; the index holds images of shape {self.image_shape}")
        if self.features is None:
            return x.flatten(1)  # (N, C*H*W)
        parts = []
        with eval_mode(self.features), torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            for chunk in x.split(self.batch_size):
                parts.append(self.features(chunk).flatten(1))  # (n, D)
        return torch.cat(parts)

    def neighbors(self, x: Tensor, k: Optional[int] = None) -> tuple[Tensor, Tensor]:
        """``(distances (N, k), training indices (N, k))`` of the nearest index points, ascending."""
        q = self.embed(x, grad=False).to(self.index.dtype)
        return knn_search(q, self.index, int(k or self.k), self.chunk_size, exact=self.exact)

    def forward(self, x: Tensor) -> Tensor:
        """Vote scores (N, K) as logits (no gradient: use :meth:`surrogate` for attacks)."""
        with torch.no_grad():
            dist, idx = self.neighbors(x)
            lab = self.index_labels[idx]  # (N, k)
            if self.votes == "hard":
                w = torch.ones_like(dist)
            else:
                w = torch.softmax(-dist.square() / self.temperature, dim=1)  # (N, k)
            scores = torch.zeros(x.shape[0], self.num_classes, dtype=dist.dtype, device=dist.device)
            scores.scatter_add_(1, lab, w)
            if self.votes == "soft":
                scores = scores.clamp_min(1e-12).log()
        return scores.to(x.dtype)

    def surrogate(self, temperature: Optional[float] = None, m: int = 64) -> "SoftNearestNeighbor":
        """The differentiable soft-kNN surrogate over the ``m`` nearest points (see module docstring);
        the temperature defaults to the median squared distance to the nearest neighbour on the index."""
        return SoftNearestNeighbor(self, temperature, m)


class SoftNearestNeighbor(nn.Module):
    """``logit_c(x) = logsumexp_{j in top-m(x), y_j = c} (-||f(x) - f(x_j)||^2 / T)`` (differentiable)."""

    def __init__(self, knn: NearestNeighbor, temperature: Optional[float] = None, m: int = 64) -> None:
        super().__init__()
        self.knn = knn
        self.m = int(check_positive(m, "m", integer=True))
        if temperature is None:
            probe = knn.index[: min(512, knn.index.shape[0])]
            d, _ = knn_search(probe, knn.index, 2, knn.chunk_size)
            temperature = float(d[:, 1].square().median().clamp_min(1e-8))  # the nearest other point
        self.temperature = float(check_positive(temperature, "temperature"))

    def forward(self, x: Tensor) -> Tensor:
        m = min(self.m, self.knn.index.shape[0])
        with torch.no_grad():
            _, idx = self.knn.neighbors(x.detach(), m)  # (N, m)
        q = self.knn.embed(x).to(self.knn.index.dtype)  # (N, D), with gradient
        d2 = (q.unsqueeze(1) - self.knn.index[idx]).square().sum(-1)  # (N, m)
        lab = self.knn.index_labels[idx]  # (N, m)
        e = (-d2 / self.temperature).unsqueeze(2)  # (N, m, 1)
        mask = lab.unsqueeze(2) == torch.arange(self.knn.num_classes, device=x.device)  # (N, m, K)
        e = e.masked_fill(~mask, float("-inf"))
        logits = torch.logsumexp(e, dim=1)  # (N, K)
        floor = logits.masked_fill(torch.isinf(logits), float("inf")).min(dim=1, keepdim=True).values - 50.0
        return torch.where(torch.isinf(logits), floor, logits).to(x.dtype)


class SurrogatePGD(Attack):
    """PGD (sign / normalised steps, random start) on the soft-kNN surrogate of a
    :class:`NearestNeighbor`, success judged on the kNN itself (BPDA-style transfer). The model
    passed to :meth:`attack` must be the kNN (or a module whose ``surrogate()`` gives the
    differentiable stand-in); other models are attacked directly."""

    def __init__(self, threat: ThreatModel, *, steps: int = 50, step_size: Optional[float] = None,
                 restarts: int = 1, temperature: Optional[float] = None, m: int = 64, seed: int = 0) -> None:
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"threat must be a ThreatModel, got {type(threat).__name__}")
        self.threat = threat
        self.steps = int(check_positive(steps, "steps", integer=True))
        self.step_size = float(check_positive(step_size, "step_size")) if step_size is not None else 2.5 * threat.eps / self.steps
        self.restarts = int(check_positive(restarts, "restarts", integer=True))
        self.temperature, self.m, self.seed = temperature, int(check_positive(m, "m", integer=True)), seed

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        from robustlab.losses import is_adversarial

        sur = model.surrogate(self.temperature, self.m) if isinstance(model, NearestNeighbor) else model
        tm = self.threat
        best = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for r in range(self.restarts):
            x_adv = tm.project(tm.random_start(x, generator=generator), x) if r > 0 else x.clone()
            for _ in range(self.steps):
                x_req = x_adv.clone().requires_grad_(True)
                logits = sur(x_req)
                if target is None:
                    loss = nn.functional.cross_entropy(logits, y, reduction="sum")
                else:
                    loss = -nn.functional.cross_entropy(logits, target, reduction="sum")
                (g,) = torch.autograd.grad(loss, x_req)
                x_adv = tm.project(x_adv + self.step_size * tm.ascent(g), x).detach()
            with torch.no_grad():
                ok = is_adversarial(model(x_adv), y, target) & ~found
            best[ok] = x_adv[ok]
            found |= ok
            if r == 0:
                best[~found] = x_adv[~found]
        return RawResult(best, iterations=torch.full((x.shape[0],), self.steps * self.restarts, device=x.device))


class BoundaryWalk(Attack):
    """Decision-based attack in a ``linf`` or ``l2`` ball (labels only; see the module docstring).

    Args:
        threat: the ball; the walk minimises the distance and succeeds where it ends inside.
        starts: ``(images, labels)`` to start from (e.g. the kNN's training set); per sample the
            ``n_starts`` nearest (pixel L2) with another label are tried, projected into the ball
            first (no query is spent choosing them).
        iterations, directions: HopSkipJump iterations and label queries per gradient estimate.
        search_steps: binary-search halvings per boundary search.
    """

    def __init__(self, threat: ThreatModel, starts: Any, *, iterations: int = 20, directions: int = 50,
                 n_starts: int = 5, search_steps: int = 12, seed: int = 0) -> None:
        if not isinstance(threat, ThreatModel) or threat.norm not in ("linf", "l2"):
            raise ValueError(f"threat must be a linf or l2 ThreatModel, got {threat!r}")
        self.threat = threat
        images, labels = _as_tensors(starts, "starts")
        self._starts = (images, labels)
        self.iterations = int(check_positive(iterations, "iterations", integer=True, allow_zero=True))
        self.directions = int(check_positive(directions, "directions", integer=True))
        self.n_starts = int(check_positive(n_starts, "n_starts", integer=True))
        self.search_steps = int(check_positive(search_steps, "search_steps", integer=True))
        self.seed = seed

    # x + "distance r toward a": the linf path clips a into the box of half-width r; l2 blends.
    def _toward(self, x: Tensor, a: Tensor, r: Tensor) -> Tensor:
        r = r.view(-1, *([1] * (x.dim() - 1)))
        if self.threat.norm == "linf":
            return torch.minimum(torch.maximum(a, x - r), x + r)
        full = (a - x).flatten(1).norm(dim=1).view_as(r).clamp_min(1e-12)
        return x + (a - x) * (r / full).clamp(max=1.0)

    def _dist(self, a: Tensor, x: Tensor) -> Tensor:
        return self.threat.distance(a, x)

    def _search(self, model: nn.Module, x: Tensor, a: Tensor, y: Tensor, target: Optional[Tensor]) -> Tensor:
        """The boundary point between ``x`` (not adversarial) and adversarial ``a``, on the
        adversarial side, by binary search on the distance (``search_steps`` queries)."""
        lo, hi = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype), self._dist(a, x)
        for _ in range(self.search_steps):
            mid = (lo + hi) / 2
            adv = self._adversarial(model, self._toward(x, a, mid), y, target)
            hi, lo = torch.where(adv, mid, hi), torch.where(adv, lo, mid)
        return self._toward(x, a, hi)

    @staticmethod
    def _adversarial(model: nn.Module, z: Tensor, y: Tensor, target: Optional[Tensor]) -> Tensor:
        pred = model(z).argmax(dim=1)
        return pred != y if target is None else pred == target

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        n, tm = x.shape[0], self.threat
        queries = torch.zeros(n, dtype=torch.long, device=x.device)
        images, labels = (t.to(x.device) for t in self._starts)
        with torch.no_grad():
            # Starting points: nearest other-class images; first their projection into the ball.
            d = torch.cdist(x.flatten(1), images.to(x.dtype).flatten(1))  # (n, M)
            if target is None:
                bad = labels.unsqueeze(0) == y.unsqueeze(1)  # (n, M): same class as x
            else:
                bad = labels.unsqueeze(0) != target.unsqueeze(1)
            d = d.masked_fill(bad, float("inf"))
            cand = d.topk(min(self.n_starts, d.shape[1]), dim=1, largest=False).indices  # (n, s)
            best = x.clone()
            best_d = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
            for s in range(cand.shape[1]):
                a = images[cand[:, s]].to(x.dtype)
                for point in (tm.project(a, x), a):
                    adv = self._adversarial(model, point, y, target) & torch.isfinite(d.gather(1, cand[:, s:s + 1]).squeeze(1))
                    queries += 1
                    dist = self._dist(point, x)
                    better = adv & (dist < best_d)
                    best[better], best_d[better] = point[better], dist[better]
            active = torch.isfinite(best_d)
            if bool(active.any()):
                best[active] = self._search(model, x[active], best[active], y[active],
                                            None if target is None else target[active])
                queries[active] += self.search_steps
                best_d = torch.where(active, self._dist(best, x), best_d)
            dim = x[0].numel()
            ones = [1] * (x.dim() - 1)
            for t in range(1, self.iterations + 1):
                act = (active & (best_d > tm.eps)).nonzero().squeeze(1)  # still outside the ball
                if act.numel() == 0:
                    break
                xa, xb, ya = x[act], best[act], y[act]
                ta = None if target is None else target[act]
                db = best_d[act]
                # Gradient direction at the boundary from label flips (HopSkipJump, Sec. 4).
                b = self.directions
                u = torch.randn((act.numel(), b, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
                u = u / u.flatten(2).norm(dim=2).view(act.numel(), b, *ones)  # unit L2 directions
                # probe radius: 8x the binary search's resolution, as an L2 length
                delta = (8 * math.sqrt(dim) * db * 2.0 ** -self.search_steps).view(-1, 1, *ones)
                probe = (xb.unsqueeze(1) + delta * u).clamp(*tm.box).flatten(0, 1)  # (a*b, C, H, W)
                phi = self._adversarial(model, probe, ya.repeat_interleave(b),
                                        None if ta is None else ta.repeat_interleave(b)).view(-1, b).to(x.dtype) * 2 - 1
                queries[act] += b
                phi = phi - phi.mean(dim=1, keepdim=True)
                grad = (phi.view(-1, b, *ones) * u).mean(dim=1)  # (a, C, H, W)
                if tm.norm == "linf":
                    step_dir = grad.sign()
                else:
                    step_dir = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *ones)
                xi = (db / math.sqrt(t)).view(-1, *ones)
                moved = xb.clone()
                pending = torch.ones(act.numel(), dtype=torch.bool, device=x.device)
                for _ in range(8):  # geometric step-size search: halve until still adversarial
                    trial = (xb + xi * step_dir).clamp(*tm.box)
                    ok = self._adversarial(model, trial, ya, ta) & pending
                    queries[act] += pending.long()
                    moved[ok] = trial[ok]
                    pending &= ~ok
                    xi = torch.where(pending.view(-1, *ones), xi / 2, xi)
                    if not bool(pending.any()):
                        break
                new = self._search(model, xa, moved, ya, ta)
                queries[act] += self.search_steps
                nd = self._dist(new, xa)
                better = nd < db
                idx = act[better]
                best[idx], best_d[idx] = new[better], nd[better]
        return RawResult(best, iterations=queries.clone(), queries=queries)
