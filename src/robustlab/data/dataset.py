"""The in-memory dataset: images in [0, 1] as float32 (N, C, H, W), labels int64 (N,)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import Tensor

from robustlab._checks import check_images, check_labels, check_positive

Index = Union[int, slice, Tensor, Sequence[int]]


@dataclass(frozen=True, repr=False, eq=False)
class Dataset:
    """Images and labels with what a robustness evaluation needs to know about them.

    Attributes: ``name``, ``split``, ``images`` (N, C, H, W) float32 in [0, 1], ``labels`` (N,)
    int64, ``classes`` (class names; label ``k`` is ``classes[k]``), per-channel ``mean`` / ``std``
    (the standard training-set statistics, for ``Normalize``) and ``source`` (where the data came
    from). Construction checks shapes and dtypes only (cheap); :func:`from_tensors` also checks
    values. Indexing and :meth:`subset` return datasets that share storage with this one.
    """

    name: str
    split: str
    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if not isinstance(x, Tensor) or x.dtype != torch.float32 or x.dim() != 4:
            got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"Dataset.images must be a float32 tensor (N, C, H, W), got {got}")
        if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.shape != x.shape[:1]:
            got = f"{y.dtype} tensor of shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            raise TypeError(f"Dataset.labels must be an int64 tensor of shape ({x.shape[0]},), got {got}")
        c = x.shape[1]
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"Dataset mean and std need {c} values (one per channel), got {self.mean} and {self.std}")
        if len(self.classes) < 1:
            raise ValueError("Dataset.classes must name at least one class")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Image shape (C, H, W)."""
        c, h, w = self.images.shape[1:]
        return (int(c), int(h), int(w))

    def __getitem__(self, index: Index) -> "Dataset":
        """A sub-dataset: ``d[3]`` (one sample, still a Dataset), ``d[:100]``, ``d[tensor_of_indices]``,
        ``d[boolean_mask]``."""
        if isinstance(index, bool):
            raise TypeError("Dataset index must be an int, slice, index tensor or boolean mask, got a bool")
        if isinstance(index, int):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"Dataset index {index} is out of range for {n} samples")
            index = slice(index % n, index % n + 1)
        if not isinstance(index, slice):
            index = torch.as_tensor(index, device=self.labels.device)
            if index.dtype == torch.bool:
                if index.shape != self.labels.shape:
                    raise IndexError(f"boolean mask of shape {tuple(index.shape)} does not match {len(self)} samples")
            elif index.is_floating_point() or index.dim() != 1:
                raise TypeError(f"Dataset index must be 1-D integer indices or a boolean mask, got {index.dtype} "
                                f"of shape {tuple(index.shape)}")
            else:
                index = index.long()
        return replace(self, images=self.images[index], labels=self.labels[index])

    def subset(self, n_or_indices: Index) -> "Dataset":
        """The first ``min(n, len)`` samples when given an int ``n >= 1``; else ``self[indices]``."""
        if isinstance(n_or_indices, int) and not isinstance(n_or_indices, bool):
            if n_or_indices < 1:
                raise ValueError(f"subset size must be >= 1, got {n_or_indices}")
            return self[:n_or_indices]
        return self[n_or_indices]

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: "int | torch.Generator | None" = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x, y)`` batches covering every sample once, on the dataset's device.

        With ``shuffle`` the order is ``torch.randperm`` drawn from ``seed``: an int (same seed,
        same order), a ``torch.Generator`` (advanced, so successive epochs differ but replay
        exactly), or None (a fresh non-deterministic seed; the global RNG is never touched).
        Without ``shuffle`` the order is the dataset's and ``seed`` is ignored.
        """
        check_positive(batch_size, "batch_size", integer=True)
        n = len(self)
        order: Optional[Tensor] = None
        if shuffle:
            if isinstance(seed, torch.Generator):
                g = seed
            else:
                g = torch.Generator()
                if seed is None:
                    g.seed()
                else:
                    g.manual_seed(int(seed))
            order = torch.randperm(n, generator=g, device=g.device).to(self.labels.device)
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            if order is None:
                yield self.images[i : i + batch_size], self.labels[i : i + batch_size]
            else:
                idx = order[i : i + batch_size]
                yield self.images[idx], self.labels[idx]

    def to(self, device: "torch.device | str") -> "Dataset":
        """The same dataset with images and labels on ``device``."""
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, split={self.split!r}, n={len(self)}, shape={self.shape}, "
                f"classes={self.num_classes}, source={self.source!r})")


def _stats(values: Optional[Sequence[float]], what: str, c: int, positive: bool) -> Optional[tuple[float, ...]]:
    if values is None:
        return None
    vals = tuple(float(v) for v in values)
    if len(vals) != c:
        raise ValueError(f"{what} needs {c} values (one per channel), got {len(vals)}: {vals}")
    for v in vals:
        if not math.isfinite(v) or (positive and v <= 0):
            raise ValueError(f"{what} must hold finite{' positive' if positive else ''} numbers, got {vals}")
    return vals


def from_tensors(
    images: Tensor,
    labels: Tensor,
    *,
    name: str = "custom",
    split: str = "custom",
    classes: Optional[Sequence[str]] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
) -> Dataset:
    """Wrap user tensors as a :class:`Dataset`, validating them: images a non-empty finite float
    tensor (N, C, H, W) in [0, 1], labels integer (N,) in [0, len(classes)). ``classes`` defaults to
    ``"0" .. str(max label)``; ``mean`` / ``std`` default to the images' own per-channel statistics."""
    check_images(images, "images")
    n, c = images.shape[0], images.shape[1]
    check_labels(labels, n, "labels")
    if classes is None:
        classes = tuple(str(i) for i in range(int(labels.max()) + 1))
    classes = tuple(str(k) for k in classes)
    if not classes:
        raise ValueError("classes must name at least one class, got an empty sequence")
    check_labels(labels, n, "labels", num_classes=len(classes))
    x = images.to(torch.float32)
    m = _stats(mean, "mean", c, positive=False)
    s = _stats(std, "std", c, positive=True)
    if m is None:
        m = tuple(float(v) for v in x.mean(dim=(0, 2, 3)))
    if s is None:
        s = tuple(max(float(v), 1e-6) for v in x.std(dim=(0, 2, 3), correction=0))
    return Dataset(str(name), str(split), x, labels.to(torch.int64), classes, m, s, "tensors")
