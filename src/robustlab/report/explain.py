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
        "The attack the worst case rests on (the suite's attack with the most successes at that eps; for the "
        "standard preset, the whole preset) with more compute: each gradient member with twice the steps and twice "
        "the restarts, APGD-T over every other class, Square with twice the queries (other attacks: twice the steps, "
        "more restarts), run with other random starts on the images robust to every attack of the suite, at the eps "
        "where the outcome is most uncertain. Many images it breaks mean the suite's attacks had not converged and "
        "the reported robust accuracy is too optimistic. With too few images left robust for a warning to be "
        "possible, the check says so and is not counted as passed.",
        "Carlini et al. 2019 (run attacks to convergence: more iterations, random restarts)"),
    "single-step": (
        "Single-step attacks do not beat iterative ones",
        "FGSM takes one step from the clean image; an iterative attack (PGD) can reach every point FGSM reaches "
        "and more. Images that FGSM breaks while the iterative attack fails mean the iterative attack is led "
        "astray by the gradients away from the clean image: a masking signature.",
        "Athalye et al. 2018 (single-step attacks performing better than iterative ones signal obfuscated "
        "gradients); Carlini et al. 2019"),
    "noise-vs-attack": (
        "Black-box search is not stronger than the gradient attacks",
        "Score-based black-box search, which never reads a gradient, should not fool the model where every gradient "
        "attack fails: the checks' own baseline (a Square attack, Andriushchenko et al. 2020, arXiv:1912.00049, with "
        "a modest query budget where the attack registry has it; else random points of the ball) and the suite's "
        "own query-based attacks and members (the standard preset's Square), which for this reason never count as "
        "white box. Images they break while every gradient attack fails are counted and listed: the gradient is not "
        "pointing anywhere useful (shattered, zero or randomised gradients). This is AutoAttack's own signal: Square "
        "succeeding where APGD failed.",
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
        "A projected gradient ascent on the Carlini-Wagner margin (max over other classes of the logit minus the "
        "true class's logit), traced step by step from the clean image: for (almost) every image the final margin "
        "must be above the starting one and it must trend upwards over the steps (a positive rank correlation "
        "between step and margin). A margin that is flat, falls, or wanders like a random walk means the gradient "
        "carries no usable signal. The margin, not the cross-entropy: in float32 the cross-entropy of a confident "
        "image is exactly 0 while its gradient is not, which would make an honest model's trace look flat.",
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
        "Two forward passes on the same images must give the same predictions and logits that agree to a relative "
        "1e-4 of the largest logit (rounding in kernels that are not bitwise reproducible passes; a randomised "
        "model does not). A randomised model (random transformations, dropout at test time) needs Expectation over "
        "Transformation; plain attacks then overestimate robustness.",
        "Athalye et al. 2018 (stochastic gradients; Expectation over Transformation)"),
}
