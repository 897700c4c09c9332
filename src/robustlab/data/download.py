"""Downloads from the official locations, for users who are online: SHA-256 checked, atomic.

A file is streamed to a temporary sibling, its SHA-256 compared with the constant in
:data:`robustlab.data.sources.FILES`, and only then renamed into place; a mismatch or a broken
connection leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

CHUNK = 1 << 20


def download(urls: Sequence[str], dest: Path, sha256: str, *, timeout: float = 60.0) -> str:
    """Fetch the first URL of ``urls`` that answers into ``dest``; returns the URL used.

    Raises ``ValueError`` on a hash mismatch and ``FileNotFoundError`` when no URL answers.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
                while chunk := resp.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != sha256:
                raise ValueError(
                    f"download of {url} has SHA-256 {digest.hexdigest()}, expected {sha256}; the file was discarded"
                )
            os.replace(tmp, dest)
            return url
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            errors.append(f"{url}: {exc}")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    raise FileNotFoundError(f"could not download {dest.name}: " + "; ".join(errors))
