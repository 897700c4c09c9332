"""``robustlab certify``: randomized-smoothing L2 certificates (Cohen et al. 2019) for a saved model,
or PixelDP certificates (Lecuyer et al. 2019) for a model trained with PixelDP noise.

    robustlab certify --model runs/mnist-small-cnn-noise0.25 --sigma 0.25 --n 100000 --n0 100 \\
        --alpha 0.001 --radii 0,0.25,0.5,0.75,1 [--n-images 500] [--adaptive] [--out cert.json]
    robustlab certify --model runs/mnist-pixeldp --method pixeldp --n 1000 --alpha 0.05 --radii 0,0.05,0.1

Prints certified accuracy per radius (with a 95% Wilson interval over the test images) and writes the
report (``report.json`` + ``index.html``: a schema-4 model section with the certificate, radii
``--radii``, the method and its settings) into the folder ``<out>`` without ``.json``, every file
atomically. ``<out>`` itself still holds the old JSON (settings, curve, one record per image), deprecated.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from robustlab.cli.evaluate import parse_floats


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "certify", help="randomized-smoothing L2 certificates (Cohen et al. 2019)",
        description="Certify a model with randomized smoothing (Cohen, Rosenfeld, Kolter 2019): print certified "
                    "accuracy per L2 radius and write per-image results as JSON.",
    )
    from robustlab.cli._common import add_memory_arg, add_model_args

    add_model_args(p)  # a saved robustlab model (trained with Gaussian noise) or your own
    p.add_argument("--sigma", type=float, default=None,
                   help="smoothing noise standard deviation in [0, 1] pixel units (required for smoothing)")
    p.add_argument("--method", choices=("smoothing", "pixeldp"), default="smoothing",
                   help="randomized smoothing (default) or PixelDP (Lecuyer et al. 2019): noise after the model's "
                        "normalised first layer, Proposition 1 with --n draws")
    dp = p.add_argument_group(
        "PixelDP (--method pixeldp)",
        "The model must have been trained with PixelDP noise (robustlab train --adversary pixeldp): the "
        "construction below defaults to the one its metadata records, and a different value is refused (the "
        "certificate would be for another classifier) unless --force-pixeldp.")
    dp.add_argument("--dp-eps", "--eps", dest="dp_eps", type=float, default=None,
                    help="DP epsilon, in (0, 1] for Gaussian noise (default: recorded; --eps is the old spelling)")
    dp.add_argument("--delta", type=float, default=None, help="DP delta (default: recorded; 0 for Laplace)")
    dp.add_argument("--L", type=float, default=None, help="construction attack size L in pixel units (default: recorded)")
    dp.add_argument("--mechanism", choices=("gaussian", "laplace"), default=None, help="default: recorded")
    dp.add_argument("--norm", choices=("l2", "l1"), default=None, help="attack norm (default: recorded)")
    dp.add_argument("--scores", choices=("softmax", "argmax"), default="softmax",
                    help="expected softmax with Hoeffding bounds, or argmax counts with Clopper-Pearson")
    dp.add_argument("--force-pixeldp", action="store_true",
                    help="certify a model not trained with PixelDP noise, or with other settings than it records: the "
                         "certificate is then for the network with its first layer rescaled to sensitivity <= 1 and "
                         "the noise added, not for the saved classifier (defaults: eps 1, delta 0.05, L 0.1, l2, "
                         "gaussian)")
    p.add_argument("--n0", type=int, default=100, help="samples to select the class (default 100)")
    p.add_argument("--n", "--samples", dest="n", type=int, default=100_000,
                   help="samples to estimate pA (n_max with --adaptive; --samples under torchrun)")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability per image (default 0.001)")
    p.add_argument("--radii", type=parse_floats, default=(0.0, 0.25, 0.5, 0.75, 1.0),
                   help="L2 radii of the table (and radii of interest with --adaptive)")
    method = p.add_mutually_exclusive_group()
    method.add_argument("--adaptive", action="store_true",
                        help="stop sampling per image once its radius is settled (union bound over looks)")
    method.add_argument("--two-class", action="store_true",
                        help="two-class radius sigma/2 (Phi^-1(pA) - Phi^-1(pB)) with simultaneous bounds")
    p.add_argument("--dataset", default=None,
                   help="a dataset name, a .npz file, an image folder or CIFAR binary files (default: the dataset in "
                        "the model's metadata)")
    p.add_argument("--split", default="test", choices=("train", "test"), help="dataset split (default test)")
    p.add_argument("--root", default=None, help="dataset folder")
    p.add_argument("--n-images", type=int, default=100, help="certify the first N images (default 100)")
    p.add_argument("--batch-size", type=int, default=1000, help="(image, noise) rows per forward pass")
    add_memory_arg(p)
    p.add_argument("--chunk", type=int, default=100, help="images per certify call (progress granularity)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--autocast", action="store_true", help="bf16 autocast fast path (off by default)")
    p.add_argument("--channels-last", action="store_true", help="channels_last inputs (fast path for convolutions)")
    p.add_argument("--out", default=None, help="JSON file (default out/certify/<model>.json)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the finished chunks of an interrupted run with the same arguments (kept in <out>.parts/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


#: The PixelDP options (flag -> argparse dest), named in the messages.
_DP_FLAGS = {"--dp-eps": "dp_eps", "--delta": "delta", "--L": "L", "--mechanism": "mechanism", "--norm": "norm",
             "--force-pixeldp": "force_pixeldp"}


def _pixeldp(args: argparse.Namespace, model: Any, *, verbose: bool = True) -> tuple[Any, dict]:
    """``(PixelDP network, what the report records)`` of a model trained with PixelDP noise, with
    the recorded construction (checked against the options; see the PixelDP option group).
    Prints what is certified."""
    import torch

    from robustlab.defenses.pixeldp import PixelDP, check_noise_layer, check_recorded

    meta = getattr(model, "metadata", None) or {}
    given = {"eps": args.dp_eps, "delta": args.delta, "L": args.L, "norm": args.norm, "mechanism": args.mechanism}
    flags = {"eps": "--dp-eps", "delta": "--delta", "L": "--L", "norm": "--norm", "mechanism": "--mechanism"}
    where, force, override = f"--model {args.model}", args.force_pixeldp, "pass --force-pixeldp"
    params, warnings = check_recorded(meta, given, model=where, force=force, flags=flags, override=override)
    pdp = PixelDP(model, **params.to_dict(), batch_size=args.batch_size, seed=args.seed)
    warnings += check_noise_layer(pdp, meta, model=where, force=force, override=override)
    with torch.no_grad():
        saved, used = float(pdp.saved_sensitivity()), float(pdp.layer_sensitivity())
    q = {"l2": "2", "l1": "1"}
    if verbose:
        for w in warnings:
            print(f"warning (--force-pixeldp): {w}")
        print(f"PixelDP: {pdp.mechanism} noise of scale {pdp.noise_scale:.4g} after {pdp.noise_layer} "
              f"({type(pdp._layer).__name__}); eps {pdp.eps:g}, delta {pdp.delta:g}, L {pdp.L:g} in {pdp.norm}; "
              f"first-layer sensitivity Delta_{{{q[pdp.norm]},{q[pdp.out_norm]}}} in input-pixel units: "
              f"{saved:.4g} as saved, {used:.4g} as certified (rescaled to <= 1)")
    return pdp, {**params.to_dict(), "noise_scale": pdp.noise_scale, "noise_layer": pdp.noise_layer,
                 "trained_with_pixeldp": "pixeldp" in meta, "forced": bool(force), "warnings": warnings,
                 "sensitivity_saved_weights": saved, "sensitivity": used}


def run(args: argparse.Namespace) -> int:
    from robustlab.cli._common import run_distributed

    return run_distributed(args, _run)  # under torchrun: the images shared out over the processes


def _run(args: argparse.Namespace, info) -> int:
    import contextlib

    from tqdm.auto import tqdm

    from robustlab import data
    from robustlab.cli._common import (check_model_data, check_out_file, dataset_name, fit_batch, load_model,
                                       resolve_device)
    from robustlab.cli._outputs import report_folder, write_outputs
    from robustlab.cli.evaluate import model_label
    from robustlab.certificates import Certificate
    from robustlab.defenses.smoothing import Smoothed
    from robustlab.evaluate.shards import UnitFiles, config_hash, counting_forwards, run_units, unit_seed

    for name in ("n_images", "chunk", "n0", "n", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(r < 0 for r in args.radii):
        raise ValueError(f"--radii must be >= 0, got {','.join(str(r) for r in args.radii)}")
    if not 0.0 < args.alpha < 1.0:
        raise ValueError(f"--alpha must be a probability in (0, 1), got {args.alpha}")
    device = info.device if info.distributed else resolve_device(args.device)
    method = "pixeldp" if args.method == "pixeldp" else "adaptive" if args.adaptive else \
        "two-class" if args.two_class else "cohen"
    if method == "pixeldp" and (args.adaptive or args.two_class):
        raise ValueError("--adaptive and --two-class are randomized-smoothing options; drop them with --method pixeldp")
    if method != "pixeldp" and args.sigma is None:
        raise ValueError("--sigma is required for randomized smoothing (or pass --method pixeldp)")
    if method != "pixeldp":
        given = [flag for flag, name in _DP_FLAGS.items() if getattr(args, name, None) not in (None, False)]
        if given:
            raise ValueError(f"{', '.join(given)} {'is a PixelDP option' if len(given) == 1 else 'are PixelDP options'}"
                             "; add --method pixeldp or drop it")
    out = Path(args.out) if args.out else Path("out") / "certify" / (model_label(args.model) + f"-{method}.json")
    check_out_file(out, "--out")  # before any sampling: a bad --out fails now
    folder = report_folder(out)
    model = load_model(args, device)
    name = dataset_name(args, model)
    images = data.load(name, args.split, args.root)
    check_model_data(model, images, device)
    args.batch_size = fit_batch(args, model, images.shape, device, grad=False)  # (image, noise) rows that fit
    images = images.subset(min(args.n_images, len(images.labels)))
    x_all, y = images.images, images.labels
    pixeldp_info: dict = {}
    if method == "pixeldp":
        smoothed, pixeldp_info = _pixeldp(args, model, verbose=info.is_main)
        args.sigma = smoothed.noise_scale  # recorded: the noise scale after the first layer
    else:
        smoothed = Smoothed(model, args.sigma, batch_size=args.batch_size, seed=args.seed, autocast=args.autocast,
                            channels_last=args.channels_last)
    t0 = time.perf_counter()
    chunks = list(range(0, len(y), args.chunk))

    def certify_chunk(u: int) -> dict:
        # chunk u's noise is seeded from (seed, u): the same on 1 or N processes
        x = x_all[chunks[u] : chunks[u] + args.chunk].to(device)
        seed = unit_seed(args.seed, u)
        if method == "pixeldp":
            c = smoothed.certify(x, args.n, args.alpha, scores=args.scores, seed=seed)
        elif method == "adaptive":
            c = smoothed.certify_adaptive(x, args.n0, args.n, args.alpha, radius=args.radii, seed=seed)
        elif method == "two-class":
            c = smoothed.certify_two_class(x, args.n0, args.n, args.alpha, seed=seed)
        else:
            c = smoothed.certify(x, args.n0, args.n, args.alpha, seed=seed)
        return c.to_tensors()

    config = {k: v for k, v in vars(args).items() if k not in ("func", "no_progress", "resume", "out", "device")}
    config.update(method=method, weights=getattr(model, "metadata", {}).get("weights_sha256"), n_images=len(y))
    parts_dir = out.parent / (out.name + ".parts")
    bar = tqdm(total=len(y), unit="img", desc="certify", disable=args.no_progress or not info.is_main)
    forwards = [0, 0.0]  # forward passes so far, last postfix time: progress inside a long chunk

    def tick() -> None:
        forwards[0] += 1
        if time.monotonic() - forwards[1] > 0.5:
            forwards[1] = time.monotonic()
            bar.set_postfix_str(f"{forwards[0]} forward passes", refresh=True)

    with counting_forwards(model, tick) if not bar.disable else contextlib.nullcontext():
        units = run_units(len(chunks), certify_chunk, UnitFiles(parts_dir, config_hash(config), args.resume),
                          done=lambda u: bar.update(min(args.chunk, len(y) - chunks[u])))
    bar.close()
    if not info.is_main:
        return 0
    seconds = time.perf_counter() - t0
    parts = [Certificate.from_tensors(t) for t in units]
    cert = Certificate.concat(parts)
    if method == "adaptive":
        cert.info["stop"] = {k: sum(p.info["stop"][k] for p in parts) for k in parts[0].info["stop"]}
    section = _section(args, method, model, images, cert, seconds, pixeldp_info, device)
    c = section.certificates[0]
    evals = c.options["evaluations_per_image"]

    print(f"{name} ({args.split}): {len(y)} images, sigma={args.sigma}, n0={args.n0}, n={args.n}"
          f"{' (n_max)' if method == 'adaptive' else ''}, alpha={args.alpha}, method={method}")
    print(f"{seconds / len(y):.3f} s per image, {evals:.0f} model evaluations per image on average, "
          f"{c.abstain.value:.2%} abstained")
    print(f"{'radius':>8}  {'certified accuracy':>18}  95% interval")
    for r, acc in zip(args.radii, c.certified_accuracy):
        print(f"{r:>8.3g}  {acc.value:>18.4f}  [{acc.ci_low:.4f}, {acc.ci_high:.4f}]")
    payload = _old_payload(args, section, cert, name, seconds, pixeldp_info)
    write_outputs(section, folder, f"robustlab certify: {method} on {section.name}", out, payload, parts=parts_dir,
                  note=f" ({info.world_size} processes)" if info.distributed else "")
    return 0


def _old_payload(args: argparse.Namespace, section: Any, cert: Any, name: str, seconds: float,
                 pixeldp_info: dict) -> dict:
    """The deprecated ``robustlab-certify`` JSON (one more release): the section's numbers, one record per image."""
    import torch

    c, method = section.certificates[0], section.suite["method"]
    y = torch.tensor(section.labels, dtype=torch.int64)
    correct = (cert.prediction == y) & ~cert.abstain
    per_image = [
        {"index": i, "label": int(y[i]), "prediction": int(cert.prediction[i]), "radius": float(cert.radius[i]),
         "abstain": bool(cert.abstain[i]), "correct": bool(correct[i]),
         "samples": int(cert.samples[i]) if cert.samples is not None else None,
         "count": int(cert.count[i]) if cert.count is not None else None,
         "p_lower": float(cert.p_lower[i]) if cert.p_lower is not None else None}
        for i in range(len(y))
    ]
    payload = {
        "format": "robustlab-certify", "format_version": 1,
        "model": str(args.model), "dataset": name, "split": args.split, "sigma": args.sigma, "n0": args.n0,
        "n": args.n, "alpha": args.alpha, "method": method, "seed": args.seed, "batch_size": args.batch_size,
        "device": section.device, "seconds": seconds, "seconds_per_image": seconds / len(y),
        "evaluations_per_image": c.options["evaluations_per_image"], "radii": list(args.radii),
        "certified_accuracy": [a.value for a in c.certified_accuracy],
        "certified_accuracy_ci95": [[a.ci_low, a.ci_high] for a in c.certified_accuracy],
        "per_image": per_image, "certificate": cert.to_dict(),
    }
    if method == "pixeldp":
        payload["pixeldp"] = pixeldp_info
    return payload


#: The certify methods -> (the report's method name, what the radius certifies).
_METHODS = {"cohen": ("smoothing", "smoothed"), "adaptive": ("smoothing-adaptive", "smoothed"),
            "two-class": ("smoothing-two-class", "smoothed"), "pixeldp": ("pixeldp", "smoothed")}


def _section(args: argparse.Namespace, method: str, model: Any, images: Any, cert: Any, seconds: float,
             pixeldp_info: dict, device: Any) -> Any:
    """The report's model section of this run: the certificate at ``--radii`` with the method's
    settings, and the base model's clean accuracy on the same images."""
    from robustlab.cli.evaluate import model_label
    from robustlab.evaluate.sections import CommandRun, Sections, cert_report, model_section
    from robustlab.models.metrics import predictions

    y = images.labels
    report_method, certifies = _METHODS[method]
    evals = float(cert.samples.double().mean()) if cert.samples is not None else float(args.n0 + args.n)
    options = {"sigma": args.sigma, "n0": args.n0, "n": args.n, "alpha": args.alpha, "seed": args.seed,
               "evaluations_per_image": evals}
    if method == "pixeldp":
        options = {"n": args.n, "alpha": args.alpha, "scores": args.scores, "seed": args.seed,
                   "evaluations_per_image": evals, **pixeldp_info}
    if method == "adaptive":
        options["stop"] = cert.info.get("stop")
    label = f"{report_method} (sigma {args.sigma:g})" if method != "pixeldp" else f"pixeldp (eps {pixeldp_info['eps']:g})"
    rep = cert_report(cert, y, args.radii, method=report_method, label=label, certifies=certifies, options=options,
                      seconds=seconds)
    run = CommandRun("certify", model_label(str(args.model)), model, images, len(y),
                     {"method": method, "split": args.split, "n_images": len(y)}, seed=args.seed,
                     batch_size=args.batch_size, device=str(device), seconds=seconds)
    return model_section(run, Sections(certificates=[rep]), y, predictions(model, (images.images, y), args.batch_size))
