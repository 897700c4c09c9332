"""Verified, atomic downloads.

A file is streamed into a temporary sibling of its destination while its SHA-256 is computed; only
when the digest equals the expected constant is it renamed into place (``os.replace``). A hash
mismatch, a broken connection or an interrupt leaves nothing behind. Mirrors are tried in order.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

CHUNK = 1 << 20
USER_AGENT = "robustlab (https://pypi.org/project/robustlab/)"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    urls: Sequence[str], dest: Path, sha256: str, *, timeout: float = 60.0, progress: bool = False
) -> str:
    """Fetch ``dest`` from the first of ``urls`` that serves a file whose SHA-256 is ``sha256``;
    returns the URL used.

    Raises ``ValueError`` when a server answered but no file had the expected hash, and
    ``FileNotFoundError`` when no URL answered at all; the message lists every attempt.
    """
    if len(sha256) != 64:
        raise ValueError(f"sha256 for {dest.name} must be 64 hex digits, got {sha256!r}")
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    mismatch = False
    for url in urls:
        try:
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        except ValueError as exc:
            failures.append(f"{url}: {exc}")
            continue
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress, leave=False) as bar:
                    while chunk := resp.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        bar.update(len(chunk))
            got = digest.hexdigest()
            if got != sha256:
                mismatch = True
                failures.append(f"{url}: SHA-256 {got}, expected {sha256} (discarded)")
                continue
            os.replace(tmp, dest)
            return url
        except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as exc:
            failures.append(f"{url}: {exc}")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    detail = "; ".join(failures) or "no URL given"
    if mismatch:
        raise ValueError(f"download of {dest.name} failed verification: {detail}")
    raise FileNotFoundError(f"could not download {dest.name}: {detail}")
