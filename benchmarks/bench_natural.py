"""Natural images and models trained elsewhere (issue 23; docs/benchmarks/natural-images.md).

Three parts, each runnable alone (``--part``):

- ``minnorm``: pyautoattack's CIFAR-10 ResNet-18 (``catalog:autoattack-resnet18``) on
  ``cifar10-sample``: clean accuracy, and the minimal L2 distances of Carlini-Wagner, DDN and FMN
  (median over the correctly classified images, success rate, time) next to Foolbox's (CW, DDN,
  FMN) and torchattacks' (CW; it has no DDN or FMN) on the same model, images and budgets.
- ``vnncomp``: the VNN-COMP 2021 ResNet-2B and ResNet-4B (``catalog:vnncomp-resnet2b/4b``,
  fetched ``--from`` the benchmark folder) on the CIFAR-10 test images their properties are
  centred on. Each VNNLIB box is ``[clip(x - eps), clip(x + eps)]`` in normalised units, so the
  image is recovered from the unclipped side of every coordinate (``lo * std + mean + eps``, or
  ``hi * std + mean - eps`` where ``x - eps`` was clipped at 0), rounded to k/255 and checked to
  reproduce the box; the label is the one the property protects. Then robustlab's ``standard``
  vs pyautoattack's ``standard`` at 2/255 and 8/255 (robust accuracy, time ratio), and IBP, CROWN
  and alpha-CROWN verified accuracy at each network's property radius (``robustlab.verify.certify``;
  2/255 for ResNet-2B, 1/255 for ResNet-4B, as in VNN-COMP). ``--vnn-nets`` picks the networks;
  each network's result is merged into the ``vnncomp`` entry of ``--out``, so they can run apart.
- ``imagenet``: ``robustlab evaluate --suite quick`` on ``imagenet-sample`` (3x224x224) with a
  random-weight ``resnet18-imagenet`` whose labels are its own predictions (so every image is
  attacked): wall time and peak memory (the child process's maximum resident set) of the CLI.

Run: ``flock /tmp/robustlab-heavy.lock python benchmarks/bench_natural.py --out benchmarks/results/natural.json``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import robustlab as rl
from robustlab.models import catalog

VNN = Path(os.environ.get("VNNCOMP2021", "/work/shared/vnncomp2021")) / "cifar10_resnet"  # the benchmark folder
CW = {"steps": 50, "binary_search_steps": 3, "lr": 0.01, "initial_const": 1.0, "kappa": 0.0}
STEPS = 100  # DDN and FMN
VNN_NETS = {"resnet2b": ("vnncomp-resnet2b", 2 / 255, 48), "resnet4b": ("vnncomp-resnet4b", 1 / 255, 24)}


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _l2_stats(model, x, y, x_adv, seconds):
    """Median L2 distance over the successful adversarials of correctly classified images (inf if
    fewer than half succeed), success rate, time."""
    with torch.no_grad():
        ok = model(x).argmax(1) == y
        fooled = (model(x_adv).argmax(1) != y) & ok
    d = (x_adv - x).flatten(1).norm(dim=1)
    dist = torch.where(fooled, d, torch.full_like(d, float("inf")))[ok]
    med = float(dist.median()) if len(dist) else float("nan")
    return {"median_l2": med, "success": float(fooled.sum()) / max(int(ok.sum()), 1), "seconds": round(seconds, 2),
            "n_correct": int(ok.sum())}


def _foolbox_fmn_projected(fb):
    """Foolbox 3.3.4's ``L2FMNAttack`` with its L2-ball projection repaired.

    Its ``project`` scales ``x - x0`` by ``min(1, norms / norms)`` (always 1, and of the norm of
    ``x`` rather than of ``x - x0``), so the attack never shrinks onto its epsilon ball and returns
    its first adversarial iterate (L2 = ``max_stepsize`` = 1.0). Here: ``min(1, eps / ||x - x0||)``.
    """
    import eagerpy as ep
    from foolbox.devutils import atleast_kd, flatten

    class L2FMNProjected(fb.attacks.L2FMNAttack):
        def project(self, x, x0, epsilon):
            norms = ep.maximum(flatten(x - x0).norms.l2(axis=-1), 1e-12)
            return x0 + (x - x0) * atleast_kd(ep.minimum(1, epsilon / norms), x.ndim)

    return L2FMNProjected


def part_minnorm(args) -> dict:
    import foolbox as fb
    import torchattacks

    model = catalog.load("autoattack-resnet18")
    d = rl.data.load("cifar10-sample")
    x, y = d.images[: args.n], d.labels[: args.n]
    CW["binary_search_steps"], CW["steps"] = args.cw_search, args.cw_steps
    STEPS = args.steps  # noqa: N806 (the module default, overridden per run)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    out: dict = {"clean_accuracy": clean, "n": len(y), "cw": CW, "steps": STEPS, "results": {}}
    runs = {
        "cw-l2": {
            "robustlab": lambda: rl.attacks.CarliniWagner("l2", seed=0, **CW).attack(model, x, y).x_adv,
            "foolbox": lambda: fb.attacks.L2CarliniWagnerAttack(
                binary_search_steps=CW["binary_search_steps"], steps=CW["steps"], stepsize=CW["lr"],
                confidence=CW["kappa"], initial_const=CW["initial_const"], abort_early=True)(fmodel, x, y, epsilons=None)[0],
            "torchattacks (no binary search)": lambda: torchattacks.CW(
                model, c=CW["initial_const"], kappa=CW["kappa"], steps=CW["steps"] * CW["binary_search_steps"],
                lr=CW["lr"])(x, y),
        },
        "ddn": {
            "robustlab": lambda: rl.attacks.registry.get("ddn", "l2", steps=STEPS, seed=0).attack(model, x, y).x_adv,
            "foolbox": lambda: fb.attacks.DDNAttack(steps=STEPS)(fmodel, x, y, epsilons=None)[0],
        },
        "fmn": {
            "robustlab": lambda: rl.attacks.registry.get("fmn", "l2", steps=STEPS, seed=0).attack(model, x, y).x_adv,
            "foolbox": lambda: fb.attacks.L2FMNAttack(steps=STEPS)(fmodel, x, y, epsilons=None)[0],
            "foolbox (L2 projection repaired)": lambda: _foolbox_fmn_projected(fb)(steps=STEPS)(
                fmodel, x, y, epsilons=None)[0],
        },
    }
    for attack, libs in runs.items():
        out["results"][attack] = {}
        for lib, fn in libs.items():
            x_adv, s = _timed(fn)
            out["results"][attack][lib] = r = _l2_stats(model, x, y, x_adv.detach(), s)
            print(f"{attack:6s} {lib:32s} median L2 {r['median_l2']:.4f}  success {100 * r['success']:.0f}%  "
                  f"{r['seconds']:.1f} s", flush=True)
    return out


_ASSERT = re.compile(r"\(assert \((<=|>=) X_(\d+) ([-0-9.e]+)\)\)")


def vnnlib_image(path: Path, eps: float, mean, std) -> tuple[torch.Tensor, int]:
    """The CIFAR-10 image (3, 32, 32) in [0, 1] a property's box is centred on, and its label."""
    text = path.read_text()
    label = int(re.search(r"property with label: (\d+)", text).group(1))
    lo, hi = np.zeros(3072), np.zeros(3072)
    for op, i, v in _ASSERT.findall(text):
        (hi if op == "<=" else lo)[int(i)] = float(v)
    m = np.repeat(np.asarray(mean), 1024)
    s = np.repeat(np.asarray(std), 1024)
    lo_px, hi_px = lo * s + m, hi * s + m
    x = np.where(lo_px > 1e-6, lo_px + eps, hi_px - eps)  # the side that was not clipped
    x = np.clip(np.round(x * 255) / 255, 0, 1)
    back_lo, back_hi = (np.clip(x - eps, 0, 1) - m) / s, (np.clip(x + eps, 0, 1) - m) / s
    if max(np.abs(back_lo - lo).max(), np.abs(back_hi - hi).max()) > 1e-4:
        raise ValueError(f"{path}: the recovered image does not reproduce the box")
    return torch.tensor(x, dtype=torch.float32).reshape(3, 32, 32), label


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def part_vnncomp(args) -> dict:
    from pyautoattack import AutoAttack

    out: dict = {}
    for folder in args.vnn_nets.split(","):
        if folder not in VNN_NETS:
            raise SystemExit(f"--vnn-nets: unknown network {folder!r} (known: {', '.join(VNN_NETS)})")
        name, prop_eps, n = VNN_NETS[folder]
        n = min(n, args.vnn_n)
        model = catalog.load(name, source=VNN)
        e = catalog.entry(name)
        files = [VNN / "vnnlib_properties_pgd_filtered" / f"{folder}_pgd_filtered" / f"prop_{i}_eps_{prop_eps:.3f}.vnnlib"
                 for i in range(n)]
        pairs = [vnnlib_image(f, prop_eps, e.mean, e.std) for f in files]
        x = torch.stack([p[0] for p in pairs])
        y = torch.tensor([p[1] for p in pairs])
        res: dict = {"n": n, "property_eps": prop_eps, "clean": _accuracy(model, x, y), "attacks": {}, "verified": {}}
        for eps in (2 / 255, 8 / 255):
            tm = rl.ThreatModel("linf", eps)
            r, t_rl = _timed(lambda: rl.attacks.standard(tm, seed=0).attack(model, x, y))
            aa = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0, device="cpu")
            x_aa, t_aa = _timed(lambda: aa.run_standard_evaluation(x, y, batch_size=n))
            x_aa = x_aa[0] if isinstance(x_aa, tuple) else x_aa
            res["attacks"][f"{eps * 255:.0f}/255"] = row = {
                "robustlab_standard": float(r.robust_accuracy), "autoattack_standard": _accuracy(model, x_aa, y),
                "robustlab_s": round(t_rl, 1), "autoattack_s": round(t_aa, 1), "time_ratio": round(t_aa / t_rl, 2)}
            print(f"{name} eps {eps * 255:.0f}/255: robustlab standard {100 * row['robustlab_standard']:.1f}% "
                  f"({t_rl:.0f} s), AutoAttack {100 * row['autoattack_standard']:.1f}% ({t_aa:.0f} s)", flush=True)
        tm = rl.ThreatModel("linf", prop_eps)  # the radius the properties ask to prove
        for method in args.methods.split(","):
            k = n if method != "alpha-crown" else min(n, args.alpha_n)
            cert, t = _timed(lambda: rl.verify.certify(model, x[:k], y[:k], tm, method=method))
            acc = float((~cert.abstain).float().mean())
            res["verified"][method] = {"verified": acc, "n": k, "eps": prop_eps, "seconds": round(t, 1)}
            print(f"{name} {method} at {prop_eps * 255:.0f}/255: verified {100 * acc:.1f}% of {k} ({t:.0f} s)",
                  flush=True)
        out[name] = res
    return out


def part_imagenet(args) -> dict:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = rl.models.create("resnet18-imagenet", "imagenet-sample", seed=0).eval()
    d = rl.data.load("imagenet-sample")
    with torch.no_grad():
        own = model(d.images).argmax(1)  # labels = the random network's own predictions: every image is attacked
    rl.models.save(model, work / "resnet18-imagenet-random")
    np.savez(work / "imagenet-sample-own.npz", images=(d.images * 255).round().to(torch.uint8).numpy(),
             labels=own.numpy())
    cmd = [sys.executable, "-m", "robustlab", "evaluate", "--model", str(work / "resnet18-imagenet-random"),
           "--dataset", str(work / "imagenet-sample-own.npz"), "--suite", "quick", "--eps", args.imagenet_eps,
           "--n", str(args.imagenet_n), "--out", str(work / "report"), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # bytes (Linux reports KiB)
    print(proc.stdout[-2000:], proc.stderr[-2000:], flush=True)
    return {"command": " ".join(cmd), "returncode": proc.returncode, "seconds": round(seconds, 1),
            "peak_rss_bytes": int(peak), "n": args.imagenet_n, "eps": args.imagenet_eps, "stdout": proc.stdout[-3000:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", default="minnorm,vnncomp,imagenet")
    ap.add_argument("--methods", default="ibp,crown,alpha-crown")
    ap.add_argument("--n", type=int, default=20, help="cifar10-sample images for the minimal-norm attacks")
    ap.add_argument("--cw-search", type=int, default=3, help="CW binary-search steps")
    ap.add_argument("--cw-steps", type=int, default=50, help="CW Adam steps per search step")
    ap.add_argument("--steps", type=int, default=100, help="DDN and FMN steps")
    ap.add_argument("--vnn-n", type=int, default=48, help="at most this many properties per VNN-COMP network")
    ap.add_argument("--vnn-nets", default="resnet2b,resnet4b", help="VNN-COMP networks (comma-separated)")
    ap.add_argument("--alpha-n", type=int, default=48, help="images for alpha-CROWN (slow on the CPU)")
    ap.add_argument("--imagenet-n", type=int, default=20)
    ap.add_argument("--imagenet-eps", default="0.00392156862745098,0.00784313725490196")
    ap.add_argument("--work", default="out/bench-natural")
    ap.add_argument("--out", default="benchmarks/results/natural.json")
    args = ap.parse_args()
    path = Path(args.out)
    results: dict = json.loads(path.read_text()) if path.is_file() else {}
    results.pop("threads", None)  # recorded per run below (parts may run apart, with other settings)
    results["torch"] = torch.__version__
    for part in args.part.split(","):
        run = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": torch.get_num_threads(),
               "loadavg_at_start": [round(v, 2) for v in os.getloadavg()]}
        new = {"minnorm": part_minnorm, "vnncomp": part_vnncomp, "imagenet": part_imagenet}[part](args)
        if part == "vnncomp":  # one entry per network, each with its own run record
            results[part] = {**results.get(part, {}), **{k: {**v, "run": run} for k, v in new.items()}}
        else:
            results[part] = {**new, "run": run}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "imagenet"}, indent=1)[:4000])


if __name__ == "__main__":
    main()
