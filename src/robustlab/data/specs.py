"""What robustlab knows about each named dataset without loading it.

One place for class names, image shape and the normalisation statistics (the standard
per-channel mean / std of each training set), used by the loaders and by
``robustlab.models.create(arch, dataset=...)``. The ``*-sample`` sets (:mod:`robustlab.data.samples`)
are 20 test images of their data set and carry its classes and statistics (ImageNet: the usual
(0.485, 0.456, 0.406) / (0.229, 0.224, 0.225)).
"""

from __future__ import annotations

from dataclasses import dataclass

from robustlab.data.classes import CIFAR100_FINE, imagenet_classes
from robustlab.registry import Registry


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a dataset: ``shape`` is (C, H, W); mean/std are per channel in [0, 1] units."""

    name: str
    classes: tuple[str, ...]
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_IMAGENET_CLASSES = imagenet_classes()

_BUILT_IN = {
    # digits: mean / std of the 1,437 training images (pixel / 16), computed by the tests.
    "digits": DatasetSpec("digits", tuple(str(i) for i in range(10)), (1, 8, 8), (0.3049,), (0.3758,)),
    "mnist": DatasetSpec("mnist", tuple(str(i) for i in range(10)), (1, 28, 28), (0.1307,), (0.3081,)),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        (1, 28, 28),
        (0.2860,),
        (0.3530,),
    ),
    "cifar10": DatasetSpec("cifar10", _CIFAR10_CLASSES, (3, 32, 32), *_CIFAR10_STATS),
    "cifar10-sample": DatasetSpec("cifar10-sample", _CIFAR10_CLASSES, (3, 32, 32), *_CIFAR10_STATS),
    "cifar100-sample": DatasetSpec("cifar100-sample", CIFAR100_FINE, (3, 32, 32), *_CIFAR100_STATS),
    "imagenet-sample": DatasetSpec("imagenet-sample", _IMAGENET_CLASSES, (3, 224, 224), *_IMAGENET_STATS),
    "imagenet-sample-512": DatasetSpec("imagenet-sample-512", _IMAGENET_CLASSES, (3, 512, 512), *_IMAGENET_STATS),
}

#: Every named data set (:class:`robustlab.registry.Registry`) and its facts; ``DATASETS.get(name)``
#: is its :class:`DatasetSpec` (``robustlab.data.load(name)`` loads it).
DATASETS: Registry[DatasetSpec] = Registry("dataset")
for _spec in _BUILT_IN.values():
    DATASETS.register(_spec.name, _spec, f"{_spec.num_classes} classes, images {'x'.join(map(str, _spec.shape))} (C x H x W)")

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "cifar10_sample": "cifar10-sample",
    "cifar100_sample": "cifar100-sample",
    "imagenet_sample": "imagenet-sample",
    "imagenet_sample_512": "imagenet-sample-512",
}


def canonical_name(name: str) -> str:
    """Map a dataset name or alias to its canonical name; ValueError for unknown names."""
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; expected one of {', '.join(sorted(DATASETS))} "
            f"(aliases: {', '.join(sorted(_ALIASES))})"
        )
    return key


def spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of a named dataset (aliases accepted)."""
    return DATASETS[canonical_name(name)]


def names() -> tuple[str, ...]:
    """Canonical names of the datasets robustlab can load."""
    return tuple(sorted(DATASETS.available()))
