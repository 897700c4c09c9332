"""Where ``attack``, ``certify``, ``verify`` and ``detect`` write the one Report (``report.json`` and
``index.html``, :mod:`robustlab.report`), next to what they wrote before.

``--out X.json`` (``X.safetensors`` for ``attack``): the Report goes into the folder ``X/``; the
file ``X.json`` keeps its old private format for one release (deprecated: read ``X/report.json``).
A folder ``--out`` (``verify --instances``) holds the Report itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

#: Said once per run where a command still writes its old private JSON format.
DEPRECATED = "old format, deprecated (gone in the next release; {folder}/report.json holds the same)"


def report_folder(out: "str | Path") -> Path:
    """The folder of the Report for a file ``--out``: the same path without its suffix, checked
    writable before any work (:func:`robustlab.cli._common.check_out_dir`)."""
    from robustlab.cli._common import check_out_dir

    path = Path(out)
    return check_out_dir(path.with_suffix("") if path.suffix else path.parent / (path.name + ".report"), "--out (its report folder)")


def write_report(section: Any, folder: Path, title: str) -> Path:
    """Write the Report of one model section (``report.json``, ``index.html``, ``figures/``) into
    ``folder``, every file atomically; returns the path of ``report.json``."""
    from robustlab.report import report

    report([section], title).save(folder)
    return folder / "report.json"


def write_outputs(section: Any, folder: Path, title: str, old: Path, payload: dict, *, parts: Optional[Path] = None,
                  note: str = "") -> None:
    """Write the deprecated JSON ``old`` (``payload``) and the report of ``section`` into ``folder``,
    remove the unit files of the run (``parts``: the report holds everything they did), and say where."""
    import json
    import shutil

    from robustlab._io import atomic_write_text

    atomic_write_text(old, json.dumps(payload, default=str) + "\n")
    write_report(section, folder, title)
    if parts is not None:
        shutil.rmtree(parts, ignore_errors=True)
    print(f"wrote {old}{note} and the report {folder / 'report.json'} (and index.html); "
          f"{old.name}: {DEPRECATED.format(folder=folder)}")
