"""Published training recipes as TOML files: ``robustlab train --recipe NAME`` (or a path).

Each file (next to this module) cites its paper in its comments and holds the settings of
``robustlab train``: ``arch``, ``dataset``, ``epochs``, ``batch_size``, ``optimizer``, ``lr``,
``momentum``, ``weight_decay``, ``schedule``, ``augment``, ``eps_warmup``, ``val_n``,
``robust_val``, and an ``[adversary]`` table with ``name`` and the adversary's parameters (the
names of :data:`robustlab.training.adversaries.ADVERSARIES`). Options given on the command line
win over the recipe's.

- ``pgd-at-preact-resnet18``: PGD-10 adversarial training, Rice, Wong & Kolter 2020;
- ``trades-wrn-34-10``: TRADES, Zhang et al. 2019;
- ``fgsm-rs-preact-resnet18``: fast FGSM-RS training, Wong, Rice & Kolter 2020.
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

#: The settings a recipe may hold (the ``robustlab train`` option names, ``_`` for ``-``).
KEYS = ("arch", "dataset", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule",
        "augment", "eps_warmup", "val_n", "robust_val", "adversary")


def names() -> tuple[str, ...]:
    """The recipes shipped with robustlab."""
    return tuple(sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml")))


def load(recipe: "str | os.PathLike[str]") -> dict[str, Any]:
    """The settings of a shipped recipe (by name) or a TOML file; unknown keys and an adversary
    table without ``name`` are errors naming the file."""
    text: str
    if isinstance(recipe, str) and recipe in names():
        where = f"recipe {recipe}"
        text = resources.files(__name__).joinpath(f"{recipe}.toml").read_text(encoding="utf-8")
    else:
        path = Path(recipe)
        if not path.is_file():
            raise FileNotFoundError(f"recipe {recipe!r} is neither a shipped recipe ({', '.join(names())}) nor a file")
        where, text = str(path), path.read_text(encoding="utf-8")
    try:
        settings = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where} is not valid TOML: {exc}") from exc
    unknown = sorted(set(settings) - set(KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {', '.join(unknown)}; a recipe holds {', '.join(KEYS)}")
    adversary = settings.get("adversary")
    if adversary is not None and (not isinstance(adversary, dict) or not isinstance(adversary.get("name"), str)):
        raise ValueError(f"{where}: [adversary] must be a table with a name (none, noise, fgsm-rs, pgd, trades, ...)")
    return settings


def adversary_settings(settings: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(adversary name, its parameters) of a loaded recipe; ``("none", {})`` without a table."""
    table = dict(settings.get("adversary") or {"name": "none"})
    return str(table.pop("name")), table
