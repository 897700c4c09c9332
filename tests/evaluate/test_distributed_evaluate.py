"""`robustlab evaluate` under torchrun: 2 gloo processes give the report of 1 process (every number
equal), and a run whose rank was killed resumes from the batch files both ranks wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import robustlab as rl
from robustlab.evaluate.shards import CRASH_ENV

# 5 batches of 16 images: rank 0 does batches 0, 2, 4 and rank 1 batches 1, 3; the check probes
# (dealt to both ranks after the records are shared) and a smoothing certifier are part of the report.
ARGS = ["--attack", "fgsm,pgd", "--eps", "0.05,0.2", "--n-images", "80", "--batch-size", "16", "--smoothing", "0.25",
        "--smoothing-n", "64", "--seed", "5", "--no-html"]


def _evaluate(cwd: Path, model: Path, out: str, *args: str, ranks: int = 1, env: dict | None = None):
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)] if ranks > 1 else []
    cmd = [sys.executable, *launcher, "-m", "robustlab", "evaluate", "--model", str(model), *ARGS, "--out", out, *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full_env.pop(CRASH_ENV, None)
    full_env.update(env or {})
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


def _numbers(path: Path):
    """report.json without what may differ between runs: timings and the date."""

    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if "second" not in k and k not in ("created", "date")}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    return strip(json.loads(path.read_text()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_train):
    root = tmp_path_factory.mktemp("dist-eval")
    model_dir = root / "digits-mlp"
    rl.training.train(rl.models.create("mlp", digits_train, seed=0), digits_train, epochs=3, out=model_dir,
                      progress=False)
    one = _evaluate(root, model_dir, "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _evaluate(root, model_dir, "two", ranks=2)
    assert two.returncode == 0, two.stderr[-3000:]
    return root, model_dir, one, two


def test_two_gloo_processes_write_the_report_of_one(runs):
    root, _, one, two = runs
    a, b = _numbers(root / "one" / "report.json"), _numbers(root / "two" / "report.json")
    assert a == b  # every accuracy, distance, certificate, check and exemplar equal
    assert len(list((root / "two" / "records").glob("batch_*.safetensors"))) == 5  # both ranks wrote theirs
    assert "on 2 processes" in two.stdout and two.stdout.count("wrote report.json") == 1  # rank 0 prints


@pytest.mark.slow
def test_a_killed_rank_resumes_from_the_batches_written(runs):
    root, model_dir, _, _ = runs
    # Rank 0 dies hard after its first batch file: torchrun tears the job down.
    crashed = _evaluate(root, model_dir, "part", ranks=2, env={CRASH_ENV: "0:1"})
    assert crashed.returncode != 0
    assert not (root / "part" / "report.json").exists()
    kept = sorted(p.name for p in (root / "part" / "records").glob("batch_*.safetensors"))
    assert "batch_000000.safetensors" in kept and len(kept) < 5
    resumed = _evaluate(root, model_dir, "part", "--resume", ranks=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed: reused" in resumed.stderr + resumed.stdout
    assert _numbers(root / "part" / "report.json") == _numbers(root / "one" / "report.json")


def _command(cwd: Path, argv: list[str], ranks: int):
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)] if ranks > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(CRASH_ENV, None)
    proc = subprocess.run([sys.executable, *launcher, "-m", "robustlab", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("command", ["certify", "verify"])
def test_certify_and_verify_on_two_processes_match_one(runs, command):
    root, model_dir, _, _ = runs
    # 5 chunks of 8 images (rank 0: chunks 0, 2, 4); chunk u's noise is seeded from (seed, u)
    argv = (["certify", "--sigma", "0.25", "--n0", "20", "--samples", "200", "--n-images", "40", "--chunk", "8",
             "--seed", "3"] if command == "certify" else
            ["verify", "--method", "crown", "--eps", "0.02", "--n-images", "40", "--batch-size", "8"])
    results = []
    for ranks in (1, 2):
        out = root / f"{command}-{ranks}.json"
        proc = _command(root, [*argv, "--model", str(model_dir), "--out", str(out), "--no-progress"], ranks)
        assert proc.stdout.count(f"wrote {out}") == 1 and not (root / f"{out.name}.parts").exists()
        results.append(json.loads(out.read_text()))
    one, two = results
    assert one["per_image"] == two["per_image"] and len(one["per_image"]) == 40
    if command == "certify":
        assert one["certified_accuracy"] == two["certified_accuracy"] and one["certificate"] == two["certificate"]
    else:
        assert one["verified_accuracy"] == two["verified_accuracy"] and 0 < one["verified_accuracy"]
