"""Input-transformation defences as model wrappers: ``Transform(model)(x) = model(t(x))``.

Each wrapper is an ``nn.Module`` mapping images in [0, 1] to the wrapped model's logits, so every
attack and metric runs on it unchanged. Inputs outside [0, 1] are refused (a ValueError).

Deterministic, non-differentiable pre-processing (Athalye, Carlini, Wagner 2018,
arXiv:1802.00420, sec. 4.1: BPDA):

- :class:`BitDepth` ``t(x) = round(x (2^b - 1)) / (2^b - 1)`` (Xu et al. 2018, arXiv:1704.01155);
- :class:`Threshold` ``t(x) = 1[x > tau]``: binarisation, the classic MNIST defence;
- :class:`MedianFilter` ``k x k`` median (Xu et al. 2018; kornia's ``median_blur`` for odd k);

their gradient is zero or uninformative almost everywhere, so plain gradient attacks stall.
``.surrogate()`` returns a differentiable ``g ≈ t`` (here the identity: straight-through) and
``.bpda()`` the defended model whose forward pass is exact and whose backward pass uses ``g``
(:class:`robustlab.attacks.BPDAWrapper`); :class:`robustlab.attacks.BPDA` attacks through it.

Differentiable pre-processing: :class:`GaussianBlur` (kornia ``gaussian_blur2d``),
:class:`JPEG` (kornia's differentiable JPEG codec, Shin & Song 2017: DCT, quality-scaled
quantisation with the rounding ``r(u) = round(u) + (u - round(u))^3``), :class:`Reconstruct`
(MagNet's reformer, Meng & Chen 2017, arXiv:1705.09064: ``t(x) = AE(x)``). Their surrogate is the
transform itself.

Randomised pre-processing, attacked with EOT (:class:`robustlab.attacks.EOT`):
:class:`Randomized` (Xie et al. 2018, arXiv:1711.01991: random resize to ``r in [H, R)`` then
random zero padding to ``R x R``, here resampled back to ``H x W`` so the classifier's input size
is unchanged) and :class:`RandomRotateScale` (Lu et al. 2017, arXiv:1707.03501: random rotation
and scaling). Both are one batched affine resampling (``affine_grid`` / ``grid_sample``) with a
per-sample draw from the module's own seeded ``torch.Generator`` (``reset(seed)`` restarts it).
With ``seed=None`` they draw from torch's default generator instead, which
:class:`robustlab.attacks.EOT` seeds inside its own RNG scope: then the attack, not the module,
fixes the draws, and the same attack seed replays the same result.
"""

from __future__ import annotations

import abc
import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab._checks import check_images, check_positive
from robustlab.attacks.eot import BPDAWrapper
from robustlab.registry import Registry

__all__ = [
    "BitDepth", "DEFENSES", "GaussianBlur", "JPEG", "MagNetAutoencoder", "MedianFilter", "RandomRotateScale",
    "Randomized", "Reconstruct", "Threshold", "Transform", "defended", "median_filter", "train_autoencoder",
]


def _identity(x: Tensor) -> Tensor:
    return x


class Transform(nn.Module, abc.ABC):
    """Base class: ``forward(x) = model(self.transform(x))`` for images ``x`` in [0, 1].

    Subclasses implement :meth:`transform`; non-differentiable ones set ``differentiable = False``
    and may override :meth:`surrogate` (default: identity, the straight-through estimator).
    Random ones set ``random = True``.
    """

    differentiable: bool = True
    random: bool = False

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module mapping images to logits, got {type(model).__name__}")
        self.model = model

    @abc.abstractmethod
    def transform(self, x: Tensor) -> Tensor:
        """The pre-processing ``t(x)`` (N, C, H, W) -> (N, C, H, W), without input checks."""

    def check(self, x: Tensor) -> Tensor:
        """Refuse anything but a float batch (N, C, H, W) in [0, 1]."""
        check_images(x.detach(), "x")
        return x

    def preprocess(self, x: Tensor) -> Tensor:
        """The checked transform alone, ``t(x)``."""
        return self.transform(self.check(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.preprocess(x))

    def surrogate(self) -> Callable[[Tensor], Tensor]:
        """A differentiable ``g ≈ t`` for BPDA: the transform itself when it is differentiable,
        else the identity (Athalye et al. 2018, sec. 4.1.1)."""
        return self.transform if self.differentiable else _identity

    def bpda(self) -> nn.Module:
        """This defended model with the exact forward pass and the surrogate's backward pass."""
        if self.differentiable:
            return self
        return _BPDAModel(self)


class _BPDAModel(nn.Module):
    """``model(BPDA(t, g)(x))``: forward equals the defended model exactly; backward through ``g``."""

    def __init__(self, defended: Transform) -> None:
        super().__init__()
        self.defended = defended
        self.pre = BPDAWrapper(defended.transform, defended.surrogate())

    def forward(self, x: Tensor) -> Tensor:
        return self.defended.model(self.pre(self.defended.check(x)))


# -- deterministic, non-differentiable --------------------------------------------------------


class BitDepth(Transform):
    """Colour-depth reduction to ``bits`` bits: ``round(x (2^b - 1)) / (2^b - 1)`` (Xu et al. 2018)."""

    differentiable = False

    def __init__(self, model: nn.Module, bits: int) -> None:
        super().__init__(model)
        check_positive(bits, "bits", integer=True)
        if bits > 16:
            raise ValueError(f"bits must be in [1, 16], got {bits!r}")
        self.bits = int(bits)

    def transform(self, x: Tensor) -> Tensor:
        levels = 2**self.bits - 1
        return torch.round(x * levels) / levels

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class Threshold(Transform):
    """Binarisation ``1[x > t]``: the MNIST defence whose zero gradient fools plain PGD."""

    differentiable = False

    def __init__(self, model: nn.Module, t: float = 0.5) -> None:
        super().__init__(model)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < float(t) < 1.0:
            raise ValueError(f"t must be a threshold in (0, 1), got {t!r}")
        self.t = float(t)

    def transform(self, x: Tensor) -> Tensor:
        # 1[x > t] written as clamp(sign(x - t), 0): the same values, and autograd sees the true
        # derivative of a step (zero), which is what fools a plain gradient attack.
        return torch.sign(x - self.t).clamp_min(0.0)

    def extra_repr(self) -> str:
        return f"t={self.t}"


def median_filter(x: Tensor, k: int) -> Tensor:
    """``k x k`` median of each channel (N, C, H, W) -> (N, C, H, W), reflect-padded.

    Odd ``k`` uses kornia's ``median_blur``; even ``k`` (Xu et al.'s 2 x 2 on MNIST) pads
    ``k // 2`` before and ``k // 2 - 1`` after and takes the lower median of the window."""
    if k % 2 == 1:
        from kornia.filters import median_blur

        return median_blur(x, (k, k))
    n, c, h, w = x.shape
    lo, hi = k // 2, k // 2 - 1
    padded = F.pad(x, (lo, hi, lo, hi), mode="reflect")
    patches = F.unfold(padded.reshape(n * c, 1, h + k - 1, w + k - 1), k)  # (N*C, k*k, H*W)
    return patches.median(dim=1).values.reshape(n, c, h, w)


class MedianFilter(Transform):
    """Median filtering over ``k x k`` windows (Xu et al. 2018, arXiv:1704.01155)."""

    differentiable = False

    def __init__(self, model: nn.Module, k: int = 3) -> None:
        super().__init__(model)
        check_positive(k, "k", integer=True)
        if k < 2:
            raise ValueError(f"k must be >= 2 (a 1 x 1 median is the identity), got {k!r}")
        self.k = int(k)

    def transform(self, x: Tensor) -> Tensor:
        return median_filter(x, self.k)

    def extra_repr(self) -> str:
        return f"k={self.k}"


# -- differentiable ---------------------------------------------------------------------------


class GaussianBlur(Transform):
    """Gaussian smoothing with standard deviation ``sigma`` pixels (kernel ``2 ceil(3 sigma) + 1``)."""

    def __init__(self, model: nn.Module, sigma: float = 1.0) -> None:
        super().__init__(model)
        self.sigma = float(check_positive(sigma, "sigma"))
        self.kernel = 2 * math.ceil(3 * self.sigma) + 1

    def transform(self, x: Tensor) -> Tensor:
        from kornia.filters import gaussian_blur2d

        return gaussian_blur2d(x, (self.kernel, self.kernel), (self.sigma, self.sigma), border_type="reflect")

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class JPEG(Transform):
    """JPEG compression at ``quality`` in [1, 100] (kornia's differentiable codec, Shin & Song 2017).

    Grey images are encoded as three equal channels and decoded to their mean (the chroma of a
    grey image is constant, so this is the luma path). Sizes that are not multiples of 16 are
    handled by the codec's padding."""

    def __init__(self, model: nn.Module, quality: int = 75) -> None:
        super().__init__(model)
        check_positive(quality, "quality", integer=True)
        if quality > 100:
            raise ValueError(f"quality must be in [1, 100], got {quality!r}")
        self.quality = int(quality)

    def transform(self, x: Tensor) -> Tensor:
        from kornia.enhance import jpeg_codec_differentiable

        c = x.shape[1]
        if c not in (1, 3):
            raise ValueError(f"JPEG needs 1 or 3 channels, got shape {tuple(x.shape)}")
        rgb = x.expand(-1, 3, -1, -1) if c == 1 else x
        q = torch.full((x.shape[0],), float(self.quality), device=x.device, dtype=x.dtype)
        out = jpeg_codec_differentiable(rgb, q).clamp(0.0, 1.0)
        return out.mean(dim=1, keepdim=True) if c == 1 else out

    def extra_repr(self) -> str:
        return f"quality={self.quality}"


class MagNetAutoencoder(nn.Module):
    """MagNet's MNIST auto-encoder shape (Meng & Chen 2017, arXiv:1705.09064, Table 1, detector II
    / reformer): Conv3x3(C->h), AvgPool2, Conv3x3(h->h), Conv3x3(h->h), Upsample2, Conv3x3(h->h),
    Conv3x3(h->C)-sigmoid. The paper's hidden activations are sigmoids; ``activation="relu"``
    (default) trains in far fewer steps, which matters on small data. Output in (0, 1).

    ``seed`` makes the initial weights reproducible without changing the global RNG (drawn inside
    ``torch.random.fork_rng``, as :func:`robustlab.models.create`); with ``seed=None`` they come
    from the global RNG like any ``nn.Module``, so a detector built on it depends on what ran
    before (MagNet's detection rate of PGD on MNIST moved from 48% to 100% between two runs)."""

    def __init__(self, channels: int = 1, hidden: int = 3, activation: str = "relu", *, seed: Optional[int] = None) -> None:
        super().__init__()
        check_positive(channels, "channels", integer=True)
        check_positive(hidden, "hidden", integer=True)
        if activation not in ("relu", "sigmoid"):
            raise ValueError(f"activation must be 'relu' or 'sigmoid', got {activation!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an integer or None, got {seed!r}")
        self.channels = int(channels)
        if seed is None:
            self.net = self._layers(int(channels), int(hidden), activation)
        else:
            with torch.random.fork_rng(devices=[]):  # CPU init; the global RNG is restored afterwards
                torch.manual_seed(seed)
                self.net = self._layers(int(channels), int(hidden), activation)

    @staticmethod
    def _layers(channels: int, hidden: int, activation: str) -> nn.Sequential:
        act = nn.ReLU if activation == "relu" else nn.Sigmoid
        return nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), act(), nn.AvgPool2d(2),
            nn.Conv2d(hidden, hidden, 3, padding=1), act(),
            nn.Conv2d(hidden, hidden, 3, padding=1), act(), nn.Upsample(scale_factor=2),
            nn.Conv2d(hidden, hidden, 3, padding=1), act(),
            nn.Conv2d(hidden, channels, 3, padding=1), nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            raise ValueError(f"MagNetAutoencoder needs even height and width, got shape {tuple(x.shape)}")
        return self.net(x)


def train_autoencoder(
    autoencoder: nn.Module,
    images: Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    noise: float = 0.1,
    weight_decay: float = 1e-9,
    seed: int = 0,
) -> nn.Module:
    """Train ``autoencoder`` in place to reconstruct ``images`` in [0, 1] and return it in eval mode.

    MagNet's objective (Meng & Chen 2017, sec. 4): ``min E ||AE(clip(x + noise * n)) - x||_2^2``
    with ``n ~ N(0, I)`` (``noise = 0`` trains a plain auto-encoder), Adam, a tiny L2 penalty.
    Every random draw comes from a generator seeded with ``seed``.
    """
    if not isinstance(autoencoder, nn.Module):
        raise TypeError(f"autoencoder must be a torch.nn.Module, got {type(autoencoder).__name__}")
    check_images(images, "images")
    check_positive(epochs, "epochs", integer=True)
    check_positive(batch_size, "batch_size", integer=True)
    check_positive(lr, "lr")
    check_positive(noise, "noise", allow_zero=True)
    dev = next(iter(autoencoder.parameters()), images).device
    images = images.to(dev)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    opt = torch.optim.Adam(autoencoder.parameters(), lr=lr, weight_decay=weight_decay)
    autoencoder.train()
    n = images.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen, device=dev)
        for start in range(0, n, batch_size):
            x = images[order[start : start + batch_size]]
            noisy = (x + noise * torch.randn(x.shape, generator=gen, device=dev, dtype=x.dtype)).clamp(0, 1)
            loss = F.mse_loss(autoencoder(noisy), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for p in autoencoder.parameters():
        p.grad = None
    return autoencoder.eval()


class Reconstruct(Transform):
    """MagNet's reformer: classify the auto-encoder's reconstruction, ``model(AE(x))``."""

    def __init__(self, model: nn.Module, autoencoder: nn.Module) -> None:
        super().__init__(model)
        if not isinstance(autoencoder, nn.Module):
            raise TypeError(f"autoencoder must be a torch.nn.Module, got {type(autoencoder).__name__}")
        self.autoencoder = autoencoder

    def transform(self, x: Tensor) -> Tensor:
        return self.autoencoder(x)


# -- randomised -------------------------------------------------------------------------------


class _RandomAffine(Transform):
    """Per-sample random affine resampling drawn from the module's own generator."""

    random = True

    def __init__(self, model: nn.Module, seed: Optional[int]) -> None:
        super().__init__(model)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an integer or None, got {seed!r}")
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}

    def reset(self, seed: Optional[int] = None) -> None:
        """Restart the random stream (from ``seed``, default the constructor's)."""
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise TypeError(f"seed must be an integer, got {seed!r}")
            self.seed = seed
        self._generators.clear()

    def _generator(self, device: torch.device) -> Optional[torch.Generator]:
        """The module's own stream, or None (torch's default generator) when ``seed`` is None."""
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def _uniform(self, n: int, lo: float, hi: float, x: Tensor) -> Tensor:
        u = torch.rand(n, generator=self._generator(x.device), device=x.device, dtype=x.dtype)
        return lo + (hi - lo) * u

    @abc.abstractmethod
    def theta(self, x: Tensor) -> Tensor:
        """(N, 2, 3) affine maps from output to input coordinates (``affine_grid`` convention)."""

    def transform(self, x: Tensor) -> Tensor:
        theta = self.theta(x)  # (N, 2, 3): output coords -> input coords, in [-1, 1] units
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class Randomized(_RandomAffine):
    """Random resizing and padding (Xie et al. 2018, arXiv:1711.01991).

    The image is resized to a random side ``r ~ U[H, R)`` with ``R = max_scale * H`` and placed at
    a uniformly random offset on an ``R x R`` zero canvas, which is then resampled to ``H x W``:
    in the classifier's coordinates, a shrink by ``r / R`` and a shift, one affine map per sample.
    """

    def __init__(self, model: nn.Module, max_scale: float = 331 / 299, *, seed: Optional[int] = 0) -> None:
        super().__init__(model, seed)
        if isinstance(max_scale, bool) or not isinstance(max_scale, (int, float)) or not 1.0 < float(max_scale) <= 4.0:
            raise ValueError(f"max_scale must be in (1, 4], got {max_scale!r}")
        self.max_scale = float(max_scale)

    def theta(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        shrink = self._uniform(n, 1.0 / self.max_scale, 1.0, x)  # r / R
        free = 1.0 - shrink  # room left on the canvas, in [-1, 1] units (half-width 1)
        shift_x = self._uniform(n, -1.0, 1.0, x) * free
        shift_y = self._uniform(n, -1.0, 1.0, x) * free
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = 1.0 / shrink
        theta[:, 1, 1] = 1.0 / shrink
        theta[:, 0, 2] = -shift_x / shrink
        theta[:, 1, 2] = -shift_y / shrink
        return theta

    def extra_repr(self) -> str:
        return f"max_scale={self.max_scale:.4g}, seed={self.seed}"


class RandomRotateScale(_RandomAffine):
    """Random rotation by ``U[-degrees, degrees]`` and scaling by ``U[scale]`` about the centre
    (Lu et al. 2017, arXiv:1707.03501; broken by EOT, Athalye et al. 2018, arXiv:1707.07397)."""

    def __init__(self, model: nn.Module, degrees: float = 30.0, scale: Sequence[float] = (0.9, 1.1), *, seed: Optional[int] = 0) -> None:
        super().__init__(model, seed)
        self.degrees = float(check_positive(degrees, "degrees", allow_zero=True))
        if self.degrees > 180:
            raise ValueError(f"degrees must be in [0, 180], got {degrees!r}")
        if len(scale) != 2 or not 0.0 < float(scale[0]) <= float(scale[1]):
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale!r}")
        self.scale = (float(scale[0]), float(scale[1]))

    def theta(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        angle = self._uniform(n, -self.degrees, self.degrees, x) * (math.pi / 180.0)
        s = self._uniform(n, self.scale[0], self.scale[1], x)
        cos, sin = torch.cos(angle) / s, torch.sin(angle) / s  # inverse map: rotate by -angle, scale 1/s
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 0, 1] = cos, sin
        theta[:, 1, 0], theta[:, 1, 1] = -sin, cos
        return theta

    def extra_repr(self) -> str:
        return f"degrees={self.degrees}, scale={self.scale}, seed={self.seed}"


#: The transforms a name can build (``robustlab evaluate --defense NAME[:VALUE]``): the class, its
#: one parameter and the parameter's type. The random ones (attacked with EOT) and the MagNet
#: reformer (it needs a trained auto-encoder) are built in Python.
DEFENSES: Registry[tuple[type, str, type]] = Registry("defense")
for _name, _entry in {
    "bit-depth": (BitDepth, "bits", int),
    "threshold": (Threshold, "t", float),
    "median": (MedianFilter, "k", int),
    "blur": (GaussianBlur, "sigma", float),
    "jpeg": (JPEG, "quality", int),
}.items():
    DEFENSES.register(_name, _entry, (_entry[0].__doc__ or _name).strip().split("\n\n")[0].replace("\n", " "))


def defended(model: nn.Module, spec: str) -> Transform:
    """``model`` behind the transform that ``spec`` names: ``"threshold:0.3"`` is
    ``Threshold(model, 0.3)``, ``"median"`` is ``MedianFilter(model)`` with its default (see
    :data:`DEFENSES`). Raises ValueError naming the choices for anything else."""
    name, _, value = str(spec).strip().partition(":")
    key = name.strip().lower().replace("_", "-")
    if key not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; expected one of {', '.join(DEFENSES)} (as NAME or NAME:VALUE)")
    cls, param, kind = DEFENSES[key]
    if not value.strip():
        return cls(model)
    try:
        parsed = kind(value.strip())
    except ValueError:
        raise ValueError(f"defense {key}: {param} must be {'an integer' if kind is int else 'a number'}, "
                         f"got {value.strip()!r}") from None
    return cls(model, parsed)

