"""evaluate.run: one record per sample, numbers equal to direct attacks, resume, validation first."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from torch import nn

import robustlab as rl
from robustlab.attacks.base import Attack

batch_mod = importlib.import_module("robustlab.evaluate.batch")
shards = importlib.import_module("robustlab.evaluate.shards")

SUITE = rl.evaluate.Suite("t", (rl.evaluate.Threat("linf", (0.05, 0.2)),), ("fgsm", "pgd"), {"pgd": {"steps": 10}},
                          checks=False, exemplars=2)


def _json(report) -> dict:
    d = report.to_dict()
    d.pop("created")
    for m in d["models"]:
        m.pop("seconds")
        for t in m["threats"]:
            for row in t["rows"]:
                for a in row["attacks"]:
                    a.pop("seconds")
    return d


def test_report_numbers_equal_direct_attacks(digits_model, digits_test):
    x, y = digits_test.images[:30], digits_test.labels[:30]
    state = {k: v.clone() for k, v in digits_model.state_dict().items()}
    rep = rl.evaluate.run(digits_model, (x, y), SUITE, batch_size=30, progress=False, name="net")
    m = rep.models[0]
    assert rep.model("net") is m and m.data.n == 30 and len(m.labels) == 30
    with torch.no_grad():
        clean = (digits_model(x).argmax(1) == y)
    assert m.clean.k == int(clean.sum())
    for row, eps in zip(m.threats[0].rows, (0.05, 0.2)):
        tm = rl.ThreatModel("linf", eps)
        pgd = rl.attacks.PGD(tm, steps=10, seed=0).attack(digits_model, x, y)
        fgsm = rl.attacks.FGSM(tm, seed=0).attack(digits_model, x, y)
        assert row.attacks[1].robust.k == int(pgd.robust.sum())
        assert row.attacks[0].robust.k == int(fgsm.robust.sum())
        assert row.worst_case.k <= min(a.robust.k for a in row.attacks)
        assert row.attacks[1].distance.max is None or row.attacks[1].distance.max <= eps + 1e-6
    worst = [r.worst_case.value for r in m.threats[0].rows]
    assert worst == sorted(worst, reverse=True) and worst[0] <= m.clean.value
    # upper ends of the robustness intervals: found distances within the grid, 0 for misclassified images
    ups = m.threats[0].per_sample_upper
    assert all(u == 0.0 for u, c in zip(ups, clean.tolist()) if not c)
    assert all(u is None or u <= 0.2 + 1e-6 for u in ups)
    # the model is left as it was
    assert not digits_model.training and all(torch.equal(v, state[k]) for k, v in digits_model.state_dict().items())
    assert all(p.grad is None for p in digits_model.parameters())


def test_batches_give_the_same_per_sample_outcome_as_one_batch(digits_model, digits_test):
    one = rl.evaluate.run(digits_model, digits_test, SUITE, n=40, batch_size=40, progress=False, name="n")
    many = rl.evaluate.run(digits_model, digits_test, SUITE, n=40, batch_size=16, progress=False, name="n")
    assert one.models[0].clean.k == many.models[0].clean.k
    # FGSM is deterministic, so batching cannot change it
    assert one.models[0].threats[0].rows[1].attacks[0].robust.k == many.models[0].threats[0].rows[1].attacks[0].robust.k


def test_resume_skips_finished_batches(digits_model, digits_test, tmp_path, monkeypatch):
    out = tmp_path / "ev"
    calls = []
    real = batch_mod.BatchRunner.batch

    def counting(self, x, y, start, b):
        calls.append(b)
        if b == 2 and len(calls) == 3 and not getattr(counting, "crashed", False):
            counting.crashed = True
            raise KeyboardInterrupt  # an interruption during the third batch
        return real(self, x, y, start, b)

    monkeypatch.setattr(batch_mod.BatchRunner, "batch", counting)
    with pytest.raises(KeyboardInterrupt):
        rl.evaluate.run(digits_model, digits_test, SUITE, n=50, batch_size=12, out=out, progress=False, name="n")
    assert sorted(p.name for p in (out / "records").glob("batch_*")) == ["batch_000000.safetensors",
                                                                         "batch_000001.safetensors"]
    assert not (out / "report.json").exists()
    calls.clear()
    resumed = rl.evaluate.run(digits_model, digits_test, SUITE, n=50, batch_size=12, out=out, resume=True,
                              progress=False, name="n", html=False)
    assert calls == [2, 3, 4]  # the two finished batches were read back, not recomputed
    calls.clear()
    again = rl.evaluate.run(digits_model, digits_test, SUITE, n=50, batch_size=12, out=out, resume=True,
                            progress=False, name="n", html=False)
    assert calls == []
    fresh = rl.evaluate.run(digits_model, digits_test, SUITE, n=50, batch_size=12, progress=False, name="n")
    assert _json(resumed) == _json(again) == _json(fresh)
    assert json.loads((out / "report.json").read_text())["models"][0]["clean"]["n"] == 50
    with pytest.raises(ValueError, match="cannot resume"):
        rl.evaluate.run(digits_model, digits_test, SUITE, n=50, batch_size=12, out=out, resume=True, seed=1,
                        progress=False)


class _NoAttack(Exception):
    pass


@pytest.fixture()
def no_attacks(monkeypatch):
    """Any attack that runs fails the test: validation must come first."""
    def boom(self, *a, **k):
        raise _NoAttack(f"{type(self).__name__} ran before validation finished")

    monkeypatch.setattr(Attack, "attack", boom)


@pytest.mark.parametrize("make, error, message", [
    (lambda: rl.evaluate.Suite("s", attacks=("pgd", "nope")), ValueError, "unknown attack 'nope'"),
    (lambda: rl.evaluate.Suite("s", (rl.evaluate.Threat("l3", (0.1,)),)), ValueError, "unknown norm 'l3'"),
    (lambda: rl.evaluate.Suite("s", (rl.evaluate.Threat("linf", (0.1, 1.5)),)), ValueError, "larger than the input range"),
    (lambda: rl.evaluate.Suite("s", (rl.evaluate.Threat("l0", (2.5,)),)), ValueError, "must be an integer"),
    (lambda: rl.evaluate.Suite("s", (rl.evaluate.Threat("linf", (0.3, 0.1)),)), ValueError, "increasing"),
    (lambda: rl.evaluate.Suite("s", attack_options={"pgd": {"steps": 0}}), ValueError, "steps must be > 0"),
    (lambda: rl.evaluate.Suite("s", attack_options={"pgd": {"stepz": 3}}), ValueError, "cannot be built"),
    (lambda: rl.evaluate.Suite("s", attack_options={"bim": {}}), ValueError, "does not run"),
    (lambda: rl.evaluate.Suite("s", certifiers=(rl.evaluate.CertifierSpec("crown", {"eps": 2.0}),)), ValueError,
     "larger than the input range"),
    (lambda: rl.evaluate.Suite("s", certifiers=(rl.evaluate.CertifierSpec("smoothing", {"n": 5}),)), ValueError,
     "cannot certify anything"),
    (lambda: rl.evaluate.Suite("s", certifiers=(rl.evaluate.CertifierSpec("smoothing", {"sigmaa": 1}),)), ValueError,
     "no option"),
    (lambda: rl.evaluate.preset("thorough"), ValueError, "unknown suite 'thorough'"),
])
def test_bad_suites_are_refused(make, error, message, no_attacks):
    with pytest.raises(error, match=message):
        make()


def test_bad_runs_are_refused_before_any_attack(digits_model, digits_test, tmp_path, no_attacks):
    l2 = rl.evaluate.Suite("s", (rl.evaluate.Threat("l2", (1.0, 9.0)),), checks=False)  # sqrt(64) = 8 for 8x8 digits
    with pytest.raises(ValueError, match="exceeds the largest possible distance"):
        rl.evaluate.run(digits_model, digits_test, l2, n=8, progress=False)
    mnist_cnn = rl.models.create("cnn", "mnist", seed=0)
    with pytest.raises(ValueError, match="cannot process the data's images of shape"):
        rl.evaluate.run(mnist_cnn, digits_test, SUITE, n=8, progress=False)
    five = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    with pytest.raises(ValueError, match="the model has 5 classes"):
        rl.evaluate.run(five, digits_test, SUITE, n=50, progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="not writable"):
        rl.evaluate.run(digits_model, digits_test, SUITE, n=8, out=blocker / "sub", progress=False)
    with pytest.raises(ValueError, match="expected images in"):
        rl.evaluate.run(digits_model, (digits_test.images[:4] * 2, digits_test.labels[:4]), SUITE, progress=False)
    with pytest.raises(TypeError, match="nn.Module"):
        rl.evaluate.run("model", digits_test, SUITE)
    with pytest.raises(ValueError, match="resume=True needs out"):
        rl.evaluate.run(digits_model, digits_test, SUITE, n=8, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="no model"):
        rl.evaluate.run(digits_model, digits_test, rl.evaluate.Suite("s", transfer={"x": tmp_path / "missing"}),
                        n=8, progress=False)


def test_toml_suite(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('''
attacks = ["fgsm", "pgd"]
minimal = ["deepfool"]

[[threat]]
norm = "linf"
eps = [0.1, 0.2]

[[threat]]
norm = "L2"
eps = [1.0]
attacks = ["pgd"]

[attack_options.pgd]
steps = 7

[[certifier]]
method = "smoothing"
sigma = 0.5
n = 100

[checks]
n = 20

[transfer]
sources = ["runs/a", "runs/b"]
eps = [0.2]
''')
    s = rl.evaluate.load_suite(f)
    assert s.name == "mine" and [t.norm for t in s.threats] == ["linf", "l2"]
    assert s.threats[1].attacks == ("pgd",) and s.attacks_for(s.threats[0]) == ("fgsm", "pgd")
    assert s.build_attack("pgd", rl.ThreatModel("linf", 0.1)).steps == 7
    assert s.certifiers[0].resolved()["sigma"] == 0.5 and s.certifiers[0].resolved()["n0"] == 100
    assert s.checks.n == 20 and s.checks.enabled and s.minimal == ("deepfool",)
    assert s.transfer == {"a": "runs/a", "b": "runs/b"} and s.transfer_at(s.threats[0]) == (0.2,)
    assert s.transfer_at(s.threats[1]) == ()
    short = tmp_path / "short.toml"
    short.write_text('norm = "l2"\neps = [0.5]\n')
    assert rl.evaluate.load_suite(short).threats[0].norm == "l2"
    assert rl.evaluate.load_suite(short, eps=[0.25, 1.0]).threats[0].eps == (0.25, 1.0)
    bad = tmp_path / "bad.toml"
    bad.write_text('attacks = ["pgd"]\nthreads = 3\n')
    with pytest.raises(ValueError, match="unknown keys"):
        rl.evaluate.load_suite(bad)
    bad.write_text('attacks = ["pgd"\n')
    with pytest.raises(ValueError, match="not valid TOML"):
        rl.evaluate.load_suite(bad)
    with pytest.raises(FileNotFoundError):
        rl.evaluate.load_suite(tmp_path / "none.toml")


def test_presets_and_default_eps():
    q = rl.evaluate.preset("quick")
    assert q.attacks == ("fgsm", "pgd") and q.threats[0].eps == (0.1, 0.2, 0.3)
    assert rl.evaluate.preset("quick", dataset="cifar10").threats[0].eps == pytest.approx((2 / 255, 4 / 255, 8 / 255))
    std = rl.evaluate.preset("standard", "l2")
    attacks, _ = rl.evaluate.standard_attacks()
    assert std.attacks == attacks and std.threats[0].norm == "l2" and len(attacks) >= 3


# -- faults: a locked output folder, records of another run, corrupt records -------------------------


def test_output_folder_is_locked_while_a_run_writes(digits_model, digits_test, tmp_path, caplog):
    import os
    import socket
    import subprocess
    import sys

    out = tmp_path / "ev"
    out.mkdir()
    lock = out / shards.LOCK_NAME
    here = socket.gethostname()
    # a live run (here: this very process, as a concurrent run in another thread would be) holds it
    lock.write_text(json.dumps({"pid": os.getpid(), "host": here, "started": "now"}))
    with pytest.raises(FileExistsError, match=f"in use by another robustlab run \\(pid {os.getpid()}"):
        rl.evaluate.run(digits_model, digits_test, SUITE, n=8, out=out, progress=False)
    assert lock.is_file() and not (out / "records").exists()  # nothing written, the holder's lock kept
    # a lock left by a process that is gone is stale: taken over, and released after the run
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": here, "started": "long ago"}))
    with caplog.at_level("WARNING", logger="robustlab.evaluate"):
        rep = rl.evaluate.run(digits_model, digits_test, SUITE, n=8, out=out, progress=False, html=False)
    assert rep.models[0].data.n == 8 and "stale lock" in caplog.text
    assert not lock.exists() and (out / "report.json").is_file()


def test_resume_ignores_records_of_another_run_and_recomputes_corrupt_ones(digits_model, digits_test, tmp_path,
                                                                           monkeypatch, caplog):
    out = tmp_path / "ev"
    kw = dict(n=36, batch_size=12, out=out, progress=False, name="n", html=False)
    first = rl.evaluate.run(digits_model, digits_test, SUITE, **kw)
    rec = out / "records"
    manifest = json.loads((rec / "manifest.json").read_text())
    assert len(manifest["config"]) == 64
    from safetensors import safe_open

    with safe_open(str(rec / "batch_000000.safetensors"), framework="pt") as f:
        assert f.metadata()["config"] == manifest["config"] and f.metadata()["batch"] == "0"
    # batch 1 from a run of another configuration (another seed), batch 2 truncated
    other = tmp_path / "other"
    rl.evaluate.run(digits_model, digits_test, SUITE, **{**kw, "out": other, "seed": 1})
    (rec / "batch_000001.safetensors").write_bytes((other / "records" / "batch_000001.safetensors").read_bytes())
    data = (rec / "batch_000002.safetensors").read_bytes()
    (rec / "batch_000002.safetensors").write_bytes(data[: len(data) // 2])
    calls = []
    real = batch_mod.BatchRunner.batch

    def counting(self, x, y, start, b):
        calls.append(b)
        return real(self, x, y, start, b)

    monkeypatch.setattr(batch_mod.BatchRunner, "batch", counting)
    with caplog.at_level("WARNING", logger="robustlab.evaluate"):
        again = rl.evaluate.run(digits_model, digits_test, SUITE, **kw, resume=True)
    assert calls == [1, 2]  # batch 0 reused; the foreign and the corrupt batch recomputed
    assert "batch_000001.safetensors was written by another run" in caplog.text
    assert "batch_000002.safetensors cannot be read" in caplog.text
    assert _json(again) == _json(first)
    # garbage in place of a batch file: named and recomputed too
    (rec / "batch_000000.safetensors").write_bytes(b"\x00" * 40)
    calls.clear()
    caplog.clear()
    with caplog.at_level("WARNING", logger="robustlab.evaluate"):
        third = rl.evaluate.run(digits_model, digits_test, SUITE, **kw, resume=True)
    assert calls == [0] and "batch_000000.safetensors cannot be read" in caplog.text
    assert _json(third) == _json(first)


def test_resume_recomputes_corrupt_check_probes(digits_model, digits_test, tmp_path, caplog):
    suite = rl.evaluate.Suite("c", (rl.evaluate.Threat("linf", (0.1, 0.2)),), ("fgsm", "pgd"), {"pgd": {"steps": 5}},
                              checks=rl.evaluate.Checks(n=8, path_steps=4), exemplars=0)
    out = tmp_path / "ev"
    kw = dict(n=16, batch_size=16, out=out, progress=False, name="n", html=False)
    first = rl.evaluate.run(digits_model, digits_test, suite, **kw)
    (out / "records" / "checks.json").write_text('{"config": "abc", "probes": {tru')
    with caplog.at_level("WARNING", logger="robustlab.evaluate"):
        again = rl.evaluate.run(digits_model, digits_test, suite, **kw, resume=True)
    assert "checks.json cannot be read" in caplog.text
    assert [f.status for f in again.models[0].checks] == [f.status for f in first.models[0].checks]


def test_a_run_config_is_the_same_call_as_keywords(digits_model, digits_test):
    cfg = rl.evaluate.RunConfig(n=16, progress=False, name="n", seed=3)
    assert _json(rl.evaluate.run(digits_model, digits_test, SUITE, cfg)) == \
        _json(rl.evaluate.run(digits_model, digits_test, SUITE, n=16, progress=False, name="n", seed=3))
    with pytest.raises(TypeError, match="n_images.*takes the fields of RunConfig: batch_size, n,"):
        rl.evaluate.run(digits_model, digits_test, SUITE, n_images=16)
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        rl.evaluate.RunConfig(batch_size=0)
    with pytest.raises(ValueError, match="resume=True needs out"):
        rl.evaluate.run(digits_model, digits_test, SUITE, cfg, resume=True)
