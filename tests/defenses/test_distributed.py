"""Training under torchrun: 2 CPU processes with gloo give the single-process result (same global
batches), only rank 0 writes, and a worker killed mid-epoch resumes from the last checkpoint
without losing or repeating an epoch, ending bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import robustlab as rl
from robustlab import distributed
from robustlab.training import FGSMRegularized, train
from robustlab.training.loop import CRASH_ENV

# 449 = 7 batches of 64 + 1: the last global batch has one sample, so rank 1 gets none (weight 0).
TRAIN = ["--dataset", "digits", "--arch", "mlp", "--batch-size", "64", "--train-n", "449", "--val-n", "100",
         "--adversary", "fgsm-reg", "--eps", "0.1", "--robust-val", "50", "--robust-val-steps", "3", "--lr", "3e-3",
         "--seed", "3", "--no-progress"]


def _torchrun(tmp_path: Path, out: str, *args: str, env: dict | None = None, timeout: float = 120.0):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "robustlab",
           "train", *TRAIN, "--out", out, *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full_env.pop(CRASH_ENV, None)
    full_env.update(env or {})
    return subprocess.run(cmd, cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=timeout)


def _state(m: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _history(path: Path) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in rl.models.load_metadata(path)["history"]]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """An uninterrupted 3-epoch run on 2 gloo processes (shared by the tests below)."""
    root = tmp_path_factory.mktemp("ddp")
    proc = _torchrun(root, "full", "--epochs", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc


def test_shard_splits_a_global_batch_in_order():
    for n, w in [(64, 2), (53, 2), (10, 3), (1, 2), (0, 4)]:
        parts = [distributed.shard(n, r, w) for r in range(w)]
        idx = torch.arange(n)
        assert torch.equal(torch.cat([idx[p] for p in parts]), idx)  # the global batch, in order
        sizes = [p.stop - p.start for p in parts]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\)"):
        distributed.shard(8, 2, 2)


def test_single_process_helpers_are_the_identity(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    info = distributed.init_from_env()
    assert (info.rank, info.world_size, info.is_main, info.distributed, info.backend) == (0, 1, True, False, None)
    assert distributed.rank() == 0 and distributed.world_size() == 1 and distributed.is_main()
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum(t) is t and torch.equal(t, torch.tensor([1.0, 2.0]))
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    distributed.barrier()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="WORLD_SIZE=2 but RANK, MASTER_ADDR, MASTER_PORT not set"):
        distributed.init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer, got 'two'"):
        distributed.init_from_env()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_ddp_route_is_freed_while_the_process_group_lives(monkeypatch):
    """A DDP wrapper left in a reference cycle outlives destroy_process_group into interpreter
    shutdown, where gloo's threads abort the process (a rare SIGABRT of one rank at the end of a
    torchrun job). RouteDDP.close() frees it at once (train() closes its route), and cleanup()
    collects such cycles before destroying the group."""
    import gc
    import weakref

    from robustlab.training.parallel import wrap_ddp

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    enabled = gc.isenabled()
    gc.disable()  # only explicit collections: the properties below must not rest on a lucky gc pass

    def trained_route():
        model, route = wrap_ddp(torch.nn.Linear(4, 3), torch.device("cpu"))
        route.train()
        route(torch.randn(5, 4)).sum().backward()  # the reducer has all-reduced a bucket
        return model, route

    try:
        model, route = trained_route()
        route.ddp.cycle = [route.ddp]  # a cycle through the wrapper, as DDP's own hooks make
        ddp = weakref.ref(route.ddp)
        route.close()
        assert ddp() is None  # freed now, not at some later collection
        route.close()  # idempotent
        with pytest.raises(RuntimeError, match="closed"):
            route(torch.randn(1, 4))
        assert model(torch.randn(2, 4)).shape == (2, 3)  # the bare module is untouched
        _, route = trained_route()
        ddp = weakref.ref(route.ddp)
        cycle: list = [route]
        cycle.append(cycle)  # as train()'s frame was kept: unreachable, alive until a collection
        del route, cycle
        assert ddp() is not None
        distributed.cleanup()
        assert ddp() is None and not torch.distributed.is_initialized()
    finally:
        if enabled:
            gc.enable()
        distributed.cleanup()


def test_two_gloo_processes_match_one_process(two_process_run, digits_train):
    root, proc = two_process_run
    assert proc.stdout.count("saved full:") == 1  # rank 0 prints, rank 1 is silent
    ddp = rl.models.load(root / "full" / "checkpoint")  # the last epoch (the final model is the best one)
    meta = rl.models.load_metadata(root / "full")
    assert meta["training"]["world_size"] == 2 and sorted(p.name for p in (root / "full").iterdir()) == [
        "best", "checkpoint", "metadata.json", "model.safetensors"]
    # The same run in this process: the CLI's hold-out split and model, trained with train().
    data = digits_train.subset(449)
    order = torch.randperm(449, generator=torch.Generator().manual_seed(3))
    val, tr = data.subset(order[:100].sort().values), data.subset(order[100:].sort().values)
    single = train(rl.models.create("mlp", tr, seed=3), tr, adversary=FGSMRegularized(rl.ThreatModel("linf", 0.1)),
                   epochs=3, batch_size=64, lr=3e-3, seed=3, val_data=val, progress=False, select_best=False,
                   evaluate_fn=rl.training.robust_validation(rl.ThreatModel("linf", 0.1), n=50, steps=3, seed=3))
    a, b = _state(single.model), _state(ddp)
    assert a.keys() == b.keys()
    for k in a:  # the same gradient up to the order of float sums
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
    hist = _history(root / "full")
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for h_single, h_ddp in zip(single.history, hist):
        assert h_ddp["train_loss"] == pytest.approx(h_single["train_loss"], rel=1e-5)
        assert h_ddp["val_accuracy"] == pytest.approx(h_single["val_accuracy"], abs=0.011)
        assert h_ddp["robust_accuracy"] == pytest.approx(h_single["robust_accuracy"], abs=0.021)
    # Every run's metadata: the adversary, its parameters, clean and robust validation per epoch.
    assert meta["training"]["adversary"] == {"name": "fgsm-reg", "threat": rl.ThreatModel("linf", 0.1).to_dict(),
                                             "alpha": 0.5}
    assert meta["training"]["evaluate_fn"]["steps"] == 3 and meta["training"]["evaluate_fn"]["n"] == 50
    assert all({"val_accuracy", "robust_accuracy", "train_loss"} <= set(h) for h in meta["history"])


def test_a_killed_worker_resumes_without_losing_or_repeating_an_epoch(two_process_run):
    root, _ = two_process_run
    # Rank 1 dies hard after 3 batches of epoch 2: torchrun tears the job down.
    crashed = _torchrun(root, "part", "--epochs", "3", env={CRASH_ENV: "1:2:3"})
    assert crashed.returncode != 0 and "exitcode  : 17" in crashed.stderr
    state = json.loads((root / "part" / "checkpoint" / "train_state.json").read_text())
    assert state["epoch"] == 1 and [h["epoch"] for h in state["history"]] == [1]
    # Restart with --resume: both ranks load epoch 1's checkpoint and train epochs 2 and 3 once.
    resumed = _torchrun(root, "part", "--epochs", "3", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming part after epoch 1 of 3" in resumed.stderr + resumed.stdout
    assert _history(root / "part") == _history(root / "full")  # epochs 1, 2, 3 exactly once, same numbers
    for sub in (".", "checkpoint", "best"):
        a, b = _state(rl.models.load(root / "full" / sub)), _state(rl.models.load(root / "part" / sub))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical


SCRIPT = '''
import sys, torch, robustlab as rl
from safetensors.torch import save_file
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Dropout(0.1),
                      nn.Linear(8 * 8 * 8, 10))
data = rl.data.load("digits", "train").subset(300)
res = rl.training.train(model, data, epochs=2, batch_size=64, val_data=data, progress=False, out="bn",
                        adversary=rl.training.TRADES(rl.ThreatModel("linf", 0.1), steps=2))
rank = rl.distributed.rank()
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"rank{rank}.safetensors",
          {"history": repr([h["train_loss"] for h in res.history]), "world": str(rl.distributed.world_size())})
'''


def test_a_plain_script_with_batchnorm_runs_unchanged_under_torchrun(tmp_path):
    """train() joins the process group itself; TRADES (two train-mode passes per step) works with
    DDP, and BatchNorm running statistics end identical on every rank."""
    from safetensors import safe_open

    (tmp_path / "script.py").write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(CRASH_ENV, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "script.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    states, metas = [], []
    for r in (0, 1):
        with safe_open(str(tmp_path / f"rank{r}.safetensors"), "pt") as f:
            states.append({k: f.get_tensor(k) for k in f.keys()})
            metas.append(f.metadata())
    assert metas[0] == metas[1] and metas[0]["world"] == "2"  # the same reduced losses on both ranks
    assert states[0].keys() == states[1].keys() and "1.running_mean" in states[0]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])  # weights and BN buffers
    from robustlab.models.checkpoint import read_state

    saved = read_state(tmp_path / "bn")[0]  # written by rank 0 alone
    assert saved.keys() == states[0].keys() and all(torch.equal(saved[k], states[0][k]) for k in saved)
