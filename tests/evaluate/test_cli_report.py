"""The command line from evaluation to report: `robustlab evaluate` writes a report that `robustlab
report` re-renders and `robustlab compare` puts side by side (moved here from tests/report: the
report tests render a fixed report and never run an evaluation)."""

from __future__ import annotations

import argparse

import pytest

import robustlab as rl


def _cli(argv):
    from robustlab.cli import evaluate, report

    parser = argparse.ArgumentParser(prog="robustlab")
    sub = parser.add_subparsers(dest="command")
    evaluate.register(sub)
    report.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, digits_train):
    path = tmp_path_factory.mktemp("models") / "digits-mlp"
    model = rl.models.create("mlp", digits_train, seed=0)
    rl.training.train(model, digits_train, epochs=3, out=path, progress=False)
    return path


def test_cli_evaluate_report_compare(saved_model, tmp_path, capsys):
    out = tmp_path / "ev"
    assert _cli(["evaluate", "--model", str(saved_model), "--attack", "fgsm,pgd", "--eps", "0.05,0.2", "--n", "24",
                 "--out", str(out), "--no-progress", "--smoothing", "0.25", "--smoothing-n", "100"]) == 0
    printed = capsys.readouterr().out
    rep = rl.report.load(out / "report.json")
    m = rep.models[0]
    assert m.name == "digits-mlp" and m.data.n == 24 and [r.eps for r in m.threats[0].rows] == [0.05, 0.2]
    assert m.threats[0].attacks == ["fgsm", "pgd"] and m.certificates and m.checks
    pgd = m.threats[0].rows[1].attacks[1].robust.value
    assert f"{pgd:.4f}" in printed and "wrote report.json and index.html" in printed
    assert (out / "index.html").is_file()
    (out / "index.html").unlink()
    assert _cli(["report", str(out / "report.json")]) == 0
    assert (out / "index.html").is_file()
    assert _cli(["compare", str(out), str(out / "report.json"), "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "digits-mlp (2)" in printed and (tmp_path / "cmp" / "index.html").is_file()
    with pytest.raises(ValueError, match="larger than the input range"):
        _cli(["evaluate", "--model", str(saved_model), "--eps", "1.5", "--out", str(tmp_path / "e2")])
    assert not (tmp_path / "e2" / "report.json").exists()


