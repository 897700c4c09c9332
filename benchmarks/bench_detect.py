"""Detectors, input transformations, distillation and ensembles against non-adaptive and adaptive
attacks (issue 14), on a saved model:

    python benchmarks/bench_detect.py --model runs/mnist-cnn --eps 0.3 --n 200 --out benchmarks/results/detect_mnist.json

Sections (``--sections``, comma-separated; each is saved as soon as it finishes):

- ``threshold``: ``Threshold(0.5)``: robust accuracy under plain PGD vs BPDA-PGD, and the share of
  inputs where the defended model's input gradient is exactly zero (the masking evidence).
- ``transforms``: each transform (bit depth, median, JPEG, blur, Xie randomisation, rotation /
  scaling, MagNet reformer): clean accuracy, plain PGD vs BPDA / EOT-PGD robust accuracy.
- ``detectors``: squeeze, magnet, knn, lid: detection rate at 5% FPR, achieved FPR, ROC AUC and
  evasion rate vs FGSM, PGD, CW-L2, non-adaptive and adaptive (``robustlab.cli.detect``).
- ``distillation``: teacher and student at T (default 100) trained with the training loop (kept
  in ``--runs``); robust accuracy of the student under PGD-CE vs PGD on the CW logit margin and
  CW-L2 (median distance).
- ``ensembles``: three small-cnn members (different seeds, kept in ``--runs``), hard vs soft
  voting: clean and PGD / BPDA-PGD robust accuracy vs the members, transfer success between members.

Random transforms are scored by their expected accuracy over 10 draws. Writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import hardware  # noqa: E402

import robustlab as rl  # noqa: E402
from robustlab._io import atomic_write_text  # noqa: E402
from robustlab.attacks import BPDA, EOT, PGD, CarliniWagner  # noqa: E402
from robustlab.cli.detect import build_detector, detection_record, make_attack, run_attack  # noqa: E402
from robustlab.defenses import transforms as T  # noqa: E402
from robustlab.defenses.distillation import Distillation, Temperature  # noqa: E402
from robustlab.defenses.ensemble import Ensemble  # noqa: E402


def accuracy(model, x, y, draws: int = 1) -> float:
    with torch.no_grad():
        return float(torch.stack([(model(x).argmax(1) == y).float() for _ in range(draws)]).mean())


def robust(model, attack, x, y, draws: int = 1, batch: int = 100) -> float:
    xs = torch.cat([attack.attack(model, xb, yb).x_adv for xb, yb in zip(x.split(batch), y.split(batch))])
    return accuracy(model, xs, y, draws)


def section_threshold(model, x, y, args) -> dict:
    tm = rl.ThreatModel("linf", args.eps)
    d = T.Threshold(model, 0.5).eval()
    xr = x[:100].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(d(xr), y[:100]), xr)
    zero = float((g.flatten(1).abs().amax(1) == 0).float().mean())
    return {"clean": accuracy(d, x, y), "pgd": robust(d, PGD(tm, steps=args.steps, seed=0), x, y),
            "bpda_pgd": robust(d, BPDA(PGD(tm, steps=args.steps, seed=0)), x, y), "zero_gradient_share": zero,
            "undefended_pgd": robust(model, PGD(tm, steps=args.steps, seed=0), x, y)}


def section_transforms(model, x, y, args, train) -> dict:
    tm = rl.ThreatModel("linf", args.eps)
    ae = T.train_autoencoder(T.MagNetAutoencoder(x.shape[1], 8), train.images[: args.n_train], epochs=5,
                             batch_size=64, lr=3e-3, seed=0)
    defs = {"bitdepth1": T.BitDepth(model, 1), "median3": T.MedianFilter(model, 3), "jpeg50": T.JPEG(model, 50),
            "blur1": T.GaussianBlur(model, 1.0), "randomized": T.Randomized(model, 1.2, seed=0),
            "rotate30": T.RandomRotateScale(model, 30.0, (0.9, 1.1), seed=0), "reformer": T.Reconstruct(model, ae)}
    out = {}
    for name, d in defs.items():
        d.eval()
        draws = 10 if d.random else 1
        plain = PGD(tm, steps=args.steps, seed=0)
        adaptive = EOT(PGD(tm, steps=args.steps, seed=0), n=args.eot) if d.random else BPDA(PGD(tm, steps=args.steps, seed=0))
        t0 = time.perf_counter()
        out[name] = {"clean": accuracy(d, x, y, draws), "pgd": robust(d, plain, x, y, draws),
                     "adaptive": robust(d, adaptive, x, y, draws), "adaptive_attack": adaptive.name,
                     "differentiable": d.differentiable, "random": d.random}
        out[name]["seconds"] = time.perf_counter() - t0
        print(name, out[name], flush=True)
    return out


def section_detectors(model, x, y, args, train, test) -> list:
    fit_x = test.images[args.n : args.n + args.n_fit]
    plain = {}  # the non-adaptive attacks do not depend on the detector: run each once
    for aname in ("fgsm", "pgd", "cw-l2"):
        plain[aname] = run_attack(model, make_attack(aname, args.eps, steps=args.steps, seed=0), x, y)
    recs = []
    for dname in args.detectors.split(","):
        det = build_detector(dname, model, train.images[: args.n_train], train.labels[: args.n_train]).fit(fit_x, fpr=0.05)
        for aname in ("fgsm", "pgd", "cw-l2"):
            for adaptive in (False, True):
                if adaptive:
                    attack = make_attack(aname, args.eps, detector=det, steps=args.steps, l2_eps=args.l2_eps, seed=0)
                    res, seconds = run_attack(model, attack, x, y)
                else:
                    res, seconds = plain[aname]
                rec = detection_record(det, res, x)
                rec.pop("roc", None)
                rec.update(detector=dname, attack_name=aname, adaptive=adaptive, fit_fpr=det.fit_fpr, seconds=seconds)
                if aname == "cw-l2" and not adaptive:
                    ok = res.success & res.clean_correct
                    rec["median_l2"] = float(res.distance[ok].median()) if bool(ok.any()) else None
                print({k: rec.get(k) for k in ("detector", "attack_name", "adaptive", "detection_rate", "fpr", "auc",
                                               "evasion_rate", "seconds")}, flush=True)
                recs.append(rec)
    return recs


def _trained(folder: Path, make, train, adversary, epochs: int, seed: int):
    if (folder / "metadata.json").is_file():
        return rl.models.load(folder).eval()
    model = make(seed)
    rl.defenses.train(model, train, adversary=adversary, epochs=epochs, seed=seed, progress=False)
    rl.models.save(model, folder)
    return model.eval()


def section_distillation(x, y, args, train) -> dict:
    tm = rl.ThreatModel("linf", args.eps)
    arch = args.distill_arch

    def make(seed):
        return rl.models.create(arch, train, seed=seed)

    runs = Path(args.runs)
    tag = f"{args.dataset_tag}-{arch}-T{args.temperature:g}-e{args.distill_epochs}"
    teacher = _trained(runs / f"distill-teacher-{tag}", make, train, Temperature(args.temperature), args.distill_epochs, 0)
    student = _trained(runs / f"distill-student-{tag}", make, train, Distillation(teacher, args.temperature),
                       args.distill_epochs, 0)
    with torch.no_grad():
        scale = float(student(x[:100]).abs().amax(1).median())
    cw = CarliniWagner("l2", steps=100, binary_search_steps=5, initial_const=0.1, seed=0)
    res = rl.attacks.AttackResult.concat([cw.attack(student, xb, yb) for xb, yb in zip(x.split(100), y.split(100))])
    found = res.success & res.clean_correct
    return {"temperature": args.temperature, "arch": arch, "epochs": args.distill_epochs,
            "clean": accuracy(student, x, y), "median_max_logit": scale,
            "pgd_ce": robust(student, PGD(tm, steps=args.steps, loss="ce", seed=0), x, y),
            "pgd_cw": robust(student, PGD(tm, steps=args.steps, loss="cw", seed=0), x, y),
            "cw_l2_success": float(found.float().sum() / res.clean_correct.float().sum()),
            "cw_l2_median": float(res.distance[found].median()) if bool(found.any()) else None}


def section_ensembles(x, y, args, train) -> dict:
    tm = rl.ThreatModel("linf", args.eps)

    def make(seed):
        return rl.models.create("small-cnn", train, seed=seed)

    members = [_trained(Path(args.runs) / f"ens-{args.dataset_tag}-small-cnn-s{s}-e{args.ens_epochs}", make, train,
                        None, args.ens_epochs, s) for s in range(3)]
    out: dict = {"members": [], "transfer": []}
    adv = []
    for m in members:
        res = [PGD(tm, steps=args.steps, seed=0).attack(m, xb, yb) for xb, yb in zip(x.split(100), y.split(100))]
        xa = torch.cat([r.x_adv for r in res])
        adv.append(xa)
        out["members"].append({"clean": accuracy(m, x, y), "pgd": accuracy(m, xa, y)})
    for i, xa in enumerate(adv):  # transfer: accuracy of member j on member i's PGD examples
        out["transfer"].append([accuracy(m, xa, y) for m in members])
    for voting in ("hard", "soft"):
        e = Ensemble(members, voting=voting).eval()
        out[voting] = {"clean": accuracy(e, x, y), "pgd": robust(e, PGD(tm, steps=args.steps, seed=0), x, y),
                       "bpda_pgd": robust(e, BPDA(PGD(tm, steps=args.steps, seed=0)), x, y)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--eps", type=float, required=True)
    p.add_argument("--l2-eps", type=float, default=3.0)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--n-fit", type=int, default=500)
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--eot", type=int, default=10)
    p.add_argument("--detectors", default="squeeze,magnet,knn,lid")
    p.add_argument("--sections", default="threshold,transforms,detectors,distillation,ensembles")
    p.add_argument("--temperature", type=float, default=100.0)
    p.add_argument("--distill-arch", default="cnn")
    p.add_argument("--distill-epochs", type=int, default=2)
    p.add_argument("--ens-epochs", type=int, default=2)
    p.add_argument("--runs", default="runs/bench-detect")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = rl.models.load(args.model).eval()
    dataset = model.metadata["dataset"]
    args.dataset_tag = dataset
    test, train = rl.data.load(dataset, "test"), rl.data.load(dataset, "train")
    x, y = test.images[: args.n], test.labels[: args.n]
    out_path = Path(args.out)
    doc = json.loads(out_path.read_text()) if out_path.is_file() else {}
    doc.update({"format": "robustlab-bench-detect", "model": args.model, "dataset": dataset, "eps": args.eps,
                "n": args.n, "steps": args.steps, "hardware": hardware(), "machine_shared": True})
    for section in args.sections.split(","):
        t0 = time.perf_counter()
        if section == "threshold":
            res = section_threshold(model, x, y, args)
        elif section == "transforms":
            res = section_transforms(model, x, y, args, train)
        elif section == "detectors":
            res = section_detectors(model, x, y, args, train, test)
        elif section == "distillation":
            res = section_distillation(x, y, args, train)
        elif section == "ensembles":
            res = section_ensembles(x, y, args, train)
        else:
            raise SystemExit(f"unknown section {section!r}")
        doc[section] = res
        doc.setdefault("seconds", {})[section] = time.perf_counter() - t0
        print(section, json.dumps(res, default=str)[:2000], flush=True)
        atomic_write_text(out_path, json.dumps(doc, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
