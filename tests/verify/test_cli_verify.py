"""robustlab verify: prints verified accuracy with its interval and writes per-image JSON."""

from __future__ import annotations

import json

import pytest

import robustlab as rl
from robustlab.cli import main


@pytest.fixture()
def saved_mlp(tmp_path):
    path = tmp_path / "mlp"
    rl.models.save(rl.models.create("mlp", dataset="digits", seed=0), path, metadata={"dataset": "digits"})
    return path


@pytest.mark.parametrize("method", ["crown", "milp"])
def test_verify_at_zero_eps_verifies_exactly_the_correct_images(saved_mlp, tmp_path, capsys, method) -> None:
    out = tmp_path / "v.json"
    rc = main(["verify", "--model", str(saved_mlp), "--eps", "0", "--method", method, "--n", "12", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "verified accuracy" in text and "95% CI" in text
    payload = json.loads(out.read_text())
    assert payload["n"] == 12 and len(payload["per_image"]) == 12
    assert all(r["verified"] == r["correct"] for r in payload["per_image"])
    lo, hi = payload["verified_accuracy_ci95"]
    assert lo <= payload["verified_accuracy"] <= hi


def test_verify_refuses_milp_with_l2(saved_mlp, capsys) -> None:
    rc = main(["verify", "--model", str(saved_mlp), "--eps", "0.1", "--method", "milp", "--norm", "l2"])
    assert rc == 2 and "linf" in capsys.readouterr().err


# -- VNN-COMP instances: --onnx/--vnnlib and --instances ------------------------------------------


@pytest.fixture()
def instance_files(tmp_path):
    pytest.importorskip("onnx")
    import torch
    from verify_nets import onnx_mlp, robustness_vnnlib

    from robustlab.models.onnx import convert

    bench = tmp_path / "bench"
    (bench / "nets").mkdir(parents=True)
    onnx_mlp(bench / "nets" / "net.onnx", seed=3)
    centre = torch.rand(1, 3, 3, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        label = int(convert(bench / "nets" / "net.onnx")(centre[None]).argmax())
    for eps in (0.002, 0.3, 0.5):
        robustness_vnnlib(bench / f"prop_{eps}.vnnlib", centre, eps, label, 3)
    rows = [f"nets/net.onnx,prop_{eps}.vnnlib,{t}" for eps, t in ((0.002, 20), (0.3, 30), (0.5, 20))]
    (bench / "instances.csv").write_text("\n".join(rows) + "\n")
    return bench


def _ort_output(net_path, x):
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(net_path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": np.asarray(x, np.float32).reshape(1, 1, 3, 3)})[0].reshape(-1)


def test_verify_onnx_vnnlib_prints_the_competition_answer(instance_files, tmp_path, capsys) -> None:
    from robustlab.verify.vnnlib import read_vnnlib

    net = instance_files / "nets" / "net.onnx"
    rc = main(["verify", "--onnx", str(net), "--vnnlib", str(instance_files / "prop_0.002.vnnlib"), "--timeout", "20",
               "--out", str(tmp_path / "a"), "--no-progress"])
    assert rc == 0 and capsys.readouterr().out.splitlines()[0] == "unsat"
    assert (tmp_path / "a" / "summary.json").is_file()
    prop_path = instance_files / "prop_0.5.vnnlib"
    rc = main(["verify", "--onnx", str(net), "--vnnlib", str(prop_path), "--timeout", "20", "--method", "alpha-crown",
               "--out", str(tmp_path / "b"), "--no-progress"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0 and lines[0] == "sat"
    values = [float(line.strip(" ()").split()[1]) for line in lines[1:13]]
    x, y = values[:9], values[9:]
    (prop,) = read_vnnlib(prop_path, input_shape=(1, 3, 3), num_outputs=3)
    import torch

    assert bool(prop.contains(torch.tensor(x, dtype=torch.float64).reshape(1, 1, 3, 3))[0])
    ref = torch.tensor(_ort_output(net, x), dtype=torch.float64)  # the printed counterexample, re-run independently
    assert bool(prop.unsafe(ref[None])[0])
    torch.testing.assert_close(ref, torch.tensor(y, dtype=torch.float64), atol=1e-6, rtol=0)
    record = next((tmp_path / "b" / "instances").glob("*.json"))
    assert json.loads(record.read_text())["counterexample"]["checked_by"] == "onnxruntime"


def test_verify_instances_runs_a_benchmark_and_resumes(instance_files, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    args = ["verify", "--instances", str(instance_files / "instances.csv"), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "net.onnx" in text and "total" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"unsat": 2, "sat": 1, "timeout": 0, "unknown": 0} and summary["unsound"] == 0
    assert [r["timeout"] for r in summary["records"]] == [20.0, 30.0, 20.0]
    records = sorted((out / "instances").glob("*.json"))
    assert len(records) == 3 and len(list((out / "instances").glob("*.txt"))) == 3
    stamps = {p.name: p.stat().st_mtime_ns for p in records}
    records[1].unlink()  # as if the run had been killed before the second instance was written
    assert main(args + ["--resume"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in again["records"]] == [r["status"] for r in summary["records"]]
    now = {p.name: p.stat().st_mtime_ns for p in sorted((out / "instances").glob("*.json"))}
    assert now[records[0].name] == stamps[records[0].name] and now[records[2].name] == stamps[records[2].name]
    assert records[1].is_file()
    # another configuration (the timeouts scaled) recomputes everything
    assert main(args + ["--resume", "--timeout-scale", "0.5"]) == 0
    assert [r["timeout"] for r in json.loads((out / "summary.json").read_text())["records"]] == [10.0, 15.0, 10.0]



def test_verify_instances_in_worker_processes_give_the_same_answers(instance_files, tmp_path, capsys) -> None:
    """--jobs 2: two instances at a time in spawned processes; the same records (in the file's order),
    each written as its instance finishes, and a resumed run keeps them."""
    base = ["verify", "--instances", str(instance_files / "instances.csv"), "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "one")]) == 0
    assert main(base + ["--out", str(tmp_path / "two"), "--jobs", "2"]) == 0
    one, two = (json.loads((tmp_path / k / "summary.json").read_text()) for k in ("one", "two"))
    assert two["jobs"] == 2 and two["counts"] == one["counts"]
    keys = ("index", "network", "property", "timeout", "status", "config")
    assert [[r[k] for k in keys] for r in two["records"]] == [[r[k] for k in keys] for r in one["records"]]
    assert all(r["counterexample"]["checked_by"] for r in two["records"] if r["status"] == "sat")
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "two" / "instances").glob("*.json")}
    assert len(stamps) == 3
    assert main(base + ["--out", str(tmp_path / "two"), "--jobs", "2", "--resume"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "two" / "instances").glob("*.json")} == stamps
    capsys.readouterr()

def test_verify_instances_write_the_report(instance_files, tmp_path) -> None:
    out = tmp_path / "run"
    assert main(["verify", "--instances", str(instance_files / "instances.csv"), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    (m,) = rl.report.load(out).models
    (v,) = m.verification
    assert m.command == "verify" and m.clean is None and m.labels == [] and m.data.n == 3
    assert v.statuses == [{"unsat": "verified", "sat": "falsified"}.get(r["status"], r["status"])
                          for r in summary["records"]]
    assert v.counts == {"verified": 2, "falsified": 1, "unknown": 0, "timeout": 0} and v.verified.k == 2
    assert v.items[0] == "net.onnx / prop_0.002.vnnlib" and len(v.seconds) == 3
    html = (out / "index.html").read_text()
    assert "net.onnx / prop_0.3.vnnlib" in html and "Clean accuracy" not in html
    assert main(["report", str(out), "--out", str(tmp_path / "again")]) == 0


@pytest.mark.parametrize(("extra", "match"), [
    (["--onnx", "n.onnx"], "--onnx and --vnnlib go together"),
    (["--instances", "x.csv", "--model", "m"], "give one of"),
    ([], "give one of"),
    (["--onnx", "n.onnx", "--vnnlib", "p.vnnlib", "--method", "crown-ibp"], "--method with --onnx"),
    (["--model", "m"], "--eps is required"),
])
def test_verify_modes_are_checked(extra, match, capsys) -> None:
    assert main(["verify", *extra]) == 2
    assert match in capsys.readouterr().err


def test_verify_takes_an_onnx_model_on_images(tmp_path, capsys) -> None:
    pytest.importorskip("onnx")
    from verify_nets import onnx_mlp

    onnx_mlp(tmp_path / "digits.onnx", seed=0, sizes=(64, 16, 10), input_shape=(64,))  # declared (1, 64)
    rc = main(["verify", "--model", str(tmp_path / "digits.onnx"), "--dataset", "digits", "--eps", "0", "--n", "8",
               "--out", str(tmp_path / "v.json"), "--no-progress"])
    assert rc == 0
    payload = json.loads((tmp_path / "v.json").read_text())
    assert all(r["verified"] == r["correct"] for r in payload["per_image"])
