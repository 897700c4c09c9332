"""The in-memory dataset: images in [0, 1] as float32 (N, C, H, W), labels int64 (N,)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor

from robustlab._checks import check_images, check_labels


@dataclass(frozen=True)
class Dataset:
    """Images and labels with what a robustness evaluation needs to know about them.

    Attributes: ``name``, ``split``, ``images`` (N, C, H, W) float32 in [0, 1], ``labels`` (N,)
    int64, ``classes`` (class names), per-channel ``mean`` / ``std`` (for ``Normalize``) and
    ``source`` (where the files came from).
    """

    name: str
    split: str
    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Image shape (C, H, W)."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __getitem__(self, index: "int | slice | Tensor | Sequence[int]") -> "Dataset":
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long)
        return replace(self, images=self.images[index], labels=self.labels[index])

    def subset(self, n_or_indices: "int | Tensor | Sequence[int]") -> "Dataset":
        """The first ``n`` samples, or the samples at the given indices."""
        if isinstance(n_or_indices, int):
            if n_or_indices < 1:
                raise ValueError(f"subset size must be >= 1, got {n_or_indices}")
            return self[: n_or_indices]
        return self[n_or_indices]

    def batches(
        self, batch_size: int, *, shuffle: bool = False, seed: Optional[int] = None, drop_last: bool = False
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x, y)`` batches; with ``shuffle`` the order comes from ``torch.Generator(seed)``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        n = len(self)
        if shuffle:
            g = torch.Generator().manual_seed(0 if seed is None else int(seed))
            order = torch.randperm(n, generator=g).to(self.images.device)
        else:
            order = None
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            if order is None:
                yield self.images[i : i + batch_size], self.labels[i : i + batch_size]
            else:
                idx = order[i : i + batch_size]
                yield self.images[idx], self.labels[idx]

    def to(self, device: "torch.device | str") -> "Dataset":
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, split={self.split!r}, n={len(self)}, shape={self.shape}, "
                f"classes={self.num_classes}, source={self.source!r})")


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
    """Wrap user tensors as a :class:`Dataset`, validating them (finite, in [0, 1], (N, C, H, W),
    integer labels in range). Mean/std default to the data's own per-channel statistics."""
    check_images(images, "images")
    n = images.shape[0]
    if classes is None:
        check_labels(labels, n, "labels")
        classes = tuple(str(i) for i in range(int(labels.max()) + 1))
    check_labels(labels, n, "labels", num_classes=len(classes))
    c = images.shape[1]
    if mean is None:
        mean = tuple(float(v) for v in images.float().mean(dim=(0, 2, 3)))
    if std is None:
        std = tuple(max(float(v), 1e-6) for v in images.float().std(dim=(0, 2, 3)))
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean and std need {c} values (one per channel), got {len(mean)} and {len(std)}")
    return Dataset(name, split, images.float(), labels.long(), tuple(classes), tuple(mean), tuple(std), "tensors")
