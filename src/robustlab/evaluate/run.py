"""Run a suite over a dataset: stream batches, keep one record per sample, resume after a crash.

For every batch and every (eps, attack) pair the per-sample outcome (success, distance) is kept;
finished batches are written atomically to ``out/records/`` so ``resume=True`` skips them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from safetensors.torch import load_file, save as st_save
from torch import nn
from tqdm.auto import tqdm

from robustlab._checks import check_images, check_labels, check_logits
from robustlab._io import atomic_write_bytes, atomic_write_text
from robustlab.attacks import registry
from robustlab.attacks.base import eval_mode, model_device
from robustlab.evaluate import metrics
from robustlab.evaluate.suite import Suite, load_suite
from robustlab.models.metrics import as_tensors

log = logging.getLogger("robustlab.evaluate")
SCHEMA_VERSION = 1


@dataclass
class Evaluation:
    """Per-sample records and the metrics derived from them. ``to_dict`` is the JSON form."""

    suite: Suite
    labels: torch.Tensor
    clean_pred: torch.Tensor
    success: dict[tuple[float, str], torch.Tensor]
    distance: dict[tuple[float, str], torch.Tensor]
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def correct(self) -> torch.Tensor:
        return self.clean_pred == self.labels

    def robust_accuracy(self, eps: float, attack: Optional[str] = None) -> float:
        """Robust accuracy at ``eps`` against one attack, or the worst case over all (None)."""
        if attack is not None:
            return float(metrics.robust_mask(self.correct, self.success[(eps, attack)]).float().mean())
        return float(metrics.worst_case(self.correct, [self.success[(eps, a)] for a in self.suite.attacks]).float().mean())

    def to_dict(self) -> dict:
        per_eps = []
        for eps in self.suite.eps:
            row: dict[str, Any] = {"eps": eps, "attacks": {}}
            for a in self.suite.attacks:
                succ = self.success[(eps, a)]
                found = self.distance[(eps, a)].masked_fill(~(succ & self.correct), float("inf"))
                row["attacks"][a] = {
                    "robust_accuracy": metrics.rate(metrics.robust_mask(self.correct, succ)),
                    "distance": metrics.distance_summary(found),
                }
            worst = metrics.worst_case(self.correct, [self.success[(eps, a)] for a in self.suite.attacks])
            row["worst_case"] = metrics.rate(worst)
            per_eps.append(row)
        return {
            "schema": "robustlab-evaluation",
            "schema_version": SCHEMA_VERSION,
            "suite": self.suite.to_dict(),
            "n": int(self.labels.numel()),
            "clean_accuracy": metrics.rate(self.correct),
            "per_eps": per_eps,
            "seconds": self.seconds,
            "info": self.info,
        }

    def save(self, path: "str | os.PathLike[str]") -> Path:
        """Write the JSON form atomically (``path`` is a file, or a folder for ``evaluation.json``)."""
        path = Path(path)
        if path.suffix != ".json":
            path = path / "evaluation.json"
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def table(self) -> str:
        """A plain-text table: clean accuracy, then robust accuracy per eps and attack."""
        head = f"{'eps':>8}  " + "  ".join(f"{a:>10}" for a in self.suite.attacks) + f"  {'worst':>10}"
        lines = [f"clean accuracy: {float(self.correct.float().mean()):.4f} (n={self.labels.numel()})", head]
        for eps in self.suite.eps:
            cells = "  ".join(f"{self.robust_accuracy(eps, a):>10.4f}" for a in self.suite.attacks)
            lines.append(f"{eps:>8.4g}  {cells}  {self.robust_accuracy(eps):>10.4f}")
        return "\n".join(lines)


def _key(eps: float, attack: str) -> str:
    return f"{eps!r}|{attack}"


def _validate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, suite: Suite) -> None:
    check_images(images[:256], "data images")
    check_labels(labels, images.shape[0], "data labels")
    dev = model_device(model, images.device)
    with eval_mode(model), torch.no_grad():
        try:
            out = model(images[:1].to(dev))
        except RuntimeError as exc:
            raise ValueError(f"the model cannot process the data's images of shape {tuple(images.shape[1:])}: {exc}") from exc
    check_logits(out, 1, "the model's output")
    if int(labels.max()) >= out.shape[1]:
        raise ValueError(f"the data has label {int(labels.max())} but the model has {out.shape[1]} classes")


def run(
    model: nn.Module,
    data: Any,
    suite: "str | Suite | os.PathLike[str]" = "quick",
    *,
    norm: str = "linf",
    eps: Optional[Sequence[float]] = None,
    n: Optional[int] = None,
    batch_size: int = 256,
    out: "str | os.PathLike[str] | None" = None,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> Evaluation:
    """Evaluate ``model`` on ``data`` (a Dataset or ``(images, labels)``) with ``suite``.

    Every attack runs on every sample (so per-attack robust accuracy is exact); the worst case
    per eps is the per-sample OR of the attacks' successes.
    """
    suite = load_suite(suite, norm, eps)
    images, labels = as_tensors(data)
    if n is not None:
        images, labels = images[:n], labels[:n]
    if images.shape[0] == 0:
        raise ValueError("data is empty; nothing to evaluate")
    _validate(model, images, labels, suite)
    out_dir = Path(out) if out is not None else None
    rec_dir = out_dir / "records" if out_dir is not None else None
    if rec_dir is not None:
        rec_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(rec_dir, os.W_OK):
            raise PermissionError(f"output directory {out_dir} is not writable")
        manifest = {"suite": suite.to_dict(), "n": int(images.shape[0]), "batch_size": batch_size, "seed": seed}
        mpath = rec_dir / "manifest.json"
        if resume and mpath.is_file() and json.loads(mpath.read_text()) != manifest:
            raise ValueError(f"cannot resume {out_dir}: it was started with another suite, n, batch size or seed")
        atomic_write_text(mpath, json.dumps(manifest))
    dev = model_device(model, images.device)
    attacks = {(e, a): registry.get(a, tm, seed=seed, **suite.attack_options.get(a, {}))
               for tm, e in zip(suite.threat_models(), suite.eps) for a in suite.attacks}
    t0 = time.perf_counter()
    batches: list[dict[str, torch.Tensor]] = []
    starts = range(0, images.shape[0], batch_size)
    for b, i in enumerate(tqdm(starts, desc="evaluate", disable=not progress)):
        path = rec_dir / f"batch_{b:06d}.safetensors" if rec_dir is not None else None
        if resume and path is not None and path.is_file():
            batches.append(load_file(str(path)))
            continue
        x, y = images[i : i + batch_size].to(dev), labels[i : i + batch_size].to(dev)
        with eval_mode(model), torch.no_grad():
            rec = {"clean_pred": model(x).argmax(1).cpu()}
        for (e, a), attack in attacks.items():
            res = attack.attack(model, x, y)
            rec[f"success|{_key(e, a)}"] = res.success.cpu()
            rec[f"distance|{_key(e, a)}"] = res.distance.float().cpu()
        if path is not None:
            atomic_write_bytes(path, st_save(rec))
        batches.append(rec)
    seconds = time.perf_counter() - t0
    cat = {k: torch.cat([r[k] for r in batches]) for k in batches[0]}
    return Evaluation(
        suite=suite,
        labels=labels.cpu(),
        clean_pred=cat["clean_pred"],
        success={(e, a): cat[f"success|{_key(e, a)}"] for e in suite.eps for a in suite.attacks},
        distance={(e, a): cat[f"distance|{_key(e, a)}"] for e in suite.eps for a in suite.attacks},
        seconds=seconds,
        info={"dataset": getattr(data, "name", "tensors"), "split": getattr(data, "split", None), "seed": seed,
              "batch_size": batch_size},
    )
