"""Auto-PGD: step-size-free PGD with momentum (Croce & Hein 2020, arXiv:2003.01690, Algorithm 1).

Update rule (eqs. 2-3), with ``P`` the projection onto ball ∩ box and ``d`` the steepest-ascent
direction of the norm (``sign`` for linf, ``g / ||g||_2`` for l2, sparse for l1)::

    z^{k+1} = P(x^k + eta^k d(grad f(x^k)))
    x^{k+1} = P(x^k + alpha (z^{k+1} - x^k) + (1 - alpha)(x^k - x^{k-1}))    alpha = 0.75 (1 at k = 0)

``eta^0 = 2 eps``. At the checkpoints ``w_j = ceil(p_j N)`` with ``p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, the step is halved and the iterate reset to the
best point found so far ``x_max`` when (1) the loss increased in fewer than ``rho = 0.75`` of the
steps since the last checkpoint, or (2) neither the step size was reduced at the last checkpoint
nor the best loss improved since.

l1 (APGD-L1, Croce & Hein 2021, "Mind the box", arXiv:2103.01208, sec. 3 and its reference code)
replaces the schedule above: no momentum (``x^{k+1} = z^{k+1}``); the exact projection onto the l1
ball ∩ box; a sparse step along the ``k`` largest gradient coordinates that can still move
(coordinates on the box boundary pointing outwards are skipped); ``eta^0 = eps``. Progress is
checked every ``max(floor(0.04 N), 1)`` iterations (:func:`l1_checkpoints`), where with
``s = ||x_max - x||_0`` (components) and ``s_prev`` its value at the previous check (``D`` at the
start): ``k = ceil(s / 1.5)`` (sparsity-adaptive, ``k^0 = 0.2 D``); if the sparsity dropped
(``s < 0.95 s_prev``) the step is reset to ``eps`` and the iterate to ``x_max``, otherwise the
step shrinks by 1.5; the step stays in ``[eps / 10, eps]``.

With ``large_eps`` (l1 only; AutoAttack's ``use_largereps``, on in its l1 ``standard``; "Mind the
box", sec. 3.3) each run goes through three radii: ``3 eps`` for ``ceil(0.3 N)`` iterations,
``2 eps`` for ``ceil(0.3 N)``, then ``eps`` for the remaining ``N - 2 ceil(0.3 N)``. It starts from
``x + g`` (``g ~ N(0, I)``; ``x`` without ``random_start``) projected onto the ``3 eps`` ball ∩ box
(a sparse point: the exact l1 projection zeroes most coordinates); each stage is a full APGD-L1 run from the previous stage's
highest-loss point projected onto the stage's ball ∩ box (step ``eps_s``, sparsity ``k`` and ``s``
initialised from that point: ``k = ceil(s / 1.5)``, ``s = ||x_start - x||_0``). Only the last stage,
at ``eps``, can report success; the larger balls only steer the search towards the region of high
loss, which the plain l1 run with its sparse steps finds less often.

``APGDT`` is the targeted version used by AutoAttack: the targeted DLR loss (eq. 5) towards each
of the ``n_target_classes`` classes with the highest clean logits after the true one, each run
only on the samples still robust. Samples leave the working batch at their first adversarial
iterate (per-sample early stop) and restarts run only on samples still robust.
"""

from __future__ import annotations

import copy
import math
from typing import Optional

import torch
from torch import Tensor, nn

from robustlab._checks import check_positive, check_probability
from robustlab.attacks.base import Attack, RawResult, predict
from robustlab.attacks.fastpath import FastPath, FastSpec, SettledStop, exact_model
from robustlab.losses import LossFn, get_loss, is_adversarial, margin
from robustlab.threat import ThreatModel


def checkpoints(steps: int) -> list[int]:
    """The iterations ``w_j = ceil(p_j * steps)`` at which APGD checks its progress (paper, sec. 3.2)."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # The 1e-9 guards ceil against round-off (0.41 + 0.16 = 0.5700000000000001 -> 57, not 58).
    its = (math.ceil(q * steps - 1e-9) for q in p[1:])
    return sorted({w for w in its if 0 < w < steps})


def l1_checkpoints(steps: int) -> list[int]:
    """The iterations at which APGD-L1 checks its progress: every ``max(floor(0.04 steps), 1)``."""
    every = max(int(0.04 * steps), 1)
    return list(range(every, steps, every))


def large_eps_stages(steps: int) -> list[tuple[int, int]]:
    """AutoAttack's l1 schedule as ``(radius in units of eps, iterations)``: ``(3, ceil(0.3 N))``,
    ``(2, ceil(0.3 N))``, ``(1, N - 2 ceil(0.3 N))``."""
    first = math.ceil(0.3 * steps)
    return [(3, first), (2, first), (1, steps - 2 * first)]


def _view(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))  # (N,) -> (N, 1, 1, 1)


def sparse_l1_direction(grad: Tensor, x_adv: Tensor, k: Tensor, lower: float, upper: float) -> Tensor:
    """Unit-l1 ascent direction on the ``k`` (per sample) largest gradient coordinates that can move.

    ``v_i = sign(g_i) / k`` on the top-k of ``|g_i|`` among coordinates not stuck on the box
    boundary in the direction of ``g_i``, 0 elsewhere (SLIDE, arXiv:1904.13000; APGD-L1).
    """
    flat = grad.reshape(grad.shape[0], -1)  # (N, D)
    xf = x_adv.reshape(x_adv.shape[0], -1)
    stuck = ((xf <= lower) & (flat < 0)) | ((xf >= upper) & (flat > 0))
    mag = flat.abs().masked_fill(stuck, 0)
    srt = mag.sort(dim=1, descending=True).values  # (N, D)
    kk = k.clamp(1, flat.shape[1]).to(torch.long)
    thresh = srt.gather(1, (kk - 1)[:, None])  # (N, 1) k-th largest magnitude
    mask = (mag >= thresh) & (mag > 0)
    v = flat.sign() * mask
    v = v / v.abs().sum(dim=1, keepdim=True).clamp_min(1)
    return v.reshape(grad.shape)


class APGD(Attack):
    """Auto-PGD on the cross-entropy (``loss="ce"``, APGD-CE) or the DLR loss (``"dlr"``, APGD-DLR).

    Args:
        threat: the threat model (``linf``, ``l2`` or ``l1``).
        steps: iterations per restart (100 in AutoAttack).
        loss: ``"ce"``, ``"dlr"``, ``"cw"`` or a callable ``(logits, y, target) -> (N,)`` to maximise.
        restarts: random restarts, each only on the samples still robust.
        rho: the fraction of increasing steps below which the step is halved (0.75).
        momentum: ``alpha`` of the momentum update (0.75; APGD-L1 uses none, as the reference).
        large_eps: l1 only: AutoAttack's decreasing-radius schedule ``3 eps -> 2 eps -> eps`` over
            30% / 30% / 40% of the steps (module docstring); off by default, on in the l1
            ``standard`` preset (as in AutoAttack's).
        random_start: start from a random point of the ball (as the reference implementation).
        seed: seed of the random starts.
        fast: the fast path (:class:`~robustlab.attacks.fastpath.FastPath` or a preset name such
            as ``"bf16"``; off by default): bf16 autocast, channels_last, ``torch.compile`` and
            success checked on the host every ``check_every`` steps, each early stop confirmed
            by the model in its own precision.
    """

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 100,
        *,
        loss: "str | LossFn" = "ce",
        restarts: int = 1,
        rho: float = 0.75,
        momentum: float = 0.75,
        random_start: bool = True,
        seed: int = 0,
        fast: FastSpec = None,
        large_eps: bool = False,
    ) -> None:
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"threat must be a robustlab.ThreatModel, got {type(threat).__name__}")
        if threat.norm not in ("linf", "l2", "l1"):
            raise ValueError(f"{type(self).__name__} supports the norms linf, l2, l1, got {threat.norm!r}")
        self.threat = threat
        self.steps = int(check_positive(steps, "steps", integer=True))
        self.loss = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self._loss_fn = get_loss(loss)
        self.restarts = int(check_positive(restarts, "restarts", integer=True))
        self.rho = check_probability(rho, "rho")
        self.momentum = check_probability(momentum, "momentum") if momentum != 1 else 1.0
        self.random_start = bool(random_start)
        self.seed = int(seed)
        self._fast = FastPath.resolve(fast)
        if not isinstance(large_eps, bool):
            raise TypeError(f"large_eps must be True or False, got {large_eps!r}")
        if large_eps and threat.norm != "l1":
            raise ValueError(f"large_eps (the 3 eps -> 2 eps -> eps schedule of APGD-L1) needs an l1 threat model, "
                             f"got {threat.norm!r}")
        if large_eps and large_eps_stages(self.steps)[-1][1] < 1:
            raise ValueError(f"large_eps runs ceil(0.3 steps) steps at 3 eps and at 2 eps and the rest at eps: "
                             f"steps = {self.steps} leaves none at eps (use 3 or >= 5)")
        self.large_eps = large_eps

    # -- one run of Algorithm 1 -----------------------------------------------------------
    def _apgd(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        loss_target: Optional[Tensor],
        success_target: Optional[Tensor],
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One run on a batch: ``(x_out, found, best_loss, iterations)``, with ``x_out`` the first
        adversarial iterate where ``found`` and the highest-loss point elsewhere; with
        ``large_eps`` the three stages of AutoAttack's l1 schedule, else one run of Algorithm 1."""
        tm = self.threat
        if not self.large_eps:
            return self._stage(model, x, y, loss_target, success_target, generator, tm, self.steps)
        stages = [(tm.with_eps(m * tm.eps) if m != 1 else tm, n) for m, n in large_eps_stages(self.steps)]
        start = x + torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) if self.random_start else x
        iterations = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for k, (stm, steps) in enumerate(stages):
            final = k == len(stages) - 1
            out = self._stage(model, x, y, loss_target, success_target, generator, stm, steps,
                              start=stm.project(start, x), final=final)
            iterations += out[3]
            start = out[0]  # the stage's highest-loss point (no success counts outside the eps ball)
        return out[0], out[1], out[2], iterations

    def _stage(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        loss_target: Optional[Tensor],
        success_target: Optional[Tensor],
        generator: torch.Generator,
        tm: ThreatModel,
        steps: int,
        *,
        start: Optional[Tensor] = None,
        final: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Algorithm 1 (or APGD-L1) in the ball of ``tm`` for ``steps`` iterations, from ``start``
        (else a random start / ``x``). ``final=False``: success is not tracked (a stage of the
        large-eps schedule, whose ball is larger than the threat model's); every sample runs all
        steps and ``x_out`` is its highest-loss point."""
        lower, upper = tm.box
        n, dev, dt = x.shape[0], x.device, x.dtype
        d = x[0].numel()
        eps = tm.eps
        is_l1 = tm.norm == "l1"
        loss_fn = self._loss_fn

        out = x.clone()
        out_loss = torch.full((n,), float("-inf"), device=dev, dtype=dt)
        found = torch.zeros(n, dtype=torch.bool, device=dev)
        iterations = torch.zeros(n, dtype=torch.long, device=dev)

        # Per-sample state of the working batch; compacted together when samples leave it.
        s: dict[str, Tensor] = {"idx": torch.arange(n, device=dev), "x0": x, "y": y}
        if loss_target is not None:
            s["lt"] = loss_target
        if success_target is not None:
            s["st"] = success_target
        if start is not None:
            s["xa"] = start.clone()
        else:
            s["xa"] = tm.random_start(x, generator) if self.random_start else x.clone()

        def objective(z: Tensor) -> Tensor:
            return loss_fn(z, s["y"], s.get("lt"))

        s["loss"], logits, s["grad"] = self._gradient(model, s["xa"], objective)
        s["x_best"], s["grad_best"], s["best_loss"] = s["xa"].clone(), s["grad"].clone(), s["loss"].clone()
        s["xp"] = s["xa"].clone()
        s["eta"] = torch.full((n,), (1.0 if is_l1 else 2.0) * eps, device=dev, dtype=dt)
        s["k_l1"] = torch.full((n,), max(1, int(0.2 * d)), device=dev, dtype=torch.long)
        s["sparsity"] = torch.full((n,), d, device=dev, dtype=torch.long)  # ||x_max - x||_0 at the last check
        if is_l1 and start is not None:  # the reference's custom start: k and s from its sparsity
            s["sparsity"] = (s["xa"] - x).reshape(n, -1).ne(0).sum(dim=1)
            s["k_l1"] = torch.ceil(s["sparsity"].to(dt) / 1.5).to(torch.long).clamp(1, d)
        s["incr"] = torch.zeros(n, device=dev, dtype=torch.long)
        s["best_at_ckpt"] = s["best_loss"].clone()
        # As the reference implementation: condition (2) cannot fire at the first checkpoint.
        s["reduced_last"] = torch.ones(n, dtype=torch.bool, device=dev)
        ckpts = set(l1_checkpoints(steps) if is_l1 else checkpoints(steps))
        last_ckpt = 0

        stop = SettledStop(s["xa"], self._fast.check_every if self._fast is not None else 1, exact_model(model))
        hit = is_adversarial(logits, s["y"], s.get("st")) & final
        for k in range(steps + 1):
            # Per-sample early stop: adversarial samples are recorded and leave the working batch
            # (checked on the host every ``check_every`` steps of the fast path, else every step).
            stop.observe(hit, s["xa"])
            done = stop.settle(s["y"], s.get("st")) if stop.due(k) or k == steps else None
            if done is not None:
                out[s["idx"][done]] = stop.first[done]
                found[s["idx"][done]] = True
                keep = ~done
                s = {key: v[keep] for key, v in s.items()}
                stop.compact(keep)
                if s["idx"].numel() == 0:
                    break
            if k == steps:
                break
            xa, xp, x0, eta = s["xa"], s["xp"], s["x0"], s["eta"]
            if is_l1:
                direction = sparse_l1_direction(s["grad"], xa, s["k_l1"], lower, upper)
            else:
                direction = tm.ascent(s["grad"], xa)
            z = tm.project(xa + _view(eta, xa) * direction, x0)
            if k > 0 and self.momentum < 1 and not is_l1:
                a = self.momentum
                z = tm.project(xa + a * (z - xa) + (1 - a) * (xa - xp), x0)
            s["xp"], s["xa"] = xa, z
            loss, logits, grad = self._gradient(model, z, objective)
            iterations[s["idx"]] += stop.running
            hit = is_adversarial(logits, s["y"], s.get("st")) & final
            s["incr"] = s["incr"] + (loss > s["loss"]).long()
            s["loss"], s["grad"] = loss, grad
            better = loss > s["best_loss"]
            b4 = _view(better, z)
            s["x_best"] = torch.where(b4, z, s["x_best"])
            s["grad_best"] = torch.where(b4, grad, s["grad_best"])
            s["best_loss"] = torch.where(better, loss, s["best_loss"])
            if k + 1 in ckpts and is_l1:
                # Sparsity-adaptive k; reset step and iterate where the best point got sparser.
                sparsity = (s["x_best"] - s["x0"]).reshape(s["x0"].shape[0], -1).ne(0).sum(dim=1)  # (N,)
                reset = sparsity.to(dt) < 0.95 * s["sparsity"].to(dt)
                s["k_l1"] = torch.ceil(sparsity.to(dt) / 1.5).to(torch.long).clamp(1, d)
                s["eta"] = torch.where(reset, torch.full_like(s["eta"], eps), s["eta"] / 1.5).clamp(eps / 10, eps)
                s["sparsity"] = sparsity
                r4 = _view(reset, z)
                s["xa"] = torch.where(r4, s["x_best"], s["xa"])
                s["grad"] = torch.where(r4, s["grad_best"], s["grad"])
                s["loss"] = torch.where(reset, s["best_loss"], s["loss"])
            elif k + 1 in ckpts:
                window = k + 1 - last_ckpt
                last_ckpt = k + 1
                cond1 = s["incr"].to(dt) < self.rho * window
                cond2 = ~s["reduced_last"] & (s["best_at_ckpt"] >= s["best_loss"])
                reduce = (cond1 | cond2) & ~hit
                s["eta"] = torch.where(reduce, s["eta"] / 2, s["eta"])
                r4 = _view(reduce, z)
                s["xa"] = torch.where(r4, s["x_best"], s["xa"])
                s["xp"] = torch.where(r4, s["x_best"], s["xp"])
                s["grad"] = torch.where(r4, s["grad_best"], s["grad"])
                s["loss"] = torch.where(reduce, s["best_loss"], s["loss"])
                s["reduced_last"] = reduce
                s["best_at_ckpt"] = s["best_loss"].clone()
                s["incr"] = torch.zeros_like(s["incr"])
        if s["idx"].numel():
            out[s["idx"]] = s["x_best"]
            out_loss[s["idx"]] = s["best_loss"]
        return out, found, out_loss, iterations

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        return self._restarts(model, x, y, [(target, target)], generator)

    def _restarts(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        targets: list,
        generator: torch.Generator,
    ) -> RawResult:
        """Run APGD for every ``(loss_target, success_target)`` and restart, each time only on the
        samples still robust; keep the first adversarial point, else the highest-loss one."""
        n = x.shape[0]
        out = x.clone()
        best = torch.full((n,), float("-inf"), device=x.device, dtype=x.dtype)
        iterations = torch.zeros(n, dtype=torch.long, device=x.device)
        remaining = torch.arange(n, device=x.device)
        for loss_t, succ_t in targets:
            for _ in range(self.restarts):
                if remaining.numel() == 0:
                    break
                r = remaining
                lt = None if loss_t is None else loss_t[r]
                st = None if succ_t is None else succ_t[r]
                xo, found, loss, its = self._apgd(model, x[r], y[r], lt, st, generator)
                iterations[r] += its
                out[r[found]] = xo[found]
                # For robust samples keep the highest-loss point (losses differ per target: keep the latest).
                better = ~found & ((loss > best[r]) | (lt is not None))
                out[r[better]] = xo[better]
                best[r[better]] = loss[better]
                remaining = r[~found]
        return RawResult(out, iterations)


def _targeted_margin_dlr(logits: Tensor, y: Tensor, target: Optional[Tensor]) -> Tensor:
    """``(z_t - max_{j != t} z_j) / (z_pi1 - (z_pi3 + z_pi4) / 2)``: the targeted DLR's scale
    invariance with the success criterion of a targeted attack (argmax = t)."""
    if target is None:
        return get_loss("dlr")(logits, y, None)
    if logits.shape[1] < 4:
        return margin(logits, target)
    srt = logits.sort(dim=1, descending=True).values
    return margin(logits, target) / (srt[:, 0] - 0.5 * (srt[:, 2] + srt[:, 3]) + 1e-12)


class APGDT(APGD):
    """APGD with the targeted DLR loss towards the top ``n_target_classes`` other classes (APGD-T).

    Untargeted use (``target=None``): for each of the classes with the 2nd, 3rd, ... highest clean
    logit, a targeted run on the samples still robust; success is any misclassification. With an
    explicit ``target`` it is a targeted attack on that class (success: argmax = target), and the
    DLR loss becomes ``(z_t - max_{j != t} z_j) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, which is positive
    exactly at success (eq. 5 only rewards ``z_t > z_y``). Models with fewer than 4 classes
    (where the targeted DLR is undefined) get the targeted CW margin instead.
    """

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 100,
        *,
        n_target_classes: int = 9,
        loss: "str | LossFn" = "dlr",
        restarts: int = 1,
        rho: float = 0.75,
        momentum: float = 0.75,
        random_start: bool = True,
        seed: int = 0,
        fast: FastSpec = None,
        large_eps: bool = False,
    ) -> None:
        super().__init__(threat, steps, loss=loss, restarts=restarts, rho=rho, momentum=momentum,
                         random_start=random_start, seed=seed, fast=fast, large_eps=large_eps)
        self.n_target_classes = int(check_positive(n_target_classes, "n_target_classes", integer=True))

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        if target is not None:
            # The targeted DLR (eq. 5) only asks z_t > z_y: right for untargeted success, wrong for
            # "predict t", where another class may stay on top. With an explicit target, maximise the
            # same ratio with max_{j != t} z_j in place of z_y: positive exactly when t is predicted.
            runner = copy.copy(self)
            if self.loss == "dlr":
                runner._loss_fn = _targeted_margin_dlr
            return runner._restarts(model, x, y, [(target, target)], generator)
        exact = exact_model(model)
        logits = predict(exact if exact is not None else model, x)
        k = logits.shape[1]
        runner: APGD = self
        if k < 4 and self.loss == "dlr":
            # The targeted DLR needs 4 classes; with fewer, the targeted CW margin plays its role.
            runner = copy.copy(self)
            runner._loss_fn = get_loss("cw")
        order = logits.masked_fill(torch.nn.functional.one_hot(y, k).bool(), float("-inf")).argsort(dim=1, descending=True)
        n_t = min(self.n_target_classes, k - 1)
        return runner._restarts(model, x, y, [(order[:, i], None) for i in range(n_t)], generator)
