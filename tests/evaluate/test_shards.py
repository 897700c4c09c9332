"""Work units with per-unit files (the engine of certify/verify under torchrun), in one process."""

from __future__ import annotations

import math

import pytest
import torch

from robustlab import distributed
from robustlab.certificates import Certificate
from robustlab.evaluate.shards import UnitFiles, run_units, unit_seed


def test_units_are_kept_resumed_and_recomputed_when_foreign_or_corrupt(tmp_path):
    calls = []

    def compute(u):
        calls.append(u)
        return {"value": torch.full((3,), float(u)), "seed": torch.tensor([unit_seed(7, u) % 1000])}

    parts = tmp_path / "parts"
    first = run_units(4, compute, UnitFiles(parts, "a"))
    assert calls == [0, 1, 2, 3] and [float(r["value"][0]) for r in first] == [0, 1, 2, 3]
    assert len(list(parts.glob("unit_*.safetensors"))) == 4
    (parts / "unit_000002.safetensors").write_bytes(b"garbage")  # a torn write
    calls.clear()
    again = run_units(4, compute, UnitFiles(parts, "a", resume=True))
    assert calls == [2] and all(torch.equal(a["value"], b["value"]) for a, b in zip(first, again))
    calls.clear()
    run_units(4, compute, UnitFiles(parts, "b", resume=True))  # another configuration: nothing reused
    assert calls == [0, 1, 2, 3]
    calls.clear()
    run_units(4, compute, UnitFiles(parts, "b"))  # no resume: recomputed from scratch
    assert calls == [0, 1, 2, 3]


def test_round_robin_and_unit_seeds_do_not_depend_on_the_rank_count():
    assert distributed.round_robin(7, 0, 2) == [0, 2, 4, 6] and distributed.round_robin(7, 1, 2) == [1, 3, 5]
    assert sorted(u for r in range(3) for u in distributed.round_robin(7, r, 3)) == list(range(7))
    assert unit_seed(1, 5) == unit_seed(1, 5) != unit_seed(1, 6) and 0 <= unit_seed(2**40, 3) < 2**63


def test_certificate_survives_its_tensors():
    c = Certificate(torch.tensor([1, -1]), torch.tensor([0.5, 0.0], dtype=torch.float64), torch.tensor([False, True]),
                    "l2", 0.001, samples=torch.tensor([100, 100]), p_lower=torch.tensor([0.9, math.nan]),
                    info={"method": "cohen", "stop": {"a": 1}})
    d = Certificate.from_tensors(c.to_tensors())
    assert d.to_dict() == c.to_dict() or str(d.to_dict()) == str(c.to_dict())
    assert d.count is None and d.norm == "l2" and d.alpha == 0.001 and d.info["stop"] == {"a": 1}


def test_evaluate_shows_progress_inside_a_batch(digits_model, digits_test, capsys):
    import robustlab as rl

    suite = rl.evaluate.Suite("p", (rl.evaluate.Threat("linf", (0.1,)),), ("fgsm", "pgd"), {"pgd": {"steps": 5}},
                              checks=rl.evaluate.Checks(enabled=False), exemplars=0)
    rl.evaluate.run(digits_model, digits_test, suite, n=16, batch_size=16, progress=True)
    err = capsys.readouterr().err
    assert "linf eps 0.1: pgd [2/2]" in err and "forward passes" in err
    assert not digits_model._forward_hooks  # the counting hook is gone


def test_json_tasks_run_in_order_with_json_results_when_not_distributed():
    from robustlab import distributed

    calls = []

    def task(i):
        def run():
            calls.append(i)
            return {"i": i, "pair": (i, 0.1 * i)}
        return run

    assert distributed.run_json_tasks([task(i) for i in range(3)]) == [{"i": i, "pair": [i, 0.1 * i]} for i in range(3)]
    assert calls == [0, 1, 2]
    with pytest.raises(TypeError):
        distributed.run_json_tasks([lambda: object()])  # not JSON: refused, never pickled


def test_units_are_written_under_the_folders_lock(tmp_path):
    import json
    import os
    import socket

    from robustlab.evaluate.shards import LOCK_NAME

    parts = tmp_path / "parts"
    parts.mkdir()
    lock = parts / LOCK_NAME
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
    with pytest.raises(FileExistsError, match="in use by another robustlab run"):
        run_units(2, lambda u: {"v": torch.zeros(1)}, UnitFiles(parts, "a"))
    assert lock.is_file() and not list(parts.glob("unit_*"))  # the holder's lock kept, nothing written
    lock.unlink()
    run_units(2, lambda u: {"v": torch.zeros(1)}, UnitFiles(parts, "a"))
    assert not lock.exists() and len(list(parts.glob("unit_*"))) == 2  # released after the run
