"""Branch and bound as the instances runner's complete method (``--method bab``, the default): it
agrees with the MILP, never verifies a property an attack breaks, and answers sigmoid / tanh networks
soundly; counterexamples are checked by onnxruntime on the ONNX file. Tiny self-made networks only."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnx")
from verify_nets import onnx_mlp, robustness_vnnlib  # noqa: E402

from robustlab.verify.falsify import falsify  # noqa: E402
from robustlab.verify.instances import Instance, load_network, run_instance, run_instances  # noqa: E402
from robustlab.verify.methods import DEFAULT_PROPERTY_METHOD, PROPERTY_METHODS  # noqa: E402
from robustlab.verify.vnnlib import read_vnnlib  # noqa: E402

RADII = (0.005, 0.05, 0.12, 0.3)


def _instances(folder, seed: int, activation: str = "Relu", sizes: tuple = (9, 16, 12, 4)):
    """An ONNX MLP and robustness properties of its prediction at a random point, one per radius."""
    net = folder / f"net{seed}-{activation}.onnx"
    onnx_mlp(net, seed=seed, sizes=sizes, activation=activation)
    loaded = load_network(net)
    centre = torch.rand(1, 3, 3, generator=torch.Generator().manual_seed(100 + seed))
    with torch.no_grad():
        label = int(loaded.model(centre[None]).argmax())
    props = []
    for eps in RADII:
        path = folder / f"prop{seed}-{activation}-{eps}.vnnlib"
        robustness_vnnlib(path, centre, eps, label, sizes[-1])
        props.append(path)
    return net, loaded, props


def _attacked(loaded, path) -> bool:
    """Whether APGD (three seeds) finds a counterexample to the property at ``path``."""
    props = read_vnnlib(path, input_shape=loaded.input_shape, num_outputs=loaded.num_outputs)
    return any(falsify(loaded.net, p, seed=s, restarts=32, steps=100) is not None for p in props for s in range(3))


def test_bab_is_the_default_complete_method() -> None:
    assert DEFAULT_PROPERTY_METHOD == "bab" and "bab" in PROPERTY_METHODS and "milp" in PROPERTY_METHODS


@pytest.mark.parametrize("seed", range(4))
def test_bab_agrees_with_milp_and_never_verifies_what_an_attack_breaks(seed: int, tmp_path) -> None:
    net, loaded, props = _instances(tmp_path, seed)
    answers = []
    for path in props:
        inst = Instance(net, path, 60.0)
        bab = run_instance(inst, loaded, method="bab")
        milp = run_instance(inst, loaded, method="milp")
        assert not bab["unsound"] and not bab["warnings"], bab
        assert bab["status"] in ("unsat", "sat"), bab  # complete on a network this small
        assert milp["status"] in (bab["status"], "unknown", "timeout"), (bab, milp)
        if _attacked(loaded, path):
            assert bab["status"] == "sat"
        if bab["status"] == "sat":
            assert bab["counterexample"]["checked_by"] == "onnxruntime"
        answers.append(bab["status"])
    assert answers[0] == "unsat" or answers[-1] == "sat"  # the radii span both answers on every net


def test_bab_decides_both_answers_through_the_runner(tmp_path) -> None:
    net, loaded, props = _instances(tmp_path, 11)
    rows = [Instance(net, p, 60.0, i) for i, p in enumerate(props)]
    summary = run_instances(rows, tmp_path / "out", progress=False)
    assert summary["method"] == "bab" and summary["unsound"] == 0
    statuses = [r["status"] for r in summary["records"]]
    assert "unsat" in statuses and "sat" in statuses and set(statuses) <= {"unsat", "sat"}
    assert statuses == sorted(statuses, key=("unsat", "sat").index)  # a larger ball never turns sat into unsat


@pytest.mark.parametrize("activation", ["Sigmoid", "Tanh"])
def test_bab_answers_sigmoid_and_tanh_networks_soundly(activation: str, tmp_path) -> None:
    net, loaded, props = _instances(tmp_path, 5, activation)
    statuses = []
    for path in props:
        rec = run_instance(Instance(net, path, 30.0), loaded, method="bab")
        assert not rec["unsound"] and not rec["warnings"], rec
        if _attacked(loaded, path):
            assert rec["status"] == "sat"
        if rec["status"] == "sat":
            assert rec["counterexample"]["checked_by"] == "onnxruntime"
        statuses.append(rec["status"])
    assert statuses[0] == "unsat"  # a small ball is proved through the S-shaped relaxations
