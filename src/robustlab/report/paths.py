"""File names made from what a report holds (model names, norms): one safe path component each."""

from __future__ import annotations

import re


def slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")
    return s or "model"
