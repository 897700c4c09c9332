"""Gradient-masking checks: can the robust accuracy be trusted?

An empirical robust accuracy is only an upper bound on the true one, and a loose one when the
attacks fail for reasons that have nothing to do with robustness: saturated softmax, shattered or
zero gradients, randomness, too few iterations. Carlini et al. 2019 ("On Evaluating Adversarial
Robustness", arXiv:1902.06705) and Athalye, Carlini & Wagner 2018 ("Obfuscated
Gradients Give a False Sense of Security", arXiv:1802.00420) list the symptoms; each
check below tests one and returns a :class:`~robustlab.report.schema.Finding` (pass / warn /
note / skip, the evidence in words and numbers, the anchor of its explanation and the threat
model it speaks for). Every threat model gets its own findings and its own verdict.

Two halves: :func:`probe` runs the model-based experiments on a few images, per threat model (a
stronger attack on what the worst case rests on, an unbounded attack without random start, FGSM
against the iterative attack, the loss along an attack path) and once per model (input gradients,
two forward passes), and returns plain JSON; :func:`threat_findings` and :func:`model_findings`
turn those and the per-sample records' summaries into findings. The black-box baseline (Square
where the attack registry has it, else random noise) and transfer examples are part of the
per-sample records (see ``evaluate.run``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from robustlab.attacks import registry
from robustlab.attacks.base import Attack, eval_mode, input_gradient
from robustlab.attacks.ensemble import WorstCase
from robustlab.attacks.registry import UnknownOption
from robustlab.evaluate.records import UNBOUNDED, Records
from robustlab.evaluate.shards import release_memory
from robustlab.losses import cross_entropy, cw_margin
from robustlab.report.explain import CHECKS
from robustlab.report.schema import Finding, Rate, Verdict
from robustlab.threat import ThreatModel

if TYPE_CHECKING:
    from robustlab.evaluate.suite import Suite, Threat

__all__ = [
    "BLACK_BOX_MAX", "CHECKS", "DETERMINISM_RTOL", "MONOTONE_SLACK", "PATH_MIN_INCREASED", "PRESET_STRENGTH",
    "PROBES_VERSION", "SINGLE_STEP_MAX",
    "SQUARE_QUERIES_PER_DRAW", "STRONGER_MAX_DROP", "UNBOUNDED_MAX", "ZERO_GRAD_MAX", "black_box_method",
    "check_black_box", "check_deterministic", "check_gradients", "check_monotone", "check_path", "check_single_step",
    "check_stronger", "check_unbounded", "model_findings", "path_stats", "probe", "threat_findings", "verdict",
]

#: Robust accuracy may rise with eps by at most this much (and one image) before it is a warning.
MONOTONE_SLACK = 0.01
#: Robust accuracy at an unbounded radius above this is a warning (it should be ~0).
UNBOUNDED_MAX = 0.02
#: Images robust to every attack of the suite but broken by the stronger attack: at most this
#: fraction of the probed images (and one image).
STRONGER_MAX_DROP = 0.03
#: Images that the black-box baseline or transfer break while every white-box attack fails: at most
#: this fraction of the correctly classified images (and one image).
BLACK_BOX_MAX = 0.005
#: Images FGSM breaks while the iterative attack fails: at most this fraction of the correctly
#: classified probed images (and one image) at any eps.
SINGLE_STEP_MAX = 0.01
#: At least this fraction of the traced attacks must show a sustained rise of the loss.
PATH_MIN_INCREASED = 0.9
#: At most this fraction of correctly classified images may have an all-zero input gradient.
ZERO_GRAD_MAX = 0.01
#: The black-box baseline's Square attack spends this many queries per noise draw of the suite.
SQUARE_QUERIES_PER_DRAW = 25
#: Two forward passes may differ by this fraction of the largest logit (non-bitwise kernels, large logits).
DETERMINISM_RTOL = 1e-4
#: A worst case over members (the ``standard`` preset) is strengthened to this ``strength`` by the
#: "more steps" probe (:func:`robustlab.attacks.registry.standard`: 2 x the steps, restarts and queries
#: of every member, APGD-T over every other class).
PRESET_STRENGTH = 2
#: The layout of :func:`probe`'s output (a cached probe of another layout is recomputed).
PROBES_VERSION = 3


def _finding(name: str, status: str, evidence: str, values: Mapping[str, Any], norm: Optional[str] = None) -> Finding:
    return Finding(name, CHECKS[name][0], status, evidence, dict(values), f"#check-{name}", norm)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def black_box_method(norm: str) -> str:
    """``"square"`` when the attack registry has a Square attack for ``norm`` (linf, l2), else
    ``"noise"`` (random points of the ball): the black-box baseline of the records."""
    return "square" if "square" in registry.available() and norm in ("linf", "l2") else "noise"


# -- the model probes --------------------------------------------------------------------------------


def _union_success(records: Records, suite: "Suite", t: "Threat", e: float) -> Tensor:
    """Per image: some attack of the suite (gradient or query-based, fixed-budget at ``e`` or
    minimal-norm within ``e``) found an adversarial example: what the reported worst case rests on."""
    hit = torch.zeros_like(records.correct)
    for a in suite.attacks_for(t):
        hit |= records.get("attack", t.norm, e, a, "success")
    for a in suite.minimal:
        d = records.get("minimal", t.norm, UNBOUNDED, a, "distance")
        hit |= records.get("minimal", t.norm, UNBOUNDED, a, "success") & (d <= e * (1 + 1e-6))
    return hit


def _check_eps(records: Records, suite: "Suite", t: "Threat") -> float:
    """The eps of ``t`` where the suite's worst case is closest to 1/2 (where a stronger attack
    can change the most)."""
    correct = records.correct
    best, best_gap = t.eps[0], math.inf
    for e in t.eps:
        acc = float((correct & ~_union_success(records, suite, t, e)).float().mean())
        if abs(acc - 0.5) < best_gap:
            best, best_gap = e, abs(acc - 0.5)
    return float(best)


def _iterative(attack: Attack) -> bool:
    """An attack with steps and restarts to increase, or a worst case with such a member."""
    if isinstance(attack, WorstCase):
        return any(_iterative(a) for a in attack.attacks)
    return isinstance(getattr(attack, "steps", None), int) and isinstance(getattr(attack, "restarts", None), int)


def describe_budget(attack: Attack) -> str:
    """The compute an attack spends, in words: ``APGD 200 steps x 10 restarts, ..., Square 2000 queries``."""
    if isinstance(attack, WorstCase):
        return ", ".join(describe_budget(a) for a in attack.attacks)
    parts = []
    steps, restarts = getattr(attack, "steps", None), getattr(attack, "restarts", None)
    if isinstance(steps, int):
        parts.append(f"{steps} steps" + (f" x {restarts} restart(s)" if isinstance(restarts, int) else ""))
    targets = getattr(attack, "n_target_classes", None)
    if isinstance(targets, int):
        parts.append("over every other class" if targets >= registry.ALL_TARGETS else f"over {targets} target classes")
    queries = getattr(attack, "queries", None)
    if isinstance(queries, int):
        parts.append(f"{queries} queries")
    return f"{attack.name} " + " ".join(parts) if parts else attack.name


def _stronger_attack(suite: "Suite", name: str, tm: ThreatModel, seed: int) -> tuple[Optional[Attack], str]:
    """Attack ``name`` with more compute, or None and why not. A worst-case preset (``standard``)
    is rebuilt at :data:`PRESET_STRENGTH`; an iterative attack gets 2 x the steps and
    ``checks.strength / 2`` x the restarts (different seed: other random starts)."""
    base = suite.build_attack(name, tm, seed)
    if not _iterative(base):
        return None, f"{name} has no steps, restarts or iterative member to increase"
    if isinstance(base, WorstCase):
        try:
            return suite.build_attack(name, tm, seed + 1, strength=PRESET_STRENGTH), ""
        except UnknownOption:
            return None, f"{name} is a worst case without a strength option"
    k = suite.checks.strength
    steps, restarts = (base.steps * 2 if k > 1 else base.steps), base.restarts * max(1, k // 2)
    return suite.build_attack(name, tm, seed + 1, steps=steps, restarts=restarts), ""


@dataclass(frozen=True)
class _Probed:
    """What every probe works on: the model, the probed images (the first ``checks.n`` of the
    evaluation), which of them the model classifies correctly, the suite, its records and seed."""

    model: nn.Module
    x: Tensor
    y: Tensor
    correct: Tensor
    suite: "Suite"
    records: Records
    seed: int
    shape: Sequence[int]


def _success(p: _Probed, t: "Threat", e: float, name: str) -> Tensor:
    """Success of attack ``name`` at ``e`` on the probed images: from the records where the suite ran it."""
    model, x, y, suite, records, seed = p.model, p.x, p.y, p.suite, p.records, p.seed
    if name in suite.attacks_for(t):
        return records.get("attack", t.norm, e, name, "success")[: x.shape[0]].to(x.device)
    return suite.build_attack(name, ThreatModel(t.norm, e), seed).attack(model, x, y).success


def _probe_stronger(p: _Probed, t: "Threat", e: float) -> dict[str, Any]:
    """The attack the worst case rests on at ``e`` (the suite's attack with the most successes; the
    next one with something to strengthen, else the check attack), with more compute
    (:func:`_stronger_attack`), on the images robust to every attack of the suite: how many it breaks.
    Not run (``skipped``) when too few images are robust for the check to be able to warn."""
    model, x, y, correct, suite, records, seed = p.model, p.x, p.y, p.correct, p.suite, p.records, p.seed
    n = int(x.shape[0])
    tm = ThreatModel(t.norm, e)
    union = _union_success(records, suite, t, e)[:n].to(x.device)
    robust = correct & ~union
    base_robust = int(robust.sum())
    ranked = sorted(suite.attacks_for(t), key=lambda a: -int(records.get("attack", t.norm, e, a, "success").sum()))
    worst = ranked[0] if ranked else suite.checks.attack
    out: dict[str, Any] = {"attack": worst, "worst_attack": worst, "eps": e, "n": n, "base_robust": base_robust}
    strong, why = None, ""
    for name in [*ranked, *([suite.checks.attack] if suite.checks.attack not in ranked else [])]:
        strong, why_not = _stronger_attack(suite, name, tm, seed)
        if strong is not None:
            out["attack"] = name
            break
        why = why or why_not
    if strong is None:
        out["skipped"] = f"no attack of the suite has steps or restarts to increase ({why})"
        return out
    need = max(1.0, STRONGER_MAX_DROP * n)
    out.update(probe=strong.name, budget=describe_budget(strong),
               base_budget=describe_budget(suite.build_attack(out["attack"], tm, seed)))
    if out["attack"] in suite.attacks_for(t):
        out["attack_robust"] = int((correct & ~records.get("attack", t.norm, e, out["attack"], "success")[:n]
                                    .to(x.device)).sum())
    if base_robust <= need:
        out["skipped"] = (f"only {base_robust} of the {n} probed images are robust to every attack of the suite at eps "
                          f"{e:g}: too few for a stronger attack to show anything (a warning needs more than "
                          f"{need:g} newly broken)")
        return out
    idx = robust.nonzero().squeeze(1)
    broken = strong.attack(model, x[idx], y[idx]).success
    out.update(newly_broken=int(broken.sum()), both_robust=base_robust - int(broken.sum()),
               images=[int(i) for i in idx[broken].tolist()][:20])
    return out


def _probe_unbounded(p: _Probed, t: "Threat") -> dict[str, Any]:
    """The check attack at a radius admitting every image, from the clean image (no random start)."""
    model, x, y, correct, suite, seed, shape = p.model, p.x, p.y, p.correct, p.suite, p.seed, p.shape
    from robustlab.evaluate.suite import unbounded_eps

    big = unbounded_eps(t.norm, shape)
    name = suite.checks.attack
    tm = ThreatModel(t.norm, big)
    try:
        attack, random_start = suite.build_attack(name, tm, seed, random_start=False), False
    except UnknownOption:  # an attack without a random start option (Square, a worst case, ...) runs as it is
        attack, random_start = suite.build_attack(name, tm, seed), None
    res = attack.attack(model, x, y)
    return {"attack": name, "eps": big, "robust": int((correct & ~res.success).sum()), "n": int(x.shape[0]),
            "random_start": random_start}


def _probe_single_step(p: _Probed, t: "Threat") -> dict[str, Any]:
    """Per eps of ``t``: images FGSM breaks while the suite's iterative check attack does not
    (``[eps, FGSM only, FGSM, correct, robust to the iterative attack]``)."""
    suite, seed, correct = p.suite, p.seed, p.correct
    name = suite.checks.attack
    check = suite.build_attack(name, ThreatModel(t.norm, t.eps[0]), seed)
    if not _iterative(check) or check.query_based and not isinstance(check, WorstCase):
        return {"skipped": f"the check attack {name!r} is not an iterative gradient attack"}
    per_eps = []
    for e in t.eps:
        try:
            fgsm = _success(p, t, e, "fgsm")
        except ValueError as exc:  # FGSM has no step for this norm
            return {"skipped": f"FGSM does not run for {t.norm}: {exc}"}
        it = _success(p, t, e, name)
        per_eps.append([e, int((correct & fgsm & ~it).sum()), int((correct & fgsm).sum()), int(correct.sum()),
                        int((correct & ~it).sum())])
    return {"attack": name, "per_eps": per_eps}


def path_stats(trace: Tensor) -> dict[str, Any]:
    """Summaries of losses ``trace`` (steps + 1, m) along m traced attacks. Per attack: ``final
    above`` the start; ``trend``: Kendall's rank correlation between step and loss (a monotone rise
    is 1, a random walk about 0); ``sustained``: both (final above start and trend > 0).
    ``increased`` (the loss rose above the start at some step) is kept for comparison: a random walk
    meets it."""
    s1 = trace.shape[0]
    diff = trace.unsqueeze(0) - trace.unsqueeze(1)  # (S+1, S+1, m): [s, t] = loss_t - loss_s
    upper = torch.triu(torch.ones(s1, s1, dtype=torch.bool, device=trace.device), diagonal=1)  # s < t
    tau = diff.sign()[upper].sum(dim=0) / max(1, int(upper.sum()))  # (m,)
    final_above = trace[-1] > trace[0]
    sustained = final_above & (tau > 0)
    return {"increased": float((trace[1:].amax(dim=0) > trace[0]).float().mean()),
            "final_above": float(final_above.float().mean()), "trend": float(tau.mean()),
            "sustained": float(sustained.float().mean()), "start": float(trace[0].mean()), "end": float(trace[-1].mean()),
            "mean_loss": [float(v) for v in trace.mean(dim=1)]}


def _probe_path(model: nn.Module, xc: Tensor, yc: Tensor, t: "Threat", e: float, steps: int) -> dict[str, Any]:
    """The Carlini-Wagner margin ``max_{j != y} z_j - z_y`` along a traced projected ascent on it
    from the clean images (no random start, no early stop), step ``2.5 eps / steps`` (1 pixel for
    l0). The margin, not the cross-entropy: in float32 the cross-entropy of a confident image is
    exactly 0 once its logit gap exceeds about 17 while its gradient is not, so an honest, confident
    model's traced loss would look flat."""
    m = int(xc.shape[0])
    path: dict[str, Any] = {"eps": e, "steps": steps, "n": m}
    if not m:
        return path
    tm = ThreatModel(t.norm, e)
    step = 2.5 * e / steps if t.norm != "l0" else 1.0
    xa, losses = xc.clone(), []
    with eval_mode(model):
        for s in range(steps + 1):
            loss, _, g = input_gradient(model, xa, lambda z: cw_margin(z, yc))
            losses.append(loss.detach())
            if s < steps:
                xa = tm.project(xa + step * tm.ascent(g, xa), xc)
    path.update(path_stats(torch.stack(losses)))  # (steps + 1, m)
    return path


def _in_order(tasks: Sequence[Callable[[], Any]]) -> list[Any]:
    return [task() for task in tasks]


def _fresh(run: Callable[[], Any]) -> Callable[[], Any]:
    def task() -> Any:
        release_memory()  # the previous probe's freed memory goes back first (flat peak memory)
        return run()

    return task


def probe(model: nn.Module, x: Tensor, y: Tensor, suite: "Suite", records: "Records", *, shape: Sequence[int],
          seed: int = 0, run_tasks: "Callable[[Sequence[Callable[[], Any]]], Optional[list[Any]]]" = _in_order,
          ) -> Optional[dict[str, Any]]:
    """Run the experiments the checks need on the images ``x`` (the first ``suite.checks.n`` of
    the evaluation) and return their outcome as plain JSON: ``threats[norm]`` per threat model
    (``stronger``, ``unbounded``, ``single_step``, ``path``) and model-wide ``gradients`` and
    ``deterministic`` (see :func:`threat_findings`, :func:`model_findings`).

    The per-threat probes are independent (each seeded by ``seed``); ``run_tasks`` runs them and
    returns their results in order (default: here, one after the other; under torchrun
    :func:`robustlab.distributed.run_json_tasks` deals them to the ranks and returns None on all
    but rank 0, where this returns None too)."""
    n = int(x.shape[0])
    out: dict[str, Any] = {"version": PROBES_VERSION, "n": n}
    with eval_mode(model), torch.no_grad():
        first = model(x)
        second = model(x)
    correct = first.argmax(dim=1) == y
    out["deterministic"] = {"max_abs_diff": float((first - second).abs().max()),
                            "max_abs_logit": float(first.abs().max()),
                            "same_predictions": bool(torch.equal(first.argmax(1), second.argmax(1)))}
    xc, yc = x[correct], y[correct]
    grads: dict[str, Any] = {"n": int(xc.shape[0])}
    if xc.shape[0]:
        with eval_mode(model):
            _, _, g = input_gradient(model, xc, lambda z: cross_entropy(z, yc))
        flat = g.reshape(xc.shape[0], -1)
        zero = flat.abs().amax(dim=1) == 0
        grads.update(zero_fraction=float(zero.float().mean()), zero=int(zero.sum()),
                     zero_entries=float((flat == 0).float().mean()))
    out["gradients"] = grads
    names: list[tuple[str, str]] = []
    tasks: list[Callable[[], Any]] = []
    p = _Probed(model, x, y, correct, suite, records, seed, shape)
    for t in suite.threats:
        e = _check_eps(records, suite, t)
        for name, run in (
            ("stronger", lambda t=t, e=e: _probe_stronger(p, t, e)),
            ("unbounded", lambda t=t: _probe_unbounded(p, t)),
            ("single_step", lambda t=t: _probe_single_step(p, t)),
            ("path", lambda t=t, e=e: _probe_path(model, xc, yc, t, e, suite.checks.path_steps)),
        ):
            names.append((t.key, name))
            tasks.append(_fresh(run))
    results = run_tasks(tasks)
    if results is None:
        return None
    out["threats"] = {t.key: {"norm": t.norm} for t in suite.threats}
    for (key, name), result in zip(names, results):
        out["threats"][key][name] = result
    return out


# -- findings ------------------------------------------------------------------------------------------


def check_monotone(eps: Sequence[float], curves: Mapping[str, Sequence[Rate]], norm: str,
                   union: Optional[Sequence[Rate]] = None) -> Finding:
    """Warn when robust accuracy rises with eps by more than :data:`MONOTONE_SLACK` (and one image).

    ``curves``: per attack; ``union``: the white-box union at each eps (robust against every attack
    run at that eps). When only single attacks rise while the union does not, the finding is a
    ``note``: those attacks are fooled at large eps (e.g. FGSM after catastrophic overfitting), but
    the other attacks find what they miss, so the worst case is not affected."""
    if len(eps) < 2:
        return _finding("monotone-eps", "skip", "only one eps in the grid", {"norm": norm}, norm)

    def rises(rates: Sequence[Rate]) -> list[int]:
        return [i for i in range(1, len(rates))
                if rates[i].value - rates[i - 1].value > MONOTONE_SLACK and rates[i].k - rates[i - 1].k > 1]

    described = []
    for attack, rates in curves.items():
        for i in rises(rates):
            described.append(f"{attack}: {_pct(rates[i - 1].value)} at eps {eps[i - 1]:g} -> {_pct(rates[i].value)} "
                             f"at eps {eps[i]:g}")
    union_rises = rises(union) if union is not None else []
    values = {"norm": norm, "rises": len(described), "union_rises": len(union_rises)}
    if union_rises or (described and union is None):
        extra = "" if union is None else "; the union of all attacks rises too" if union_rises else ""
        return _finding("monotone-eps", "warn", "robust accuracy rises with eps: " + "; ".join(described) + extra,
                        values, norm)
    if described:
        return _finding("monotone-eps", "note", "robust accuracy rises with eps for single attacks: " + "; ".join(described)
                        + ". These attacks are fooled at large radii (a sign of gradient masking against them, e.g. "
                        "FGSM after catastrophic overfitting); the other attacks find what they miss, so the worst case "
                        "is not affected", values, norm)
    return _finding("monotone-eps", "pass",
                    f"every attack's robust accuracy is non-increasing over eps {', '.join(f'{e:g}' for e in eps)} ({norm})",
                    values, norm)


def check_unbounded(u: Mapping[str, Any], norm: Optional[str] = None) -> Finding:
    """Warn when robust accuracy at an unbounded radius exceeds :data:`UNBOUNDED_MAX`; ``u`` is one
    threat model's ``unbounded`` probe (attack, eps, robust, n, random_start)."""
    frac = u["robust"] / u["n"] if u["n"] else 0.0
    start = {False: "no random start", None: "the attack's own start"}.get(u.get("random_start"), "random start")
    text = (f"{u['attack']} ({start}) at {norm or ''} eps {u['eps']:.4g}: {_pct(frac)} robust "
            f"({u['robust']}/{u['n']} images)")
    values = {"robust": frac, "eps": u["eps"], "n": u["n"], "attack": u["attack"]}
    if frac > UNBOUNDED_MAX:
        return _finding("unbounded", "warn", text + " -- expected ~0: the gradient does not lead to every label",
                        values, norm)
    return _finding("unbounded", "pass", text, values, norm)


def check_stronger(stronger: Mapping[str, Any], norm: Optional[str] = None) -> Finding:
    """Warn when the stronger attack breaks more than :data:`STRONGER_MAX_DROP` of the probed images
    (and more than one) that every attack of the suite left robust (``newly_broken``: judged on the
    union, not on the net change of one attack's robust count, which hides a stronger attack that
    breaks 6 new images while missing 6 others). The finding names what was probed and its budget."""
    probed = stronger.get("attack", "?")
    rests = stronger.get("worst_attack", probed)
    which = (f"probed {probed} (the worst case rests on {rests}, which has nothing to strengthen)"
             if rests != probed else f"probed {probed}, the attack the worst case rests on")
    if "budget" in stronger:
        which += f": {stronger['base_budget']} -> {stronger['budget']}"
    if "skipped" in stronger:
        return _finding("more-steps", "skip", (which + "; " if "budget" in stronger else "") + stronger["skipped"],
                        {"eps": stronger.get("eps"), "attack": probed}, norm)
    n = stronger["n"]
    base = stronger["base_robust"]
    new = stronger.get("newly_broken", base - stronger.get("both_robust", base))
    frac = new / n if n else 0.0
    values = {"eps": stronger["eps"], "attack": probed, "probe": stronger.get("probe", probed),
              "base": base / n if n else 0.0, "both": (base - new) / n if n else 0.0, "newly_broken": new, "n": n,
              "images": list(stronger.get("images", []))}
    own = (f"; {probed} alone leaves {stronger['attack_robust']} robust" if "attack_robust" in stronger else "")
    text = (f"{which}, at eps {stronger['eps']:g} on {n} images{own}; of the {base} robust to every attack of the "
            f"suite, the stronger attack breaks {new}")
    if new and stronger.get("images"):
        text += " (images " + ", ".join(str(i) for i in stronger["images"][:10]) + (", ..." if new > 10 else "") + ")"
    if frac > STRONGER_MAX_DROP and new > 1:
        return _finding("more-steps", "warn", text + f" (-{100 * frac:.1f} points): the suite's attacks have not "
                        "converged", values, norm)
    return _finding("more-steps", "pass", text, values, norm)


def check_single_step(single: Mapping[str, Any], norm: Optional[str] = None) -> Finding:
    """Warn when FGSM breaks more than :data:`SINGLE_STEP_MAX` of the correct probed images (and more
    than one) that the iterative attack leaves robust, at some eps. Not informative (``skip``) when
    the iterative attack leaves too few images robust at every eps for that to happen."""
    if "skipped" in single:
        return _finding("single-step", "skip", single["skipped"], {}, norm)
    per = [list(p) for p in single["per_eps"]]
    bad = [(p[0], p[1], p[3]) for p in per if p[1] > max(1, SINGLE_STEP_MAX * p[3])]
    values = {"attack": single["attack"], "max_images": max((p[1] for p in per), default=0), "per_eps": per}
    desc = ", ".join(f"{p[1]} of {p[2]} at eps {p[0]:g}" for p in per)
    text = f"images FGSM breaks but {single['attack']} does not (of those FGSM breaks): {desc}"
    if bad:
        return _finding("single-step", "warn", text + ": the iterative attack is led astray (a masking signature)",
                        values, norm)
    if all(len(p) > 4 and p[4] <= max(1, SINGLE_STEP_MAX * p[3]) for p in per):
        return _finding("single-step", "skip", f"{single['attack']} leaves at most "
                        f"{max(p[4] for p in per)} correct image(s) robust at every eps: nothing FGSM could beat it on",
                        values, norm)
    return _finding("single-step", "pass", text, values, norm)


def check_black_box(name: str, what: str, per_eps: Sequence[Sequence[Any]], norm: Optional[str] = None) -> Finding:
    """``per_eps``: ``(eps, k, n)`` or ``(eps, k, n, details)``: ``k`` correct images broken by
    ``what`` but by no gradient (white-box) attack, of ``n`` correct ones; ``details`` may give
    ``white_robust`` (correct images every gradient attack left robust: what ``what`` could break),
    ``sources`` (per black-box method, its images) and ``images`` (their indices).
    Warn when ``k`` exceeds :data:`BLACK_BOX_MAX` of the correct images (and one image) at some eps;
    not informative when too few images are left robust by the gradient attacks at every eps."""
    if not per_eps:
        return _finding(name, "skip", f"no {what} in this suite", {}, norm)
    rows = [(float(p[0]), int(p[1]), int(p[2]), dict(p[3]) if len(p) > 3 else {}) for p in per_eps]
    bad = [(e, k, n, d) for e, k, n, d in rows if k > max(1, BLACK_BOX_MAX * n)]
    total = sum(k for _, k, _, _ in rows)
    values = {"max_fraction": max((k / n if n else 0.0) for _, k, n, _ in rows), "images": total, "method": what,
              "per_eps": [{"eps": e, "images": k, "correct": n, **d} for e, k, n, d in rows]}

    def detail(e: float, k: int, n: int, d: Mapping[str, Any]) -> str:
        src = d.get("sources") or {}
        by = "; ".join(f"{s}: {c}" for s, c in src.items() if c)
        idx = d.get("indices") or []
        shown = (" (images " + ", ".join(str(i) for i in idx[:10]) + (", ..." if k > 10 else "") + ")") if idx else ""
        return f"{k} of {n} images at eps {e:g}" + (f" [{by}]" if by and len(src) > 1 else "") + shown

    if bad:
        desc = "; ".join(detail(*b) for b in bad)
        return _finding(name, "warn", f"{what} fools the model where every gradient attack fails: {desc}", values, norm)
    if all("white_robust" in d and d["white_robust"] <= max(1, BLACK_BOX_MAX * n) for _, _, n, d in rows):
        return _finding(name, "skip", f"the gradient attacks leave at most {max(d['white_robust'] for *_, d in rows)} "
                        f"correct image(s) robust at every eps: nothing left for {what} to find", values, norm)
    desc = ", ".join(f"{k} at eps {e:g}" for e, k, _, _ in rows)
    return _finding(name, "pass", f"images broken by {what} but by no gradient attack: {desc}", values, norm)


def check_path(path: Mapping[str, Any], norm: Optional[str] = None) -> Finding:
    """Warn when fewer than :data:`PATH_MIN_INCREASED` of the traced attacks show a sustained rise
    of the CW margin (final value above the start and a positive trend, see :func:`path_stats`)."""
    if not path.get("n"):
        return _finding("loss-path", "skip", "no correctly classified image to trace", {}, norm)
    sus = path["sustained"]
    values = {"sustained": sus, "final_above": path["final_above"], "trend": path["trend"],
              "increased": path["increased"], "start": path["start"], "end": path["end"], "n": path["n"],
              "eps": path["eps"]}
    text = (f"{path['steps']}-step projected ascent on the CW margin at eps {path['eps']:g} on {path['n']} images: "
            f"final margin above the start for {_pct(path['final_above'])}, mean rank trend {path['trend']:.2f}, "
            f"sustained rise for {_pct(sus)} (mean {path['start']:.3g} -> {path['end']:.3g})")
    return _finding("loss-path", "warn" if sus < PATH_MIN_INCREASED else "pass", text, values, norm)


def check_gradients(grads: Mapping[str, Any]) -> Finding:
    """Warn when more than :data:`ZERO_GRAD_MAX` of the images have an all-zero input gradient."""
    if not grads.get("n"):
        return _finding("zero-gradients", "skip", "no correctly classified image to probe", {})
    frac = grads["zero_fraction"]
    values = {"zero_fraction": frac, "zero_entries": grads["zero_entries"], "n": grads["n"]}
    text = (f"{grads['zero']} of {grads['n']} images ({_pct(frac)}) have an all-zero input gradient; "
            f"{_pct(grads['zero_entries'])} of all gradient entries are zero")
    return _finding("zero-gradients", "warn" if frac > ZERO_GRAD_MAX else "pass", text, values)


def check_deterministic(det: Mapping[str, Any]) -> Finding:
    """Warn when two forward passes change a prediction or differ by more than
    :data:`DETERMINISM_RTOL` of the largest logit (a relative tolerance: models with large logits
    and GPU kernels that are not bitwise reproducible differ by rounding, a randomised model by far more)."""
    diff = det["max_abs_diff"]
    scale = det.get("max_abs_logit", 1.0)
    tol = DETERMINISM_RTOL * scale
    ok = det["same_predictions"] and diff <= tol
    text = (f"two forward passes differ by at most {diff:.3g} in the logits ({diff / scale if scale else 0.0:.2g} of "
            f"the largest logit, {scale:.3g}; tolerance {DETERMINISM_RTOL:g})"
            + ("" if det["same_predictions"] else " and change predictions"))
    return _finding("deterministic", "pass" if ok else "warn", text + ("" if ok else ": use EOT (robustlab.attacks.eot)"),
                    {"max_abs_diff": diff, "max_abs_logit": scale, "rtol": DETERMINISM_RTOL})


def threat_findings(probe_t: Optional[Mapping[str, Any]], curves: Mapping[str, Sequence[Rate]], eps: Sequence[float],
                    norm: str, black_box: Sequence[Sequence[Any]], transfer: Sequence[Sequence[Any]],
                    union: Optional[Sequence[Rate]] = None, black_box_name: str = "random noise") -> list[Finding]:
    """The findings of one threat model: ``curves`` the per-attack robust accuracy over ``eps`` and
    ``union`` the per-eps union of the suite's attacks; ``black_box`` / ``transfer``: per eps, images
    they alone break (see :func:`check_black_box`); ``probe_t``: that threat model's part of :func:`probe`."""
    out = [check_monotone(eps, curves, norm, union)]
    if probe_t is not None:
        out += [check_unbounded(probe_t["unbounded"], norm), check_stronger(probe_t["stronger"], norm),
                check_single_step(probe_t["single_step"], norm)]
    out.append(check_black_box("noise-vs-attack", black_box_name, black_box, norm))
    out.append(check_black_box("transfer-vs-white-box", "transfer", transfer, norm))
    if probe_t is not None:
        out.append(check_path(probe_t["path"], norm))
    return out


def model_findings(probes: Optional[Mapping[str, Any]]) -> list[Finding]:
    """The model-wide findings (input gradients, determinism), which speak for every threat model."""
    if probes is None:
        return []
    return [check_gradients(probes["gradients"]), check_deterministic(probes["deterministic"])]


def verdict(found: Sequence[Finding]) -> Verdict:
    """Trusted when no check warns; the summary says what the numbers mean either way, which
    threat models warn where the findings span several, and which checks were not informative on
    this run (``skip``: they could not have warned, e.g. no image left robust for a stronger attack
    to break; they are listed, never counted as passed)."""
    warns = [f for f in found if f.status == "warn"]
    ran = [f for f in found if f.status != "skip"]
    notes = [f for f in found if f.status == "note"]
    norms = sorted({f.norm for f in found if f.norm is not None})

    def label(f: Finding) -> str:
        return f.name + (f" ({f.norm})" if f.norm and len(norms) > 1 else "")

    idle = list(dict.fromkeys(label(f) for f in found if f.status == "skip"))
    idle_text = (f" Not informative on this run (could not have warned; see each finding): {', '.join(idle)}."
                 if idle else "")
    if not ran:
        return Verdict(False, "No gradient-masking check could be informative: the robust accuracy is an upper bound "
                              "of unknown tightness." + idle_text, [], idle)
    if not warns:
        extra = (f" ({len(notes)} note(s): single attacks are fooled, stronger ones are not)" if notes else "")
        return Verdict(True, f"All {len(ran)} informative gradient-masking checks pass{extra}: no sign that the attacks "
                             "as a whole were fooled, so the worst-case robust accuracy is a credible (empirical) upper "
                             "bound on the true robustness." + idle_text, [], idle)
    names = list(dict.fromkeys(f.name for f in warns))
    titles = "; ".join(dict.fromkeys(f.title.lower() + (f" ({f.norm})" if f.norm and len(norms) > 1 else "")
                                     for f in warns))
    return Verdict(False, f"{len(warns)} of {len(ran)} informative checks warn (not met: {titles}): the attacks may be "
                          "fooled by the model and the robust accuracy may overstate its robustness. Use adaptive "
                          "attacks (BPDA, EOT, margin losses) before trusting these numbers." + idle_text, names, idle)
