"""Gradient-masking checks: can the robust accuracy be trusted?

An empirical robust accuracy is only an upper bound on the true one, and a loose one when the
attacks fail for reasons that have nothing to do with robustness: saturated softmax, shattered or
zero gradients, randomness, too few iterations. Carlini et al. 2019 ("On Evaluating Adversarial
Robustness", arXiv:1902.06705) and Athalye, Carlini & Wagner 2018 ("Obfuscated
Gradients Give a False Sense of Security", arXiv:1802.00420) list the symptoms; each
check below tests one and returns a :class:`~robustlab.report.schema.Finding` (pass / warn /
skip, the evidence in words and numbers, and the anchor of its explanation). The verdict says
whether the numbers can be trusted.

Two halves: :func:`probe` runs the model-based experiments on a few images (a stronger attack,
an unbounded one, the loss along an attack path, input gradients, two forward passes) and returns
plain JSON; :func:`findings` turns those and the per-sample records' summaries into findings.
Random noise and transfer examples are part of the per-sample records (see ``evaluate.run``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from robustlab.attacks.base import eval_mode, input_gradient
from robustlab.losses import cross_entropy
from robustlab.report.schema import Finding, Rate, Verdict
from robustlab.threat import ThreatModel

if TYPE_CHECKING:
    from robustlab.evaluate.run import Records
    from robustlab.evaluate.suite import Suite

#: Robust accuracy may rise with eps by at most this much (and one image) before it is a warning.
MONOTONE_SLACK = 0.01
#: Robust accuracy at an unbounded radius above this is a warning (it should be ~0).
UNBOUNDED_MAX = 0.02
#: A stronger attack (more steps and restarts) may lower robust accuracy by at most this much.
STRONGER_MAX_DROP = 0.03
#: Images that noise or transfer break while every white-box attack fails: at most this fraction
#: of the correctly classified images (and one image).
BLACK_BOX_MAX = 0.005
#: At least this fraction of attacked images must end with a higher loss than they started with.
PATH_MIN_INCREASED = 0.9
#: At most this fraction of correctly classified images may have an all-zero input gradient.
ZERO_GRAD_MAX = 0.01

#: name -> (title, explanation, reference): rendered in the page and in docs/report-format.md.
CHECKS: dict[str, tuple[str, str, str]] = {
    "monotone-eps": (
        "Robust accuracy falls as eps grows",
        "Every adversarial example within eps is also one within any larger radius, so each attack's robust "
        "accuracy must not increase with eps. If it does, the attack fails to find points it could reach: a sign "
        "of a poorly converging or masked attack.",
        "Carlini et al. 2019, arXiv:1902.06705 (checklist: increasing the perturbation budget must increase attack "
        "success); Athalye et al. 2018, arXiv:1802.00420 (masked gradients: larger distortion does not help)"),
    "unbounded": (
        "An unbounded attack reaches ~0% robust accuracy",
        "With a radius that admits every image (linf 1, l2 sqrt(D), ...) any label can be reached, so the attack "
        "must succeed on (almost) every image. If it does not, the attack is broken or the gradients are masked.",
        "Carlini et al. 2019 (with an unbounded budget, accuracy must reach chance); Athalye et al. 2018 "
        "(unbounded attacks not reaching 100% success signal masked gradients)"),
    "more-steps": (
        "More steps and restarts do not lower it much",
        "The same attack with several times the iterations and random restarts, on the same images at the eps "
        "where the outcome is most uncertain. A large drop means the suite's attack had not converged and the "
        "reported robust accuracy is too optimistic.",
        "Carlini et al. 2019 (run attacks to convergence: more iterations, random restarts)"),
    "noise-vs-attack": (
        "Random noise is not stronger than the attack",
        "Random points of the same ball should never fool the model where a gradient attack fails. If they do, "
        "the gradient is not pointing anywhere useful: shattered, zero or randomised gradients.",
        "Carlini et al. 2019 (compare against random noise); Athalye et al. 2018 (random sampling finding "
        "adversarial examples signals masked gradients)"),
    "transfer-vs-white-box": (
        "Transfer attacks are not stronger than white-box ones",
        "Adversarial examples crafted on another (source) model only use the target through the images; a "
        "white-box attack that sees the target's gradient should do at least as well. Transfer succeeding where "
        "white-box fails points at gradient masking.",
        "Carlini et al. 2019 (black-box and transfer attacks must not beat white-box ones); Athalye et al. 2018"),
    "loss-path": (
        "The loss increases along the attack path",
        "A projected gradient ascent on the cross-entropy, traced step by step from the clean image: the loss "
        "must rise above its starting value for (almost) every image. Flat or falling losses mean the gradient "
        "carries no usable signal.",
        "Carlini et al. 2019 (verify that the attack makes progress on its loss)"),
    "zero-gradients": (
        "Input gradients are not zero",
        "The input gradient of the cross-entropy at correctly classified images. All-zero gradients come from "
        "saturated softmax outputs, thresholding or quantisation of the input, or non-differentiable layers: "
        "gradient attacks then cannot move.",
        "Athalye et al. 2018 (shattered and vanishing gradients); Croce & Hein 2020, arXiv:2003.01690 "
        "(AutoAttack's zero-gradient check)"),
    "deterministic": (
        "The model is deterministic",
        "Two forward passes on the same images must agree. A randomised model (random transformations, dropout at "
        "test time) needs Expectation over Transformation; plain attacks then overestimate robustness.",
        "Athalye et al. 2018 (stochastic gradients; Expectation over Transformation)"),
}


def _finding(name: str, status: str, evidence: str, values: Mapping[str, Any]) -> Finding:
    return Finding(name, CHECKS[name][0], status, evidence, dict(values), f"#check-{name}")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


# -- the model probes --------------------------------------------------------------------------------


def _check_eps(records: "Records", suite: "Suite") -> float:
    """The eps of the first threat model where the check attack's robust accuracy is closest to 1/2
    (where a stronger attack can change the most)."""
    t = suite.threats[0]
    correct = records.correct
    name = suite.checks.attack if suite.checks.attack in suite.attacks_for(t) else suite.attacks_for(t)[-1]
    best, best_gap = t.eps[0], math.inf
    for e in t.eps:
        acc = float((correct & ~records.get("attack", t.norm, e, name, "success")).float().mean())
        if abs(acc - 0.5) < best_gap:
            best, best_gap = e, abs(acc - 0.5)
    return float(best)


def probe(model: nn.Module, x: Tensor, y: Tensor, suite: "Suite", records: "Records", *, shape: Sequence[int],
          seed: int = 0) -> dict[str, Any]:
    """Run the experiments the checks need on the images ``x`` (the first ``suite.checks.n`` of
    the evaluation) and return their outcome as plain JSON (see :func:`findings`)."""
    from robustlab.evaluate.suite import unbounded_eps

    cfg = suite.checks
    t = suite.threats[0]
    n = int(x.shape[0])
    out: dict[str, Any] = {"n": n, "norm": t.norm}
    with eval_mode(model), torch.no_grad():
        first = model(x)
        second = model(x)
    correct = first.argmax(dim=1) == y
    out["deterministic"] = {"max_abs_diff": float((first - second).abs().max()),
                            "same_predictions": bool(torch.equal(first.argmax(1), second.argmax(1)))}

    # A stronger attack at the most uncertain eps, on the same images.
    e = _check_eps(records, suite)
    tm = ThreatModel(t.norm, e)
    name = cfg.attack
    base_attack = suite.build_attack(name, tm, seed)
    steps, restarts = getattr(base_attack, "steps", None), getattr(base_attack, "restarts", None)
    if name in suite.attacks_for(t):
        base_success = records.get("attack", t.norm, e, name, "success")[:n].to(x.device)
    else:
        base_success = base_attack.attack(model, x, y).success
    base_robust = int((correct & ~base_success).sum())
    stronger: dict[str, Any] = {"attack": name, "eps": e, "base_robust": base_robust, "n": n}
    if isinstance(steps, int) and isinstance(restarts, int):
        more_steps = steps * 2 if cfg.strength > 1 else steps
        more_restarts = restarts * max(1, cfg.strength // 2)
        strong = suite.build_attack(name, tm, seed + 1, steps=more_steps, restarts=more_restarts)
        s2 = strong.attack(model, x, y).success
        stronger.update(steps=more_steps, restarts=more_restarts, base_steps=steps,
                        base_restarts=restarts, robust=int((correct & ~s2).sum()),
                        both_robust=int((correct & ~s2 & ~base_success).sum()))
    else:
        stronger["skipped"] = f"attack {name!r} has no steps/restarts to increase"
    out["stronger"] = stronger

    # Unbounded radius, per threat model.
    out["unbounded"] = {}
    for th in suite.threats:
        big = unbounded_eps(th.norm, shape)
        res = suite.build_attack(name, ThreatModel(th.norm, big), seed).attack(model, x, y)
        out["unbounded"][th.norm] = {"eps": big, "robust": int((correct & ~res.success).sum()), "n": n}

    # The loss along a traced PGD path from the clean image (no random start, no early stop).
    xc, yc = x[correct], y[correct]
    m = int(xc.shape[0])
    path: dict[str, Any] = {"eps": e, "steps": cfg.path_steps, "n": m}
    grads: dict[str, Any] = {"n": m}
    if m:
        step = 2.5 * e / cfg.path_steps if t.norm != "l0" else 1.0
        xa = xc.clone()
        losses = []
        with eval_mode(model):
            for s in range(cfg.path_steps + 1):
                loss, _, g = input_gradient(model, xa, lambda z: cross_entropy(z, yc))
                losses.append(loss)
                if s == 0:
                    flat = g.reshape(m, -1)
                    zero = flat.abs().amax(dim=1) == 0
                    grads.update(zero_fraction=float(zero.float().mean()), zero=int(zero.sum()),
                                 zero_entries=float((flat == 0).float().mean()))
                if s < cfg.path_steps:
                    xa = tm.project(xa + step * tm.ascent(g, xa), xc)
        trace = torch.stack(losses)  # (steps + 1, m)
        increased = trace[1:].amax(dim=0) > trace[0]
        path.update(mean_loss=[float(v) for v in trace.mean(dim=1)], increased=float(increased.float().mean()),
                    start=float(trace[0].mean()), end=float(trace[-1].mean()))
    out["path"] = path
    out["gradients"] = grads
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
        return _finding("monotone-eps", "skip", "only one eps in the grid", {"norm": norm})

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
        return _finding("monotone-eps", "warn", "robust accuracy rises with eps: " + "; ".join(described) + extra, values)
    if described:
        return _finding("monotone-eps", "note", "robust accuracy rises with eps for single attacks: " + "; ".join(described)
                        + ". These attacks are fooled at large radii (a sign of gradient masking against them, e.g. "
                        "FGSM after catastrophic overfitting); the other attacks find what they miss, so the worst case "
                        "is not affected", values)
    return _finding("monotone-eps", "pass",
                    f"every attack's robust accuracy is non-increasing over eps {', '.join(f'{e:g}' for e in eps)} ({norm})",
                    values)


def check_unbounded(unbounded: Mapping[str, Mapping[str, Any]], attack: str) -> Finding:
    """Warn when robust accuracy at an unbounded radius exceeds :data:`UNBOUNDED_MAX`."""
    bad, parts, values = [], [], {}
    for norm, u in unbounded.items():
        frac = u["robust"] / u["n"] if u["n"] else 0.0
        values[norm] = frac
        parts.append(f"{_pct(frac)} robust at {norm} eps {u['eps']:.4g} ({u['robust']}/{u['n']} images)")
        if frac > UNBOUNDED_MAX:
            bad.append(norm)
    status = "warn" if bad else "pass"
    return _finding("unbounded", status, f"{attack}: " + "; ".join(parts) + ("" if not bad else
                    f" -- expected ~0; the attack does not reach every label"), values)


def check_stronger(stronger: Mapping[str, Any]) -> Finding:
    """Warn when a stronger attack lowers robust accuracy by more than :data:`STRONGER_MAX_DROP`."""
    if "skipped" in stronger:
        return _finding("more-steps", "skip", stronger["skipped"], {})
    n = stronger["n"]
    base, strong = stronger["base_robust"], stronger["robust"]
    drop = (base - strong) / n if n else 0.0
    values = {"eps": stronger["eps"], "base": base / n if n else 0.0, "stronger": strong / n if n else 0.0, "n": n,
              "steps": stronger["steps"], "restarts": stronger["restarts"]}
    text = (f"{stronger['attack']} at eps {stronger['eps']:g} on {n} images: {stronger['base_steps']} steps x "
            f"{stronger['base_restarts']} restart(s) leave {base} robust, {stronger['steps']} steps x "
            f"{stronger['restarts']} restarts leave {strong}")
    if drop > STRONGER_MAX_DROP and base - strong > 1:
        return _finding("more-steps", "warn", text + f" (-{100 * drop:.1f} points): the suite's attack has not converged",
                        values)
    return _finding("more-steps", "pass", text, values)


def check_black_box(name: str, what: str, per_eps: Sequence[tuple[float, int, int]]) -> Finding:
    """``per_eps``: (eps, images broken by ``what`` but by no white-box attack, correct images).
    Warn when that exceeds :data:`BLACK_BOX_MAX` of the correct images at some eps."""
    if not per_eps:
        return _finding(name, "skip", f"no {what} in this suite", {})
    bad = [(e, k, n) for e, k, n in per_eps if k > max(1, BLACK_BOX_MAX * n)]
    total = sum(k for _, k, _ in per_eps)
    values = {"max_fraction": max((k / n if n else 0.0) for _, k, n in per_eps), "images": total}
    if bad:
        desc = "; ".join(f"{k} of {n} images at eps {e:g}" for e, k, n in bad)
        return _finding(name, "warn", f"{what} fools the model where every white-box attack fails: {desc}", values)
    desc = ", ".join(f"{k} at eps {e:g}" for e, k, _ in per_eps)
    return _finding(name, "pass", f"images broken by {what} but by no white-box attack: {desc}", values)


def check_path(path: Mapping[str, Any]) -> Finding:
    """Warn when fewer than :data:`PATH_MIN_INCREASED` of the traced attacks raise the loss."""
    if not path.get("n"):
        return _finding("loss-path", "skip", "no correctly classified image to trace", {})
    inc = path["increased"]
    values = {"increased": inc, "start": path["start"], "end": path["end"], "n": path["n"], "eps": path["eps"]}
    text = (f"{path['steps']}-step PGD on the cross-entropy at eps {path['eps']:g}: the loss rose on {_pct(inc)} of "
            f"{path['n']} images (mean {path['start']:.3g} -> {path['end']:.3g})")
    return _finding("loss-path", "warn" if inc < PATH_MIN_INCREASED else "pass", text, values)


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
    diff = det["max_abs_diff"]
    ok = det["same_predictions"] and diff <= 1e-4
    text = f"two forward passes differ by at most {diff:.3g} in the logits" + ("" if det["same_predictions"] else
                                                                                 " and change predictions")
    return _finding("deterministic", "pass" if ok else "warn", text + ("" if ok else ": use EOT (robustlab.attacks.eot)"),
                    {"max_abs_diff": diff})


def findings(probes: Optional[Mapping[str, Any]], curves: Mapping[str, Sequence[Rate]], eps: Sequence[float], norm: str,
             noise: Sequence[tuple[float, int, int]], transfer: Sequence[tuple[float, int, int]],
             attack: str, union: Optional[Sequence[Rate]] = None) -> list[Finding]:
    """All findings of one evaluation: ``curves`` the per-attack robust accuracy over ``eps`` of the
    first threat model and ``union`` the per-eps white-box union; ``noise`` / ``transfer``: per eps,
    images they alone break (see :func:`check_black_box`); ``probes``: the output of :func:`probe`."""
    out = [check_monotone(eps, curves, norm, union)]
    if probes is not None:
        out += [check_unbounded(probes["unbounded"], attack), check_stronger(probes["stronger"])]
    out.append(check_black_box("noise-vs-attack", "random noise", noise))
    out.append(check_black_box("transfer-vs-white-box", "transfer", transfer))
    if probes is not None:
        out += [check_path(probes["path"]), check_gradients(probes["gradients"]),
                check_deterministic(probes["deterministic"])]
    return out


def verdict(found: Sequence[Finding]) -> Verdict:
    """Trusted when no check warns; the summary says what the numbers mean either way."""
    warns = [f for f in found if f.status == "warn"]
    ran = [f for f in found if f.status != "skip"]
    notes = [f for f in found if f.status == "note"]
    if not ran:
        return Verdict(False, "No gradient-masking check ran: the robust accuracy is an upper bound of unknown "
                              "tightness.", [])
    if not warns:
        extra = (f" ({len(notes)} note(s): single attacks are fooled, stronger ones are not)" if notes else "")
        return Verdict(True, f"All {len(ran)} gradient-masking checks pass{extra}: no sign that the attacks as a whole "
                             "were fooled, so the worst-case robust accuracy is a credible (empirical) upper bound on "
                             "the true robustness.", [])
    names = ", ".join(f.title.lower() for f in warns)
    return Verdict(False, f"{len(warns)} of {len(ran)} checks warn ({names}): the attacks may be fooled by the model "
                          "and the robust accuracy may overstate its robustness. Use adaptive attacks (BPDA, EOT, "
                          "margin losses) before trusting these numbers.", [f.name for f in warns])
