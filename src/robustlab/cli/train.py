"""``robustlab train --dataset mnist --arch cnn --epochs N --out runs/mnist-cnn [--adversary ...]``."""

from __future__ import annotations

import argparse
import logging
from typing import Callable

ADVERSARY_HELP = "none (standard), noise (Gaussian, --sigma), fgsm-reg, fgsm-rs, pgd, trades, mart"


def _adversary(args: argparse.Namespace):
    from robustlab import ThreatModel, defenses

    name = args.adversary
    if name == "none":
        return None
    if name == "noise":
        return defenses.GaussianNoise(args.sigma)
    if args.eps is None:
        raise ValueError(f"--adversary {name} needs --eps (and --norm, default linf)")
    tm = ThreatModel(args.norm, args.eps)
    makers: dict[str, Callable] = {
        "fgsm-reg": lambda: defenses.FGSMRegularized(tm, alpha=args.alpha),
        "fgsm-rs": lambda: defenses.FGSMRS(tm, step=args.step_size),
        "pgd": lambda: defenses.PGDAdversary(tm, steps=args.steps, step_size=args.step_size),
        "trades": lambda: defenses.TRADES(tm, beta=args.beta, steps=args.steps, step_size=args.step_size),
        "mart": lambda: defenses.MART(tm, beta=args.beta, steps=args.steps, step_size=args.step_size),
    }
    return makers[name]()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model (standard, noise or adversarial training)")
    p.add_argument("--dataset", required=True, help="digits, mnist, fashion-mnist, cifar10")
    p.add_argument("--arch", required=True, help="mlp, cnn, small-cnn, resnet18")
    p.add_argument("--out", required=True, help="output directory (model + checkpoints)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--schedule", choices=("cosine", "step", "onecycle", "constant"), default="cosine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adversary", choices=("none", "noise", "fgsm-reg", "fgsm-rs", "pgd", "trades", "mart"), default="none",
                   help=ADVERSARY_HELP)
    p.add_argument("--sigma", type=float, default=0.25, help="noise level for --adversary noise")
    p.add_argument("--norm", default="linf")
    p.add_argument("--eps", type=float, default=None)
    p.add_argument("--steps", type=int, default=10, help="PGD steps for pgd/trades/mart")
    p.add_argument("--step-size", type=float, default=None)
    p.add_argument("--alpha", type=float, default=0.5, help="clean-loss weight for fgsm-reg")
    p.add_argument("--beta", type=float, default=6.0, help="robust-loss weight for trades/mart")
    p.add_argument("--eps-warmup", type=float, default=0.0, help="epochs of linear eps warm-up")
    p.add_argument("--val-n", type=int, default=None, help="validate on the first N test images (default all)")
    p.add_argument("--train-n", type=int, default=None, help="train on the first N training images (default all)")
    p.add_argument("--root", default=None, help="dataset folder (default: $ROBUSTLAB_DATA, cache, offline sources)")
    p.add_argument("--device", default=None)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustlab import data, defenses, models

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    adversary = _adversary(args)
    train_set = data.load(args.dataset, "train", args.root)
    test_set = data.load(args.dataset, "test", args.root)
    if args.train_n:
        train_set = train_set.subset(args.train_n)
    if args.val_n:
        test_set = test_set.subset(args.val_n)
    model = models.create(args.arch, train_set, seed=args.seed)
    result = defenses.train(
        model, train_set, adversary=adversary, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
        lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule, val_data=test_set, out=args.out,
        resume=args.resume, seed=args.seed, eps_warmup_epochs=args.eps_warmup, progress=not args.no_progress,
        device=args.device,
    )
    acc = result.metrics.get("val_accuracy")
    print(f"saved {args.out}: best epoch {result.best_epoch}, test accuracy {acc:.4f}, "
          f"{result.metrics['train_seconds']:.0f} s of training")
    return 0
