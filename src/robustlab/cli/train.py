"""``robustlab train --dataset mnist --arch cnn --epochs N --out runs/mnist-cnn [--adversary ...]``.

The ``--adversary`` choices and their options (``--sigma``, ``--eps``, ``--steps``, ...) come from
the registry :data:`robustlab.training.adversaries.ADVERSARIES`, so an adversary registered
there is offered here without editing this module.

Validation: ``--val-n N`` / ``--val-split F`` hold out N (or a fraction F of the) training images,
chosen by a permutation seeded with ``--seed``, to pick the best epoch; the test set is then
only evaluated once at the end. Without them the test set is monitored every epoch and the last
epoch is kept (choosing an epoch on the test set would bias its accuracy).

Many processes: ``torchrun --nproc_per_node N -m robustlab train ...`` runs the same command
data-parallel (DDP; gloo on the CPU, nccl with ``--device cuda``, one GPU per process);
``--batch-size`` is the global batch. Only rank 0 prints and writes ``--out``; ``--resume``
(which may always be given: with no checkpoint it starts afresh) makes every rank continue from
the last checkpoint, also after a torchrun ``--max-restarts`` restart. See ``docs/training.md``.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from robustlab.cli.options import (nonnegative_float, nonnegative_int, positive_float, positive_int, probability,
                                   unit_interval)

#: Adversary parameters renamed so that one option means one thing in every subcommand: the old flag.
_OLD_FLAGS = {"clean_weight": ("--alpha",)}

#: How ``robustlab train`` parses the adversaries' numeric parameters (robustlab.training.base.Param):
#: by name, else by type (counts >= 1, other numbers >= 0), so a bad value is an error naming the flag.
PARAM_TYPES: dict[str, Callable[[str], Any]] = {
    "eps": nonnegative_float, "steps": positive_int, "step_size": positive_float, "beta": nonnegative_float,
    "sigma": positive_float, "clean_weight": unit_interval, "kappa_start": unit_interval, "kappa_end": unit_interval,
    "warmup": unit_interval, "ramp": unit_interval, "max_norm": positive_float, "temperature": positive_float,
    "dp_eps": positive_float, "delta": unit_interval, "L": positive_float,
}
_BY_TYPE: dict[Any, Callable[[str], Any]] = {int: positive_int, float: nonnegative_float}


def param_type(param: Any) -> Callable[[str], Any]:
    """The command-line parser of an adversary parameter (its own ``type`` when not a number)."""
    return PARAM_TYPES.get(param.name) or _BY_TYPE.get(param.type, param.type)


def register(subparsers: "argparse._SubParsersAction[Any]") -> None:
    import robustlab.defenses  # noqa: F401  (defended models register their training adversaries: pixeldp)
    from robustlab.training.adversaries import ADVERSARIES, cli_params
    from robustlab.training.loop import OPTIMIZERS, SCHEDULES

    p = subparsers.add_parser(
        "train", help="train a model (standard, noise or adversarial training)",
        description="Train a model on a dataset and save it (safetensors + metadata.json) with per-epoch "
                    "checkpoints in --out.",
    )
    from robustlab import recipes
    from robustlab.training.augment import AUGMENTATIONS
    from robustlab.models.registry import architectures

    from robustlab.cli._common import SHARED, _Store, add_option

    p.add_argument("--recipe", default=None,
                   help=f"a published recipe ({', '.join(recipes.names())}) or a TOML file of these options "
                        "(src/robustlab/recipes/); options given here win over it")
    add_option(p, "dataset", default=None,
               note="with both splits: a .npz with x_train/y_train/x_test/y_test, an image folder with train/ and "
                    "test/, the CIFAR binary files of both; required without --recipe")
    p.add_argument("--arch", default=None, help=f"{', '.join(architectures())} (required without --recipe)")
    add_option(p, "out", required=True, note="a folder: the final model, checkpoint/, best/")
    p.add_argument("--epochs", type=positive_int, default=None, help="default 2")
    add_option(p, "batch_size", default=None, note="the global batch under torchrun; default 128")
    p.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default=None,
                   help="adam (default; lr 1e-3, no weight decay) or sgd (lr 0.1, Nesterov momentum, weight decay 5e-4)")
    p.add_argument("--lr", type=positive_float, default=None, help="base learning rate (default per optimizer)")
    p.add_argument("--momentum", type=unit_interval, default=None, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=nonnegative_float, default=None, help="default per optimizer")
    p.add_argument("--schedule", choices=SCHEDULES, default=None, help="learning-rate schedule, per step (default cosine)")
    p.add_argument("--augment", choices=AUGMENTATIONS, default=None,
                   help="crop-flip: 4-pixel padded random crops and horizontal flips (the CIFAR standard)")
    add_option(p, "seed", default=0, note="also of the validation split; default 0")
    adv = p.add_argument_group("adversary (registry: robustlab.training.adversaries.ADVERSARIES)")
    adv.add_argument("--adversary", choices=tuple(ADVERSARIES), default=None,
                     help="; ".join(f"{name}: {e.help}" for name, e in ADVERSARIES.items()))
    for param in cli_params().values():
        defaults = _defaults(ADVERSARIES, param.name)
        if param.name in SHARED:  # the one spelling, type and help of the shared vocabulary (--dp-eps)
            add_option(adv, param.name, default=None, note=defaults)
        else:
            old = _OLD_FLAGS.get(param.name, ())  # the old spellings keep working for one release, with a note
            adv.add_argument(param.flag, *old, dest=param.name, type=param_type(param), default=None,
                             help=f"{param.help} [{defaults}]", **({"action": _Store, "deprecated": old} if old else {}))
    adv.add_argument("--eps-warmup", type=nonnegative_float, default=None,
                     help="epochs of linear eps warm-up from 0 (default 0)")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-n", type=positive_int, default=None, help="hold out N training images for validation")
    val.add_argument("--val-split", type=probability, default=None,
                     help="hold out this fraction of the training images")
    p.add_argument("--robust-val", type=nonnegative_int, default=None, metavar="N",
                   help="adversarial training: PGD robust accuracy on the first N validation images after every "
                        "epoch picks the best epoch and stops on catastrophic overfitting (0: off; default 500)")
    p.add_argument("--robust-val-steps", type=positive_int, default=10, help="PGD steps of the robust validation")
    p.add_argument("--train-n", type=positive_int, default=None,
                   help="train on the first N training images (default all)")
    add_option(p, "root", default=None)
    add_option(p, "device", default=None)
    p.add_argument("--amp", choices=("bf16",), default=None,
                   help="bfloat16 autocast for the training passes (GPU speed-up; works on CPU, slowly)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (GPU convolutions)")
    p.add_argument("--sync-bn", action="store_true",
                   help="distributed CUDA runs: SyncBatchNorm, batch statistics over the global batch")
    add_option(p, "resume", note="from the last checkpoint in --out; with none, a fresh start")
    add_option(p, "no_progress")
    p.set_defaults(func=run)


def _defaults(registry: dict, name: str) -> str:
    """'pgd 10, trades 10': the default of parameter ``name`` for each adversary that takes it."""
    shown = []
    for adv_name, entry in registry.items():
        for q in entry.params:
            if q.name == name:
                shown.append(f"{adv_name}: {'required' if q.required else ('auto' if q.default is None else q.default)}")
    return ", ".join(shown)


def _holdout(train_set: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    """(train, validation) with the validation images chosen by a permutation seeded by ``--seed``."""
    import torch

    n = len(train_set)
    if args.val_split is not None:
        if not 0.0 < args.val_split < 1.0:
            raise ValueError(f"--val-split must be in (0, 1), got {args.val_split}")
        k = int(round(args.val_split * n))
    else:
        k = int(args.val_n)
    if not 1 <= k < n:
        raise ValueError(f"the validation hold-out must leave training images: got {k} of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(args.seed)))
    val_idx, train_idx = order[:k].sort().values, order[k:].sort().values
    return train_set.subset(train_idx), train_set.subset(val_idx)


def _check_adversary_flags(args: argparse.Namespace) -> None:
    """An adversary option given for an adversary that does not take it is an error, not ignored."""
    from robustlab.training.adversaries import ADVERSARIES, cli_params

    taken = {p.name for p in ADVERSARIES[args.adversary].params}
    for name, param in cli_params().items():
        if name not in taken and getattr(args, name, None) is not None:
            users = ", ".join(n for n, e in ADVERSARIES.items() if any(p.name == name for p in e.params))
            raise ValueError(f"{param.flag} does not apply to --adversary {args.adversary} (it is an option of {users})")


#: The defaults of the options a recipe may set (None on the parser, so a recipe can fill them).
DEFAULTS = {"epochs": 2, "batch_size": 128, "optimizer": "adam", "momentum": 0.9, "schedule": "cosine",
            "adversary": "none", "eps_warmup": 0.0, "robust_val": 500}


def apply_recipe(args: argparse.Namespace) -> None:
    """Fill the options not given on the command line from ``--recipe``, then from :data:`DEFAULTS`."""
    from robustlab import recipes

    settings: dict = {}
    if args.recipe is not None:
        settings = recipes.load(args.recipe)
        name, params = recipes.adversary_settings(settings)
        if args.adversary is None or args.adversary == name:
            settings["adversary"] = name
            for key, value in params.items():
                if getattr(args, key, None) is None:
                    setattr(args, key, value)
        else:
            settings.pop("adversary")  # --adversary replaces the recipe's, parameters and all
    for key in recipes.KEYS:
        if getattr(args, key, None) is None:
            setattr(args, key, settings.get(key, DEFAULTS.get(key)))
    if args.dataset is None or args.arch is None:
        raise ValueError("--dataset and --arch are required (or a --recipe that names them)")


def run(args: argparse.Namespace) -> int:
    from robustlab.cli._common import check_out_dir, resolve_device, run_distributed
    from robustlab.training.adversaries import from_args

    apply_recipe(args)
    _check_adversary_flags(args)
    adversary = from_args(args.adversary, args)  # parameter errors before any data is read
    if args.device is not None:
        resolve_device(args.device)
    check_out_dir(args.out)  # a bad --out fails now, not after training
    return run_distributed(args, lambda a, info: _run(a, adversary, info))


def _run(args: argparse.Namespace, adversary: Any, info: Any) -> int:
    from robustlab import data, models, training

    if args.arch.strip().lower().replace("_", "-") not in models.architectures():
        raise ValueError(f"unknown architecture {args.arch!r}; expected one of {', '.join(models.architectures())}")
    train_set = data.load(args.dataset, "train", args.root)
    test_set = data.load(args.dataset, "test", args.root)
    if train_set.split != "train":
        raise ValueError(f"--dataset {args.dataset} has no train/test split (expected train/ and test/ sub-folders, "
                         "x_train/x_test arrays in a .npz, or the CIFAR binary files of both splits)")
    if args.train_n is not None:
        if args.train_n < 1:
            raise ValueError(f"--train-n must be >= 1, got {args.train_n}")
        train_set = train_set.subset(args.train_n)
    held_out = args.val_n is not None or args.val_split is not None
    if held_out:
        train_set, val_set = _holdout(train_set, args)
    else:
        val_set = test_set
    model = models.create(args.arch, train_set, seed=args.seed)
    threat = getattr(adversary, "threat", None)
    evaluate_fn = None
    if threat is not None and args.robust_val > 0:
        if args.robust_val_steps < 1:
            raise ValueError(f"--robust-val-steps must be >= 1, got {args.robust_val_steps}")
        evaluate_fn = training.robust_validation(threat, n=args.robust_val, steps=args.robust_val_steps, seed=args.seed)
    result = training.train(
        model, train_set, adversary=adversary, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule, val_data=val_set,
        evaluate_fn=evaluate_fn,
        test_data=test_set, select_best=held_out, out=args.out, resume=args.resume, seed=args.seed,
        eps_warmup_epochs=args.eps_warmup, progress=not args.no_progress,
        device=info.device if info.distributed else args.device, amp=args.amp, channels_last=args.channels_last,
        sync_batchnorm=args.sync_bn, augment=args.augment,
        metadata={"validation": "held-out training images" if held_out else "test set (monitoring only)",
                  **({"recipe": str(args.recipe)} if args.recipe else {})},
    )
    if not info.is_main:
        return 0
    m = result.metrics
    n_epochs = len(result.history)
    per_epoch = m["train_seconds"] / max(n_epochs, 1)
    print(f"saved {args.out}: epoch {result.best_epoch} of {n_epochs}, test accuracy {m['test_accuracy']:.4f}, "
          f"{m['train_seconds']:.0f} s of training ({per_epoch:.1f} s per epoch)")
    return 0
