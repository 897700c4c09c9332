"""Train the ResNet of ``my_resnet.py`` with plain PyTorch, as anyone would outside robustlab, and save
its state dict with ``torch.save``. The network sees standardised inputs ``(x - MEAN) / STD``, so
robustlab is later told ``--mean``/``--std``.

    python docs/examples/train_elsewhere.py out/mnist-png/train out/my_resnet.pt --in-channels 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from my_resnet import resnet_small  # noqa: E402

MEAN, STD = 0.1307, 0.3081  # MNIST's training-set statistics


def read_folder(root: Path, in_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of ``root/<class>/*.png`` in [0, 1] (N, C, H, W), labels by sorted class name."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    xs, ys = [], []
    for k, name in enumerate(classes):
        for f in sorted((root / name).glob("*.png")):
            img = Image.open(f).convert("L" if in_channels == 1 else "RGB")
            a = np.asarray(img, dtype=np.float32) / 255.0
            xs.append(a[None] if in_channels == 1 else a.transpose(2, 0, 1))  # HWC -> CHW
            ys.append(k)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys)


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", help="training image folder (one sub-folder per class)")
    p.add_argument("out", help="where torch.save writes the state dict")
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    x, y = read_folder(Path(args.images), args.in_channels)
    model = resnet_small(args.num_classes, args.in_channels, args.width)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), args.batch_size):
            idx = perm[i : i + args.batch_size]
            loss = nn.functional.cross_entropy(model((x[idx] - MEAN) / STD), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}: last batch loss {loss.item():.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
