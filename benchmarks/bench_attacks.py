"""White-box attack suite vs its peers, same model, same images, one process per part.

Parts (``--parts``, comma-separated, default all):

* ``cw``: Carlini-Wagner L2 on the first N MNIST test images of ``runs/mnist-cnn``: robustlab vs
  torchattacks, Foolbox and ART with the same hyperparameters where the peer has them (100 Adam
  steps, lr 0.1, kappa 0, 5 binary-search steps from c = 1; torchattacks has no binary search
  and runs c = 1).
* ``deepfool``: L2 DeepFool (50 steps, overshoot 0.02, 10 candidate classes) on the same images.
* ``standard``: ``robustlab.attacks.standard(linf eps 0.3)`` vs pyautoattack ``version="standard"``
  (APGD-CE, APGD-T, FAB-T, Square) on the adversarially trained ``runs/mnist-cnn-fgsmrs``.

Reported: success rate, median L2 of the successful perturbations (success recomputed here from
the model's prediction on each library's output), robust accuracy, wall seconds.

    python benchmarks/bench_attacks.py --parts cw,deepfool --n 200 --json benchmarks/results/attacks_cw_deepfool.json
    python benchmarks/bench_attacks.py --parts standard --aa-n 100 --json benchmarks/results/attacks_standard.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import first_test_images, hardware, mnist_model  # noqa: E402

import robustlab as rl  # noqa: E402

CW = {"steps": 100, "step_size": 0.1, "binary_search_steps": 5, "initial_const": 1.0, "kappa": 0.0}
DF = {"steps": 50, "overshoot": 0.02, "candidates": 10}
EPS = 0.3


def _summary(model, x, y, x_adv, seconds):
    """Success (recomputed: prediction != y on a correctly classified input) and L2 statistics."""
    x_adv = x_adv.detach().to(x.dtype).reshape(x.shape)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        adv = model(x_adv).argmax(1) != y
    ok = adv & correct
    l2 = (x_adv - x).flatten(1).norm(dim=1)
    linf = (x_adv - x).flatten(1).abs().amax(dim=1)
    inbox = bool(((x_adv >= 0) & (x_adv <= 1)).all())
    med = float(l2[ok].median()) if bool(ok.any()) else None
    return {
        "success_rate": float(ok.float().sum() / correct.float().sum()),
        "median_l2": med,
        "mean_l2": float(l2[ok].mean()) if bool(ok.any()) else None,
        "max_linf": float(linf.max()),
        "in_box": inbox,
        "robust_accuracy": float((correct & ~adv).float().mean()),
        "seconds": seconds,
        "n": int(x.shape[0]),
    }


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _batched(fn, x, y, bs):
    return torch.cat([fn(x[i : i + bs], y[i : i + bs]) for i in range(0, len(y), bs)])


# -- Carlini-Wagner L2 -----------------------------------------------------------------------
def cw_robustlab(model, x, y, bs):
    atk = rl.attacks.CarliniWagner("l2", seed=0, **CW)
    return _batched(lambda a, b: atk.attack(model, a, b).x_adv, x, y, bs)


def cw_torchattacks(model, x, y, bs):
    import torchattacks

    atk = torchattacks.CW(model, c=CW["initial_const"], kappa=CW["kappa"], steps=CW["steps"], lr=CW["step_size"])
    return _batched(lambda a, b: atk(a, b), x, y, bs)


def cw_foolbox(model, x, y, bs):
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    atk = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=CW["binary_search_steps"], steps=CW["steps"],
                                           stepsize=CW["step_size"], confidence=CW["kappa"], initial_const=CW["initial_const"],
                                           abort_early=True)
    return _batched(lambda a, b: atk(fmodel, a, b, epsilons=None)[0], x, y, bs)


def _art_classifier(model):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                             clip_values=(0.0, 1.0), device_type="cpu")


def cw_art(model, x, y, bs):
    from art.attacks.evasion import CarliniL2Method

    atk = CarliniL2Method(_art_classifier(model), confidence=CW["kappa"], learning_rate=CW["step_size"],
                          binary_search_steps=CW["binary_search_steps"], max_iter=CW["steps"],
                          initial_const=CW["initial_const"], batch_size=bs, verbose=False)
    return torch.from_numpy(atk.generate(x.numpy(), y=y.numpy()))


# -- DeepFool --------------------------------------------------------------------------------
def df_robustlab(model, x, y, bs):
    atk = rl.attacks.DeepFool("l2", seed=0, **DF)
    return _batched(lambda a, b: atk.attack(model, a, b).x_adv, x, y, bs)


def df_torchattacks(model, x, y, bs):
    import torchattacks

    atk = torchattacks.DeepFool(model, steps=DF["steps"], overshoot=DF["overshoot"])
    return _batched(lambda a, b: atk(a, b), x, y, bs)


def df_foolbox(model, x, y, bs):
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    atk = fb.attacks.L2DeepFoolAttack(steps=DF["steps"], candidates=DF["candidates"], overshoot=DF["overshoot"])
    return _batched(lambda a, b: atk(fmodel, a, b, epsilons=None)[0], x, y, bs)


def df_art(model, x, y, bs):
    from art.attacks.evasion import DeepFool

    atk = DeepFool(_art_classifier(model), max_iter=DF["steps"], epsilon=DF["overshoot"], nb_grads=DF["candidates"],
                   batch_size=bs, verbose=False)
    return torch.from_numpy(atk.generate(x.numpy()))


# -- standard vs AutoAttack ------------------------------------------------------------------
def standard_robustlab(model, x, y, bs):
    atk = rl.attacks.standard(rl.ThreatModel("linf", EPS), seed=0)
    res = rl.attacks.AttackResult.concat([atk.attack(model, x[i : i + bs], y[i : i + bs]) for i in range(0, len(y), bs)])
    return res


def standard_autoattack(model, x, y, bs):
    from pyautoattack import AutoAttack

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("auto-attack").setLevel(logging.DEBUG)  # robust accuracy and time after each attack
    aa = AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=0, device="cpu")
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=bs)  # (x_adv, y_adv)
    return x_adv


def run_part(name, runners, model, x, y, bs, only, subset=None):
    """``subset``: {lib: n} runs that library (and robustlab again, for the ratio) on the first n only."""
    rows = {}
    subset = subset or {}
    for lib, fn in list(runners.items()):
        if lib in subset:
            runners[f"robustlab (first {subset[lib]})"] = runners["robustlab"]
    for lib, fn in runners.items():
        if only and lib.split(" ")[0] not in only:
            continue
        k = subset.get(lib) or (subset.get("art") if lib.startswith("robustlab (first") else None) or len(y)
        try:
            x_adv, seconds = _timed(lambda: fn(model, x[:k], y[:k], bs))
        except ImportError as exc:
            print(f"{name}/{lib}: not installed ({exc}); skipped", flush=True)
            continue
        rows[lib] = _summary(model, x[:k], y[:k], x_adv, seconds)
        r = rows[lib]
        print(f"{name:<9}{lib:<14}success {100 * r['success_rate']:6.2f}%  median L2 {r['median_l2'] or float('nan'):.4f}"
              f"  {r['seconds']:8.1f} s", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="cw,deepfool,standard")
    ap.add_argument("--n", type=int, default=200, help="images for CW and DeepFool")
    ap.add_argument("--aa-n", type=int, default=200, help="images for standard vs AutoAttack")
    ap.add_argument("--art-n", type=int, default=200, help="images for ART's CW-L2 (it is slow)")
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--libs", default="", help="comma-separated subset of libraries (default all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--robust-model", default="runs/mnist-cnn-fgsmrs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    only = {s.strip() for s in args.libs.split(",") if s.strip()}
    out: dict = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "hardware": hardware(),
                 "command": " ".join(sys.argv), "results": {}}
    if "cw" in parts or "deepfool" in parts:
        model = mnist_model()
        x, y = first_test_images(args.n)
        if "cw" in parts:
            out["cw_config"] = CW
            out["results"]["cw-l2"] = run_part("cw-l2", {"robustlab": cw_robustlab, "torchattacks": cw_torchattacks,
                                                         "foolbox": cw_foolbox, "art": cw_art}, model, x, y, args.batch_size, only,
                                               subset={"art": args.art_n} if args.art_n < args.n else None)
        if "deepfool" in parts:
            out["deepfool_config"] = DF
            out["results"]["deepfool"] = run_part("deepfool", {"robustlab": df_robustlab, "torchattacks": df_torchattacks,
                                                               "foolbox": df_foolbox, "art": df_art}, model, x, y, args.batch_size, only)
    if "standard" in parts:
        model = rl.models.load(args.robust_model).eval()
        x, y = first_test_images(args.aa_n)
        rows = {}
        if not only or "robustlab" in only:
            res, seconds = _timed(lambda: standard_robustlab(model, x, y, args.batch_size))
            rows["robustlab"] = _summary(model, x, y, res.x_adv, seconds)
            rows["robustlab"]["max_linf"] = float((res.x_adv - x).flatten(1).abs().amax(1).max())
            bb = res.info["broken_by"]
            rows["robustlab"]["broken_by"] = {name: int((bb == i).sum()) for i, name in enumerate(res.info["attacks"])}
            print(f"standard  robustlab     robust acc {100 * rows['robustlab']['robust_accuracy']:.2f}%  {seconds:.1f} s "
                  f"broken by {rows['robustlab']['broken_by']}", flush=True)
        if not only or "autoattack" in only:
            try:
                x_adv, seconds = _timed(lambda: standard_autoattack(model, x, y, args.batch_size))
                rows["autoattack"] = _summary(model, x, y, x_adv, seconds)
                print(f"standard  autoattack    robust acc {100 * rows['autoattack']['robust_accuracy']:.2f}%  {seconds:.1f} s", flush=True)
            except ImportError as exc:
                print(f"standard/autoattack: not installed ({exc}); skipped")
        out["standard_model"] = args.robust_model
        out["results"]["standard-linf-0.3"] = rows
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
