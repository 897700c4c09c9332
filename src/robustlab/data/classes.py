"""Class names of CIFAR-100 and ImageNet (CIFAR-10's live in :mod:`robustlab.data.specs`).

- CIFAR-100 (Krizhevsky 2009): the 100 fine and 20 coarse label names in label order, as in the
  dataset's own ``fine_label_names.txt`` / ``coarse_label_names.txt``.
- ImageNet (ILSVRC 2012, 1000 classes): ``imagenet_classes.tsv`` next to this module holds, for
  class k on its k-th data line, the WordNet id (the 1000 synsets sorted, which is the standard
  class order) and the synset's lemmas from WordNet 3.0 joined by ``", "`` (e.g. ``"tench, Tinca
  tinca"``). The ids are the ILSVRC 2012 synset list; the lemmas were read from Debian's
  ``wordnet-base`` (``/usr/share/wordnet/data.noun``: the line at byte offset ``int(wnid[1:])``
  lists the synset's words) with ``_`` shown as a space and adjective markers such as ``(p)``
  dropped. WordNet's licence (permissive, notice kept) is in the file's header. One synset pair
  shares all its lemmas (``crane``: the bird n02012849 and the machine n03126707), so every
  name that would repeat gets its WordNet id appended, keeping the names unique.
"""

from __future__ import annotations

from importlib import resources

CIFAR100_FINE = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

CIFAR100_COARSE = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)

IMAGENET_FILE = "imagenet_classes.tsv"


def _imagenet_rows() -> list[tuple[str, str]]:
    text = resources.files("robustlab.data").joinpath(IMAGENET_FILE).read_text(encoding="utf-8")
    rows = [tuple(line.split("\t", 1)) for line in text.splitlines() if line and not line.startswith("#")]
    if len(rows) != 1000 or any(len(r) != 2 for r in rows):
        raise ValueError(f"robustlab/data/{IMAGENET_FILE} is damaged: expected 1000 'wnid<TAB>names' lines")
    return [(r[0], r[1]) for r in rows]


def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 WordNet ids of ImageNet's classes, in class order (sorted)."""
    return tuple(w for w, _ in _imagenet_rows())


def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names (WordNet lemmas), unique, in class order."""
    rows = _imagenet_rows()
    count: dict[str, int] = {}
    for _, name in rows:
        count[name] = count.get(name, 0) + 1
    return tuple(name if count[name] == 1 else f"{name} ({wnid})" for wnid, name in rows)
