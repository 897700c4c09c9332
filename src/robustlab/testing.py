"""The property suite every attack must pass: ``check_attack(make_attack, model, x, y)``.

Use it on robustlab's attacks and on your own (any :class:`robustlab.attacks.Attack`). It raises
``AssertionError`` naming the property that failed:

1. every ``x_adv`` is in the threat model's ball (if it has one) and in the box [lower, upper];
2. ``success`` equals ``model(x_adv).argmax != y`` (``== target`` when targeted), recomputed here;
3. the caller's ``x``, ``y``, the model's ``training`` flags, parameters, buffers and parameter
   ``.grad`` and the global RNG state are unchanged;
4. the same seed gives the same result;
5. ``x_adv`` has the dtype and device of ``x`` (float64 in, float64 out);
6. inputs that are already misclassified come back unchanged with distance 0;
7. the result fields have one entry per sample for every batch size in ``batch_sizes``.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from robustlab.attacks.base import Attack, AttackResult, predict

MakeAttack = Callable[[int], Attack]


class CountingModel(nn.Module):
    """``model`` that counts the rows (images) it evaluates in ``rows``, whoever calls it: exact
    query counts for attacks of any library (tests, benchmarks).

    ``backward_rows`` counts the rows a backward pass went through: a hook on the output of each
    gradient-enabled call adds its rows when autograd runs through it (once per backward pass, so a
    forward whose graph is never differentiated counts as a forward pass only)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0
        self.backward_rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += x.shape[0]
        out = self.model(x)
        if out.requires_grad:
            rows = x.shape[0]

            def count(grad: Tensor) -> None:
                self.backward_rows += rows

            out.register_hook(count)
        return out


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(before: dict[str, Tensor], model: nn.Module, what: str) -> None:
    after = model.state_dict()
    for k, v in before.items():
        if not torch.equal(v, after[k]):
            raise AssertionError(f"{what}: the attack changed the model's parameter/buffer {k!r}")


def _check_result(att: Attack, res: AttackResult, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], atol: float) -> None:
    n = x.shape[0]
    name = type(att).__name__
    if res.x_adv.shape != x.shape:
        raise AssertionError(f"{name}: x_adv has shape {tuple(res.x_adv.shape)}, expected {tuple(x.shape)}")
    if res.x_adv.dtype != x.dtype or res.x_adv.device != x.device:
        raise AssertionError(f"{name}: x_adv is {res.x_adv.dtype} on {res.x_adv.device}, expected {x.dtype} on {x.device}")
    for field in ("success", "distance", "iterations"):
        if getattr(res, field).shape != (n,):
            raise AssertionError(f"{name}: result.{field} has shape {tuple(getattr(res, field).shape)}, expected ({n},)")
    lower, upper = (att.threat.lower, att.threat.upper) if att.threat is not None else (0.0, 1.0)
    if bool((res.x_adv < lower - atol).any() or (res.x_adv > upper + atol).any()):
        raise AssertionError(f"{name}: x_adv leaves the box [{lower}, {upper}]")
    if att.threat is not None:
        inside = att.threat.contains(res.x_adv, x, atol=atol)
        if not bool(inside.all()):
            worst = float(att.threat.distance(res.x_adv, x).max())
            raise AssertionError(
                f"{name}: x_adv leaves the {att.threat.norm} ball of radius {att.threat.eps} (max distance {worst:.6g})"
            )
    with torch.no_grad():
        was = model.training
        model.eval()
        pred = predict(model, res.x_adv).argmax(1)
        model.train(was)
    expected = pred != y if target is None else pred == target
    if not torch.equal(expected, res.success):
        bad = int((expected != res.success).sum())
        raise AssertionError(f"{name}: result.success disagrees with model(x_adv) on {bad} of {n} samples")


def check_attack(
    make_attack: MakeAttack,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    target: Optional[Tensor] = None,
    batch_sizes: Sequence[int] = (1, 3, 8),
    check_dtype: bool = True,
    check_seed: bool = True,
    atol: float = 1e-5,
) -> AttackResult:
    """Run the attack built by ``make_attack(seed)`` and assert the properties listed in the module
    docstring. ``x`` (N, C, H, W) in [0, 1] and ``y`` (N,) should be mostly correctly classified by
    ``model``. Returns the result on the full batch."""
    name = "attack"
    x_before, y_before = x.clone(), y.clone()
    rng_before = torch.get_rng_state()
    state_before = _state(model)
    train_flags = [m.training for m in model.modules()]
    grads_before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]

    att = make_attack(0)
    name = type(att).__name__
    res = att.attack(model, x, y, target=target)
    _check_result(att, res, model, x, y, target, atol)

    if not torch.equal(x, x_before) or not torch.equal(y, y_before):
        raise AssertionError(f"{name}: the attack modified its input tensors")
    if [m.training for m in model.modules()] != train_flags:
        raise AssertionError(f"{name}: the attack did not restore the model's training mode")
    _assert_same_state(state_before, model, name)
    for p, g in zip(model.parameters(), grads_before):
        if (g is None) != (p.grad is None) or (g is not None and not torch.equal(g, p.grad)):
            raise AssertionError(f"{name}: the attack left gradients on the model's parameters")
    if not torch.equal(torch.get_rng_state(), rng_before):
        raise AssertionError(f"{name}: the attack consumed the global RNG (use a seeded torch.Generator)")

    if check_seed:
        again = make_attack(0).attack(model, x, y, target=target)
        if not torch.equal(again.x_adv, res.x_adv) or not torch.equal(again.success, res.success):
            raise AssertionError(f"{name}: the same seed gave a different result")

    # Already-misclassified inputs come back unchanged with distance 0.
    with torch.no_grad():
        was = model.training
        model.eval()
        logits = predict(model, x)
        model.train(was)
    pred = logits.argmax(1)
    k = logits.shape[1]
    if target is None:
        wrong_y = (pred + 1) % k
        res_wrong = make_attack(0).attack(model, x, wrong_y)
        if not torch.equal(res_wrong.x_adv, x) or bool((res_wrong.distance != 0).any()) or not bool(res_wrong.success.all()):
            raise AssertionError(f"{name}: inputs already misclassified were changed or got a non-zero distance")

    for bs in batch_sizes:
        bs = min(int(bs), x.shape[0])
        t = None if target is None else target[:bs]
        part = make_attack(0).attack(model, x[:bs], y[:bs], target=t)
        _check_result(make_attack(0), part, model, x[:bs], y[:bs], t, atol)

    if check_dtype and x.dtype != torch.float64:
        model64 = copy.deepcopy(model).double()
        t = None if target is None else target
        res64 = make_attack(0).attack(model64, x.double(), y, target=t)
        _check_result(make_attack(0), res64, model64, x.double(), y, t, atol)
    return res
