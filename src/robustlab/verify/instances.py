"""VNN-COMP instances (an ONNX network, a VNNLIB property, a timeout) run and checked, one record each.

:func:`run_instance` answers one instance with a method of :data:`~robustlab.verify.methods.PROPERTY_METHODS`
and checks the answer before it is reported:

* ``sat``: the counterexample is run again through onnxruntime on the original ONNX file (when
  onnxruntime is installed; else through the converted module) and must lie in the property's
  box and give outputs in its unsafe region. Otherwise the answer becomes ``unknown`` with a
  warning naming the instance.
* ``unsat``: a fresh falsification search (another seed) runs on the box; a counterexample it
  finds (confirmed as above) would mean the bounds were unsound: logged as an error, the record
  flagged ``unsound``, and the answer is the confirmed ``sat``.

An answer given after the instance's timeout is reported as ``timeout`` (the late answer kept in
``late_status``). :func:`result_text` writes the competition's result format (``sat`` followed by
the counterexample ``((X_0 v) ... (Y_0 v) ...)``, or ``unsat`` / ``timeout`` / ``unknown``).

:func:`run_instances` runs a list of instances (an ``instances.csv`` of ``network, property,
timeout`` rows, paths relative to the file: :func:`read_instances`) into a folder::

    out/instances/0000-<network>-<property>.json   one record per instance (atomic writes)
    out/instances/0000-<network>-<property>.txt    its VNN-COMP result text
    out/summary.json                               settings, counts per status and network, records

With ``resume`` a record written by a run of the same configuration (method, seed, timeout,
network and property contents) is kept and not recomputed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from robustlab._io import atomic_write_text
from robustlab.data.download import sha256_file
from robustlab.verify.falsify import falsify
from robustlab.verify.methods import DEFAULT_PROPERTY_METHOD, PROPERTY_METHODS, STATUSES
from robustlab.verify.network import Network, trace
from robustlab.verify.spec import Property
from robustlab.verify.vnnlib import read_vnnlib

__all__ = ["Instance", "LoadedNetwork", "load_network", "read_instances", "result_text", "run_instance",
           "run_instances"]

log = logging.getLogger("robustlab.verify")
PathLike = Union[str, "os.PathLike[str]"]
FORMAT = "robustlab-vnnlib"
FORMAT_VERSION = 1
CHECK_SEARCH = {"restarts": 16, "steps": 50}  # the search run on every unsat answer


@dataclass(frozen=True)
class Instance:
    """One row of an instances file: network and property paths, timeout in seconds."""

    network: Path
    property: Path
    timeout: float
    index: int = 0

    @property
    def key(self) -> str:
        """A file-name-safe name: ``<index>-<network>-<property>``."""
        raw = f"{self.index:04d}-{self.network.stem}-{self.property.stem}"
        return re.sub(r"[^A-Za-z0-9._-]+", "_", raw)


def read_instances(path: PathLike) -> list[Instance]:
    """The rows ``network, property, timeout`` of a VNN-COMP instances CSV (paths relative to it)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no instances file at {p}")
    out = []
    with open(p, newline="") as fh:
        for line, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 3:
                raise ValueError(f"{p}:{line}: expected 'network, property, timeout', got {len(row)} field(s)")
            try:
                timeout = float(row[2])
            except ValueError:
                raise ValueError(f"{p}:{line}: the timeout {row[2].strip()!r} is not a number of seconds") from None
            if not timeout > 0 or not math.isfinite(timeout):
                raise ValueError(f"{p}:{line}: the timeout must be > 0 seconds, got {row[2].strip()}")
            net, prop = (p.parent / row[0].strip()), (p.parent / row[1].strip())
            for what, f in (("network", net), ("property", prop)):
                if not f.is_file():
                    raise FileNotFoundError(f"{p}:{line}: the {what} {f} does not exist")
            out.append(Instance(net, prop, timeout, len(out)))
    if not out:
        raise ValueError(f"{p} lists no instance")
    return out



class LoadedNetwork:
    """An ONNX network converted (:func:`robustlab.models.onnx.convert`) and traced, with its
    onnxruntime session (None without onnxruntime) for checking counterexamples."""

    def __init__(self, path: Path, model: nn.Module, net: Network, sha256: str, seconds: float) -> None:
        self.path, self.model, self.net, self.sha256, self.seconds = path, model, net, sha256, seconds
        self._session: Any = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.model.input_shape)

    @property
    def num_outputs(self) -> int:
        return self.net.num_classes

    def session(self) -> Any:
        """The onnxruntime session of the file, or None when onnxruntime is not installed."""
        if self._session is None:
            try:
                import onnxruntime
            except ImportError:
                return None
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            self._session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        return self._session

    def reference_output(self, x: Tensor) -> tuple[Tensor, str]:
        """The file's output at one input ``x`` (the declared shape): onnxruntime's, else the module's."""
        sess = self.session()
        if sess is None:
            ref = next(iter(list(self.model.parameters()) + list(self.model.buffers())), x)
            with torch.no_grad():
                return self.model(x[None].to(ref.device)).reshape(-1).cpu().double(), "robustlab"
        import numpy as np

        inp = sess.get_inputs()[0]
        dtype = np.float64 if inp.type == "tensor(double)" else np.float32
        batch = self.model.declared_batch or 1
        feed = np.repeat(x.detach().cpu().numpy().astype(dtype)[None], batch, axis=0)
        y = sess.run(None, {inp.name: feed})[0]
        return torch.from_numpy(np.asarray(y)[0].astype(np.float64)).reshape(-1), "onnxruntime"


def load_network(path: PathLike, device: "str | torch.device" = "cpu") -> LoadedNetwork:
    """Convert and trace the ONNX network at ``path`` on ``device``."""
    from robustlab.models.onnx import convert

    p = Path(path)
    t0 = time.perf_counter()
    model = convert(p).to(device).eval()
    with torch.no_grad():
        net = trace(model, torch.zeros(1, *model.input_shape, device=device))
    return LoadedNetwork(p, model, net, sha256_file(p), time.perf_counter() - t0)


def _check_sat(loaded: LoadedNetwork, prop: Property, x: Tensor) -> tuple[bool, Tensor, str]:
    """(x in the box and its reference output unsafe, that output, who computed it)."""
    y, by = loaded.reference_output(x)
    inside = bool(prop.contains(x[None].double().cpu())[0])
    return inside and bool(prop.unsafe(y[None])[0]), y, by


def run_instance(inst: Instance, loaded: LoadedNetwork, *, method: str = DEFAULT_PROPERTY_METHOD, seed: int = 0,
                 timeout_scale: float = 1.0, check: bool = True,
                 methods: Optional[dict[str, Callable[..., Any]]] = None) -> dict:
    """Answer one instance and check the answer (module docstring); the record (a JSON-ready dict)."""
    table = PROPERTY_METHODS if methods is None else methods
    if method not in table:
        raise ValueError(f"method must be one of {', '.join(table)}, got {method!r}")
    timeout = inst.timeout * timeout_scale
    t0 = time.perf_counter()
    props = read_vnnlib(inst.property, input_shape=loaded.input_shape, num_outputs=loaded.num_outputs)
    status, x, domains, info = "unsat", None, 0, []
    for prop in props:  # a disjunction of boxes: unsat only if every box is
        left = timeout - (time.perf_counter() - t0)
        if left <= 0:
            status = "timeout"
            break
        res = table[method](loaded.net, prop, timeout=left, seed=seed)
        domains += int(getattr(res, "domains", 0) or 0)
        info.append(dict(getattr(res, "info", {}) or {}))
        if res.status not in STATUSES:
            raise ValueError(f"method {method!r} answered {res.status!r}; expected one of {', '.join(STATUSES)}")
        if res.status == "sat":
            status, x, sat_prop = "sat", res.counterexample, prop
            break
        if res.status != "unsat":
            status = "timeout" if res.status == "timeout" or status == "timeout" else res.status
    seconds = time.perf_counter() - t0
    record: dict = {"index": inst.index, "network": str(inst.network), "property": str(inst.property),
                    "timeout": timeout, "method": method, "seed": seed, "status": status, "seconds": seconds,
                    "domains": domains, "labels": [p.label for p in props], "boxes": len(props), "info": info,
                    "unsound": False, "warnings": []}
    t1 = time.perf_counter()
    if status == "sat" and x is not None:
        ok, y, by = _check_sat(loaded, sat_prop, x.detach().cpu())
        if ok:
            record["counterexample"] = {"x": x.detach().cpu().double().reshape(-1).tolist(), "y": y.tolist(),
                                        "checked_by": by}
        else:
            msg = (f"instance {inst.key}: the counterexample does not hold when re-run through {by} (outside the box "
                   "or not in the unsafe region); answering unknown")
            log.warning(msg)
            record["warnings"].append(msg)
            record["status"] = "unknown"
    elif status == "unsat" and check:
        for prop in props:
            x = falsify(loaded.net, prop, seed=seed + 7919, **CHECK_SEARCH)
            if x is None:
                continue
            ok, y, by = _check_sat(loaded, prop, x.cpu())
            if ok:
                msg = (f"UNSOUND: instance {inst.key}: {method} answered unsat but a search found a counterexample "
                       f"confirmed by {by}; reporting sat")
                log.error(msg)
                record.update(status="sat", unsound=True)
                record["warnings"].append(msg)
                record["counterexample"] = {"x": x.cpu().double().reshape(-1).tolist(), "y": y.tolist(),
                                            "checked_by": by}
                break
    record["check_seconds"] = time.perf_counter() - t1
    if record["status"] in ("sat", "unsat") and seconds > timeout:
        record["late_status"], record["status"] = record["status"], "timeout"
    return record


def result_text(record: dict) -> str:
    """The VNN-COMP result of a record: the status line, and for sat the counterexample."""
    status = record["status"]
    if status != "sat" or "counterexample" not in record:
        return f"{status}\n"
    ce = record["counterexample"]
    lines = [f"(X_{i} {float(v)!r})" for i, v in enumerate(ce["x"])] + \
            [f"(Y_{j} {float(v)!r})" for j, v in enumerate(ce["y"])]
    return "sat\n(" + "\n ".join(lines) + ")\n"


def _config(inst: Instance, loaded: "LoadedNetwork | Exception", method: str, seed: int, timeout_scale: float) -> str:
    network = loaded.sha256 if isinstance(loaded, LoadedNetwork) else sha256_file(inst.network)
    blob = {"format": FORMAT, "version": FORMAT_VERSION, "method": method, "seed": seed,
            "timeout": inst.timeout * timeout_scale, "network": network, "property": sha256_file(inst.property)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _summary(records: list[dict], settings: dict) -> dict:
    counts = {s: sum(r["status"] == s for r in records) for s in STATUSES}
    per_network: dict[str, dict] = {}
    for r in records:
        stats = per_network.setdefault(Path(r["network"]).name, {s: 0 for s in STATUSES} | {"instances": 0})
        stats[r["status"]] += 1
        stats["instances"] += 1
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **settings, "instances": len(records),
            "counts": counts, "verified": counts["unsat"], "falsified": counts["sat"],
            "unsound": sum(bool(r.get("unsound")) for r in records), "per_network": per_network,
            "seconds": sum(r["seconds"] for r in records), "records": records}


def run_instances(instances: Sequence[Instance], out: PathLike, *, method: str = DEFAULT_PROPERTY_METHOD, seed: int = 0,
                  timeout_scale: float = 1.0, resume: bool = False, progress: bool = True,
                  device: "str | torch.device" = "cpu", check: bool = True,
                  methods: Optional[dict[str, Callable[..., Any]]] = None, jobs: int = 1) -> dict:
    """Run ``instances`` into the folder ``out`` (module docstring) and return the summary.

    ``jobs`` > 1 answers that many instances at once, each in its own process with
    ``torch.get_num_threads() // jobs`` threads (at least 1) and its full timeout: on a CPU,
    instances of small networks gain little from a second thread and much from a second process.
    Records are written as the instances finish, so a stopped run resumes where it was."""
    from tqdm.auto import tqdm

    table = PROPERTY_METHODS if methods is None else methods
    if method not in table:
        raise ValueError(f"method must be one of {', '.join(table)}, got {method!r}")
    if not timeout_scale > 0 or not math.isfinite(timeout_scale):
        raise ValueError(f"timeout_scale must be > 0, got {timeout_scale}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    if jobs > 1 and methods is not None:
        raise ValueError("jobs > 1 runs PROPERTY_METHODS in worker processes; a methods= table needs jobs=1")
    folder = Path(out) / "instances"
    folder.mkdir(parents=True, exist_ok=True)
    if not resume:
        for f in list(folder.glob("*.json")) + list(folder.glob("*.txt")):
            f.unlink()
    networks: dict[Path, "LoadedNetwork | Exception"] = {}
    records: dict[int, dict] = {}
    pending: list[tuple[int, Instance, str]] = []
    for pos, inst in enumerate(instances):
        if inst.network not in networks:
            networks[inst.network] = _load_or_error(inst.network, device)
        tag = _config(inst, networks[inst.network], method, seed, timeout_scale)
        record = _reuse(folder / f"{inst.key}.json", tag) if resume else None
        if record is None:
            pending.append((pos, inst, tag))
        else:
            records[pos] = record
    if records:
        log.info("resumed: kept %d finished instance(s) of %d", len(records), len(instances))
    counts = {s: 0 for s in STATUSES}
    bar = tqdm(total=len(instances), unit="instance", desc=f"verify {method}", disable=not progress)

    def finished(pos: int, record: dict) -> None:
        records[pos] = record
        counts[record["status"]] += 1
        bar.set_postfix({k: v for k, v in counts.items() if v}, refresh=False)
        bar.update(1)

    for record in records.values():
        counts[record["status"]] += 1
    bar.update(len(records))
    if jobs == 1:
        for pos, inst, tag in pending:
            record = _run_or_fail(inst, networks[inst.network], method, seed, timeout_scale, check, table)
            finished(pos, _keep(folder, inst, record, tag))
    else:
        _run_in_workers(pending, folder, jobs, dict(method=method, seed=seed, timeout_scale=timeout_scale,
                                                    check=check, device=str(device)), finished)
    bar.close()
    settings = {"method": method, "seed": seed, "timeout_scale": timeout_scale, "device": str(device), "jobs": jobs,
                "load_seconds": {p.name: n.seconds for p, n in networks.items() if isinstance(n, LoadedNetwork)}}
    summary = _summary([records[pos] for pos in range(len(instances))], settings)
    atomic_write_text(Path(out) / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def _load_or_error(path: Path, device: "str | torch.device") -> "LoadedNetwork | Exception":
    """The loaded network, or the error that says why it cannot be verified (every instance of it
    then records that error)."""
    try:
        return load_network(path, device)
    except (ValueError, TypeError) as exc:  # not convertible or not traceable
        log.error("%s: %s", path, exc)
        return exc


def _keep(folder: Path, inst: Instance, record: dict, tag: str) -> dict:
    """Write the record and its result text (atomically) and return it."""
    record["config"] = tag
    atomic_write_text(folder / f"{inst.key}.txt", result_text(record))
    atomic_write_text(folder / f"{inst.key}.json", json.dumps(record) + "\n")
    return record


def _run_in_workers(pending: list, folder: Path, jobs: int, settings: dict, finished: Callable[[int, dict], None]) -> None:
    """``pending`` instances answered by ``jobs`` worker processes (spawned: no state is inherited),
    each record kept as soon as its instance is done."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, torch.get_num_threads() // jobs)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=torch.set_num_threads,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(_worker, inst, settings): (pos, inst, tag) for pos, inst, tag in pending}
        for fut in as_completed(futures):
            pos, inst, tag = futures[fut]
            finished(pos, _keep(folder, inst, fut.result(), tag))


def _worker(inst: Instance, settings: dict) -> dict:
    """One instance in a worker process: load its network, answer and check it."""
    loaded = _load_or_error(inst.network, settings["device"])
    return _run_or_fail(inst, loaded, settings["method"], settings["seed"], settings["timeout_scale"],
                        settings["check"], PROPERTY_METHODS)


def _run_or_fail(inst: Instance, loaded: "LoadedNetwork | Exception", method: str, seed: int, timeout_scale: float,
                 check: bool, table: dict) -> dict:
    """:func:`run_instance`, or an ``unknown`` record naming the error that stopped it (a benchmark
    run goes on; the error is logged with its traceback)."""
    if isinstance(loaded, LoadedNetwork):
        try:
            return run_instance(inst, loaded, method=method, seed=seed, timeout_scale=timeout_scale, check=check,
                                methods=table)
        except Exception as exc:  # noqa: BLE001 - one instance's failure is recorded, the others still run
            log.exception("instance %s failed", inst.key)
            error = f"{type(exc).__name__}: {exc}"
    else:
        error = f"the network cannot be verified: {loaded}"
    return {"index": inst.index, "network": str(inst.network), "property": str(inst.property),
            "timeout": inst.timeout * timeout_scale, "method": method, "seed": seed, "status": "unknown",
            "seconds": 0.0, "domains": 0, "labels": [], "boxes": 0, "info": [], "unsound": False,
            "warnings": [error], "error": error, "check_seconds": 0.0}


def _reuse(path: Path, tag: str) -> Optional[dict]:
    """The record at ``path`` if a run of this configuration wrote it (else None, with a warning
    when a record is there but unreadable or of another run)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s cannot be read (%s); recomputing it", path, exc)
        return None
    if not isinstance(record, dict) or record.get("config") != tag or record.get("status") not in STATUSES:
        log.warning("%s was written by another configuration; recomputing it", path)
        return None
    return None if record.get("error") else record  # a failed instance is tried again
