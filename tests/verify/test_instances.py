"""VNN-COMP instances: the methods agree and stay sound, answers are checked, records and result text."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnx")
from verify_nets import onnx_mlp, robustness_vnnlib  # noqa: E402

from robustlab.verify.falsify import box_inward, box_outward, falsify  # noqa: E402
from robustlab.verify.instances import (  # noqa: E402
    Instance,
    load_network,
    read_instances,
    result_text,
    run_instance,
    run_instances,
)
from robustlab.verify.methods import PROPERTY_METHODS, PropertyResult, property_bounds  # noqa: E402
from robustlab.verify.spec import Property  # noqa: E402
from robustlab.verify.vnnlib import read_vnnlib  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random MLP as ONNX, and robustness properties of its prediction at one point for a range of radii."""
    folder = tmp_path_factory.mktemp("vnn")
    onnx_mlp(folder / "net.onnx", seed=3)
    loaded = load_network(folder / "net.onnx")
    centre = torch.rand(1, 3, 3, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        label = int(loaded.model(centre[None]).argmax())
    props = {}
    for eps in (0.002, 0.05, 0.2, 0.3, 0.5):
        path = folder / f"prop_{eps}.vnnlib"
        robustness_vnnlib(path, centre, eps, label, 3)
        props[eps] = path
    return folder, loaded, props


def test_methods_agree_with_the_complete_one_and_never_contradict_each_other(tiny) -> None:
    folder, loaded, props = tiny
    answers = {}
    radii = (0.002, 0.2, 0.3, 0.5)  # 0.2: IBP fails and CROWN proves; 0.3: only the MILP proves; 0.5: sat
    for eps in radii:
        inst = Instance(folder / "net.onnx", props[eps], 30.0)
        for method in PROPERTY_METHODS:
            rec = run_instance(inst, loaded, method=method)
            assert not rec["unsound"] and not rec["warnings"], (method, eps, rec)
            answers[eps, method] = rec["status"]
    for eps in radii:
        complete = answers[eps, "milp"]
        assert complete in ("unsat", "sat")
        for method in PROPERTY_METHODS:
            assert answers[eps, method] in (complete, "unknown"), (eps, method, answers)
    assert answers[0.002, "milp"] == "unsat" and answers[0.5, "milp"] == "sat"  # both answers exercised
    assert answers[0.3, "alpha-crown"] == "unknown" and answers[0.3, "milp"] == "unsat"  # the MILP proved it


def test_milp_finds_counterexamples_itself(tiny, monkeypatch) -> None:
    import robustlab.verify.methods as methods

    _, loaded, props = tiny
    monkeypatch.setattr(methods, "falsify", lambda *args, **kwargs: None)  # no search: the MILP alone
    (prop,) = read_vnnlib(props[0.5], input_shape=loaded.input_shape, num_outputs=3)
    res = PROPERTY_METHODS["milp"](loaded.net, prop, timeout=30.0)
    assert res.status == "sat" and res.info["found_by"] == "milp"
    assert bool(prop.contains(res.counterexample[None].double())[0])
    with torch.no_grad():
        assert bool(prop.unsafe(loaded.model(res.counterexample[None]))[0])
    assert PROPERTY_METHODS["alpha-crown"](loaded.net, prop, timeout=30.0).status == "unknown"


def test_property_bounds_hold_on_points_of_the_box(tiny) -> None:
    _, loaded, props = tiny
    (prop,) = read_vnnlib(props[0.2], input_shape=loaded.input_shape, num_outputs=3)
    g = torch.Generator().manual_seed(0)
    xs = prop.lower + torch.rand(512, *prop.lower.shape, generator=g, dtype=torch.float64) * (prop.upper - prop.lower)
    with torch.no_grad():
        y = loaded.model(xs.float()).double()
    c = torch.cat([c for c, _ in prop.groups])
    d = torch.cat([d for _, d in prop.groups])
    slack = y @ c.T - d  # (512, M)
    for method in ("ibp", "crown", "alpha-crown", "lp"):
        low = property_bounds(loaded.net, prop, method)
        assert bool((slack >= low - 1e-5).all()), method


def test_float_boxes_round_the_right_way() -> None:
    lower = torch.tensor([0.1, 1 / 3, 0.0], dtype=torch.float64)
    upper = torch.tensor([0.1, 2 / 3, 1e-30], dtype=torch.float64)
    prop = Property(lower, upper, ((torch.ones(1, 2), torch.zeros(1)),))
    lo, hi = box_outward(prop, torch.zeros((), dtype=torch.float32))
    assert bool((lo.double() <= lower).all() and (hi.double() >= upper).all())
    assert box_inward(prop, torch.zeros(())) is None  # no float32 equals 0.1 exactly
    prop = Property(lower[1:], upper[1:], ((torch.ones(1, 2), torch.zeros(1)),))
    lo, hi = box_inward(prop, torch.zeros(()))
    assert bool((lo.double() >= lower[1:]).all() and (hi.double() <= upper[1:]).all() and (lo <= hi).all())


def _fake(status: str, counterexample=None):
    def method(net, prop, *, timeout, seed=0):
        return PropertyResult(status, counterexample, None, 0.0)

    return method


def test_answers_are_checked_before_they_are_reported(tiny, caplog) -> None:
    folder, loaded, props = tiny
    sat_inst = Instance(folder / "net.onnx", props[0.5], 30.0, 7)
    (prop,) = read_vnnlib(props[0.5], input_shape=loaded.input_shape, num_outputs=3)
    # a method claiming unsat where a counterexample exists: flagged, and the confirmed sat reported
    rec = run_instance(sat_inst, loaded, method="liar", methods={"liar": _fake("unsat")})
    assert rec["unsound"] and rec["status"] == "sat" and "UNSOUND" in caplog.text
    x = torch.tensor(rec["counterexample"]["x"], dtype=torch.float64).reshape(prop.lower.shape)
    assert bool(prop.contains(x[None])[0]) and bool(prop.unsafe(torch.tensor([rec["counterexample"]["y"]]))[0])
    assert rec["counterexample"]["checked_by"] == "onnxruntime"
    # a counterexample that is not one (outside the box, or safe) becomes unknown with a warning
    for bogus in (prop.upper.float() + 0.1, prop.lower.float()):
        rec = run_instance(sat_inst, loaded, method="bogus", methods={"bogus": _fake("sat", bogus)})
        if rec["status"] == "sat":  # the box corner happens to be a counterexample: then it was checked
            assert rec["counterexample"]["checked_by"] == "onnxruntime"
            continue
        assert rec["status"] == "unknown" and "0007-net-prop_0.5" in rec["warnings"][0]
    # an answer given after the timeout is a timeout
    slow = Instance(folder / "net.onnx", props[0.002], 1e-9)
    rec = run_instance(slow, loaded, method="milp")
    assert rec["status"] == "timeout"


def test_result_text_is_the_competition_format(tiny) -> None:
    folder, loaded, props = tiny
    rec = run_instance(Instance(folder / "net.onnx", props[0.5], 30.0), loaded, method="alpha-crown")
    text = result_text(rec)
    lines = text.splitlines()
    assert lines[0] == "sat" and lines[1].startswith("((X_0 ") and lines[-1].endswith(")")
    assert len(lines) == 1 + 9 + 3 and lines[-3].startswith(" (Y_0 ")
    values = [float(line.strip(" ()").split()[1]) for line in lines[1:]]
    assert values[:9] == rec["counterexample"]["x"] and values[9:] == rec["counterexample"]["y"]
    assert result_text({"status": "unsat"}) == "unsat\n"


def test_falsify_finds_only_real_counterexamples(tiny) -> None:
    _, loaded, props = tiny
    (prop,) = read_vnnlib(props[0.5], input_shape=loaded.input_shape, num_outputs=3)
    x = falsify(loaded.net, prop, seed=1)
    assert x is not None and bool(prop.contains(x[None].double())[0])
    with torch.no_grad():
        assert bool(prop.unsafe(loaded.model(x[None]))[0])
    (small,) = read_vnnlib(props[0.002], input_shape=loaded.input_shape, num_outputs=3)
    assert falsify(loaded.net, small, seed=1) is None


def test_instances_file_is_read_strictly(tmp_path, tiny) -> None:
    folder, _, props = tiny
    csv = tmp_path / "instances.csv"
    net, prop = folder / "net.onnx", props[0.05]
    csv.write_text(f"{net},{prop},60\n\n{net}, {prop} ,7.5\n")
    rows = read_instances(csv)
    assert [r.timeout for r in rows] == [60.0, 7.5] and [r.index for r in rows] == [0, 1]
    csv.write_text(f"{net},{prop}\n")
    with pytest.raises(ValueError, match=r"instances.csv:1: expected 'network, property, timeout'"):
        read_instances(csv)
    csv.write_text(f"{net},{prop},soon\n")
    with pytest.raises(ValueError, match=r":1: the timeout 'soon'"):
        read_instances(csv)
    csv.write_text(f"{net},{prop},-3\n")
    with pytest.raises(ValueError, match=r":1: the timeout must be > 0"):
        read_instances(csv)
    csv.write_text(f"{net},missing.vnnlib,3\n")
    with pytest.raises(FileNotFoundError, match=r":1: the property .*missing.vnnlib"):
        read_instances(csv)


def test_a_network_that_cannot_be_verified_does_not_stop_the_run(tiny, tmp_path) -> None:
    from onnx import TensorProto, helper, save

    folder, _, props = tiny
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Erf", ["f"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 9])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, str(tmp_path / "erf.onnx"))
    rows = [Instance(tmp_path / "erf.onnx", props[0.05], 10.0, 0), Instance(folder / "net.onnx", props[0.05], 10.0, 1)]
    summary = run_instances(rows, tmp_path / "out", progress=False)
    bad, good = summary["records"]
    assert bad["status"] == "unknown" and "'Erf'" in bad["error"] and good["status"] == "unsat"


def test_run_instances_refuses_bad_jobs(tiny, tmp_path) -> None:
    folder, _, props = tiny
    rows = [Instance(folder / "net.onnx", props[0.05], 10.0, 0)]
    for jobs in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
            run_instances(rows, tmp_path / "out", progress=False, jobs=jobs)
    with pytest.raises(ValueError, match="methods= table needs jobs=1"):
        run_instances(rows, tmp_path / "out", progress=False, jobs=2, methods=dict(PROPERTY_METHODS))
