"""Shared set-up for the benchmarks: the MNIST model and images every library sees."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

import robustlab as rl


def mnist_model(path: str = "runs/mnist-cnn", epochs: int = 2) -> torch.nn.Module:
    """The standard MNIST ``cnn`` (trained with robustlab if ``path`` does not hold it yet)."""
    if not (Path(path) / "metadata.json").is_file():
        train = rl.data.load("mnist", "train")
        model = rl.models.create("cnn", train, seed=0)
        rl.training.train(model, train, epochs=epochs, val_data=rl.data.load("mnist", "test"), out=path, progress=False)
    return rl.models.load(path).eval()


def first_test_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    test = rl.data.load("mnist", "test")
    return test.images[:n].clone(), test.labels[:n].clone()


def timed(fn, repeats: int = 1):
    """Run ``fn`` ``repeats`` times; return (last result, best wall time in seconds)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def hardware() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
