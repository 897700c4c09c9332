"""Write a robustlab dataset to disk as PNG files in the image-folder layout, ``OUT/<split>/<class>/<i>.png``.

    python docs/examples/export_images.py mnist out/mnist-png --n-train 5000 --n-test 500

This only prepares an example image folder (your own images need no robustlab to be written).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image

import robustlab as rl


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", help="digits, mnist, fashion-mnist, cifar10")
    p.add_argument("out", help="output folder")
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-test", type=int, default=500)
    args = p.parse_args(argv)
    for split, n in (("train", args.n_train), ("test", args.n_test)):
        d = rl.data.load(args.dataset, split).subset(n)
        pixels = (d.images * 255).round().byte().permute(0, 2, 3, 1).numpy()  # (N, C, H, W) -> (N, H, W, C)
        for i, (img, label) in enumerate(zip(pixels, d.labels.tolist())):
            folder = Path(args.out) / split / d.classes[label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{i:05d}.png")
        print(f"wrote {len(d)} {split} images to {Path(args.out) / split}")


if __name__ == "__main__":
    main()
