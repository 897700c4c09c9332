"""What each gradient-masking check tests, in words: rendered in the page and in
docs/report-format.md. The checks themselves live in :mod:`robustlab.evaluate.checks`; report/
only explains the findings it is given, so this table lives here (report/ never imports evaluate/).
"""

from __future__ import annotations

#: name -> (title, explanation, reference).
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
        "must succeed on (almost) every image. It runs without a random start, so that it tests the gradient and "
        "not the luck of a random point. If it does not succeed, the attack is broken or the gradients are masked.",
        "Carlini et al. 2019 (with an unbounded budget, accuracy must reach chance); Athalye et al. 2018 "
        "(unbounded attacks not reaching 100% success signal masked gradients)"),
    "more-steps": (
        "More steps and restarts find nothing new",
        "The attack the worst case rests on (the strongest of the suite's iterative attacks at that eps), with "
        "several times the iterations and random restarts, on the same images at the eps where the outcome is most "
        "uncertain. It is judged on the union: images robust to every attack of the suite but broken by the "
        "stronger one. Many such images mean the suite's attacks had not converged and the reported robust "
        "accuracy is too optimistic.",
        "Carlini et al. 2019 (run attacks to convergence: more iterations, random restarts)"),
    "single-step": (
        "Single-step attacks do not beat iterative ones",
        "FGSM takes one step from the clean image; an iterative attack (PGD) can reach every point FGSM reaches "
        "and more. Images that FGSM breaks while the iterative attack fails mean the iterative attack is led "
        "astray by the gradients away from the clean image: a masking signature.",
        "Athalye et al. 2018 (single-step attacks performing better than iterative ones signal obfuscated "
        "gradients); Carlini et al. 2019"),
    "noise-vs-attack": (
        "Black-box search is not stronger than the attack",
        "A score-based black-box attack (Square, Andriushchenko et al. 2020, arXiv:1912.00049, with a modest query "
        "budget, where the attack registry has it; else random points of the ball) at the same eps should never "
        "fool the model where every gradient attack fails. If it does, the gradient is not pointing anywhere "
        "useful: shattered, zero or randomised gradients.",
        "Carlini et al. 2019 (compare against random noise and black-box attacks); Athalye et al. 2018 (random "
        "sampling finding adversarial examples signals masked gradients); Croce & Hein 2020 (Square beating "
        "white-box attacks)"),
    "transfer-vs-white-box": (
        "Transfer attacks are not stronger than white-box ones",
        "Adversarial examples crafted on another (source) model only use the target through the images; a "
        "white-box attack that sees the target's gradient should do at least as well. Transfer succeeding where "
        "white-box fails points at gradient masking.",
        "Carlini et al. 2019 (black-box and transfer attacks must not beat white-box ones); Athalye et al. 2018"),
    "loss-path": (
        "The loss rises steadily along the attack path",
        "A projected gradient ascent on the cross-entropy, traced step by step from the clean image: for (almost) "
        "every image the final loss must be above the starting one and the loss must trend upwards over the steps "
        "(a positive rank correlation between step and loss). A loss that is flat, falls, or wanders like a random "
        "walk means the gradient carries no usable signal.",
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
