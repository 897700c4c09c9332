"""One vocabulary (issue 21): the options several subcommands share mean the same in each (spelling,
dest, type, help), every numeric option is parsed by a typed validator, so a bad value (0 images, a
negative radius, NaN, a word) is an argparse error naming the option as the user typed it, and the
old spellings still work with a deprecation note. The tests walk the real ``robustlab`` parser."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from robustlab.cli import build_parser
from robustlab.cli._common import SHARED
from robustlab.cli.evaluate import parse_names
from robustlab.cli.options import (TYPED, float_list, key_value, memory_size, nonnegative_float, nonnegative_int,
                                   nonnegative_list, positive_float, positive_int, positive_list, probability,
                                   unit_interval)

PARSER = build_parser()
#: What each command requires beside the option under test.
REQUIRED = {"attack": ["--model", "m", "--attack", "fgsm", "--out", "a.safetensors"],
            "evaluate": ["--model", "m"], "certify": ["--model", "m"], "train": ["--out", "runs/x"],
            "detect": ["--model", "m", "--detector", "knn", "--eps", "0.3", "--out", "d.json"]}


def parse(argv: list[str], parser: argparse.ArgumentParser = PARSER) -> argparse.Namespace:
    return parser.parse_args([*argv, *REQUIRED.get(argv[0], [])])

#: Values each typed validator must refuse (each a different way to be wrong).
BAD = {
    positive_int: ("0", "-1", "1.5", "nan", "ten"),
    nonnegative_int: ("-1", "1.5", "ten"),
    positive_float: ("0", "-1", "nan", "inf", "ten"),
    nonnegative_float: ("-0.1", "nan", "-inf", "ten"),
    probability: ("0", "1", "1.5", "nan"),
    unit_interval: ("-0.1", "1.5", "nan"),
    float_list: ("ten", "0.1,,0.2", "0.1,nan"),
    nonnegative_list: ("-0.1", "0.1,-1", "nan", "ten"),
    positive_list: ("0", "0.2,-1", "nan"),
    memory_size: ("lots", "0"),
}
#: Types that parse something other than a number.
NOT_NUMERIC = (None, str, parse_names, key_value)


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _commands(sub, (*prefix, name))


COMMANDS = dict(_commands(PARSER))
OPTIONS = [(cmd, a) for cmd, sub in COMMANDS.items() for a in sub._actions
           if a.option_strings and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


def _has(dest: str) -> set[str]:
    return {" ".join(cmd) for cmd, a in OPTIONS if a.dest == dest}


def test_the_walk_sees_every_subcommand():
    names = {" ".join(c) for c in COMMANDS}
    assert {"attack", "evaluate", "certify", "verify", "detect", "train", "demo", "report", "compare", "data fetch",
            "models fetch"} <= names
    # the image count is one option wherever a command takes the first N images
    assert _has("n_images") == {"attack", "evaluate", "certify", "verify", "detect", "demo"}
    assert _has("samples") == {"evaluate", "certify"}
    assert {"attack", "evaluate", "certify", "verify", "detect"} <= _has("model")
    assert {"attack", "evaluate", "certify", "verify", "detect", "train"} <= _has("dataset") & _has("root")
    assert {"attack", "evaluate", "certify", "verify", "train"} <= _has("device") & _has("batch_size")
    assert {"evaluate", "certify", "verify", "train", "demo"} <= _has("resume")


@pytest.mark.parametrize("cmd,action", [(c, a) for c, a in OPTIONS if a.dest in SHARED],
                         ids=lambda v: " ".join(v) if isinstance(v, tuple) else v.dest)
def test_a_shared_option_has_one_spelling_type_and_meaning(cmd, action):
    spec = SHARED[action.dest]
    assert action.option_strings[: len(spec.flags)] == list(spec.flags), "the spelling comes first"
    assert action.type is spec.type
    assert action.choices == spec.choices
    assert isinstance(action, argparse._StoreTrueAction) == (spec.action == "store_true")
    assert action.help.startswith(spec.help), f"{' '.join(cmd)} {spec.flags[0]}: help {action.help!r}"


@pytest.mark.parametrize("cmd,action", OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else v.dest)
def test_a_shared_spelling_never_names_another_option(cmd, action):
    # --out, --samples, ... are the shared options wherever they appear; --n is the image count
    # (or, in certify, the deprecated noise-sample spelling); --eps is the threat radius (or deprecated)
    deprecated = getattr(action, "deprecated", ())
    for dest, spec in SHARED.items():
        if set(spec.flags) & set(action.option_strings):
            assert action.dest == dest
    if "--n" in action.option_strings:
        assert action.dest == "n_images" or "--n" in deprecated
    if "--eps" in action.option_strings:
        assert (action.dest == "eps" and action.type in (nonnegative_float, nonnegative_list)) or "--eps" in deprecated


@pytest.mark.parametrize("cmd,action", OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else v.dest)
def test_every_numeric_option_has_a_typed_validator(cmd, action):
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)):
        return
    assert action.type in TYPED or action.type in NOT_NUMERIC, \
        f"{' '.join(cmd)} {action.option_strings[0]}: type {action.type!r} is not a validator of robustlab.cli.options"
    if action.type in NOT_NUMERIC and action.choices is None:
        assert not isinstance(action.default, (int, float)) or isinstance(action.default, bool), \
            f"{' '.join(cmd)} {action.option_strings[0]} has a numeric default but no numeric type"


TYPED_OPTIONS = [(c, a) for c, a in OPTIONS if a.type in BAD]


@pytest.mark.parametrize("cmd,action", TYPED_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else v.dest)
def test_a_bad_value_is_an_argparse_error_naming_the_option(cmd, action, capsys):
    assert set(BAD) <= set(TYPED)
    for flag in action.option_strings:
        for bad in BAD[action.type]:
            with pytest.raises(SystemExit) as exc:
                PARSER.parse_args([*cmd, f"{flag}={bad}"])  # --eps=-0.1: a value, not an option
            assert exc.value.code == 2
            err = capsys.readouterr().err
            assert f"argument {'/'.join(action.option_strings)}: " in err, err
            assert repr(bad) in err, err  # the value as typed
            assert "Traceback" not in err


@pytest.mark.parametrize("command", ["attack", "evaluate", "verify", "detect", "demo"])
def test_n_zero_names_n_images_and_its_alias(command, capsys):
    with pytest.raises(SystemExit) as exc:
        PARSER.parse_args([command, "--n", "0"])
    assert exc.value.code == 2
    assert "argument --n-images/--n: must be an integer >= 1, got '0'" in capsys.readouterr().err
    assert parse([command, "--n", "7"]).n_images == 7  # the old spelling still parses, with no note
    assert capsys.readouterr().err == ""


def test_main_refuses_bad_values_before_any_work(tmp_path, capsys):
    from robustlab.cli import main

    out = tmp_path / "a.safetensors"
    for argv, named in [(["attack", "--model", "m", "--attack", "pgd", "--eps", "nan"], "argument --eps"),
                        (["certify", "--model", "m", "--sigma", "0.25", "--alpha", "1.5"], "argument --alpha"),
                        (["evaluate", "--model", "m", "--eps", "0.1,-0.3"], "argument --eps"),
                        (["train", "--dataset", "digits", "--arch", "mlp", "--adversary", "pgd", "--eps", "0.1",
                          "--steps", "0"], "argument --steps"),
                        (["detect", "--model", "m", "--detector", "knn", "--eps", "0.3", "--fpr", "0"],
                         "argument --fpr")]:
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--out", str(out)])
        assert exc.value.code == 2
        assert named in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("argv,dest,value,old", [
    (["certify", "--n", "200"], "samples", 200, "--n"),
    (["certify", "--method", "pixeldp", "--eps", "0.5"], "dp_eps", 0.5, "--eps"),
    (["evaluate", "--smoothing", "0.25", "--smoothing-n", "64"], "samples", 64, "--smoothing-n"),
])
def test_a_deprecated_spelling_works_with_one_note(argv, dest, value, old, capsys):
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated"):
        args = parse(argv + [old, str(value)], build_parser())  # given twice: noted once
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    assert err.count(f"{old} is deprecated") == 1 and SHARED[dest].flags[0] in err
    new = [SHARED[dest].flags[0] if a == old else a for a in argv]
    assert getattr(parse(new, build_parser()), dest) == value
    assert capsys.readouterr().err == ""


def test_typed_values_parse_to_numbers():
    args = parse(["evaluate", "--eps", "0.1, 0.2,0.3", "--n-images", "40", "--samples", "64",
                              "--batch-size", "8", "--seed", "0"])
    assert (args.eps, args.n_images, args.samples, args.batch_size, args.seed) == ((0.1, 0.2, 0.3), 40, 64, 8, 0)
    args = parse(["certify", "--alpha", "0.05", "--radii", "0,0.5", "--dp-eps", "1", "--delta", "0"])
    assert (args.alpha, args.radii, args.dp_eps, args.delta) == (0.05, (0.0, 0.5), 1.0, 0.0)
    assert parse(["attack", "--max-memory", "8G"]).max_memory == "8G"
    assert parse(["train", "--robust-val", "0", "--val-split", "0.1"]).robust_val == 0


def _readme_commands() -> list[list[str]]:
    """The ``robustlab ...`` command lines of the README's shell blocks (continuations joined)."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands, shell = [], None
    for line in text.replace("\\\n", " ").splitlines():
        if line.startswith("```"):
            shell = None if shell is not None else line[3:].strip() in ("", "bash", "sh", "console", "shell")
            continue
        if shell and re.match(r"\s*(robustlab|torchrun|python3? -m robustlab)\b", line):
            words = shlex.split(line, comments=True)
            if "robustlab" in words:
                commands.append(words[words.index("robustlab") + 1:])
    return commands


def test_the_readme_command_lines_parse_without_a_deprecated_spelling(capsys):
    commands = [c for c in _readme_commands() if c and c[0] in {" ".join(k) for k in COMMANDS}]
    assert len(commands) >= 10
    for argv in commands:
        build_parser().parse_args(argv)  # every line parses as printed (SystemExit otherwise)
        assert "deprecated" not in capsys.readouterr().err, argv


def test_alpha_is_only_ever_a_probability(capsys):
    """``--alpha`` is certify's failure probability; train's FGSM-regularised clean-loss weight is
    ``--clean-weight`` (``--alpha`` there still works for one release, with a note)."""
    args = build_parser().parse_args(["train", "--dataset", "digits", "--arch", "mlp", "--out", "o",
                                      "--adversary", "fgsm-reg", "--clean-weight", "0.3"])
    assert args.clean_weight == 0.3 and not hasattr(args, "alpha")
    with pytest.warns(DeprecationWarning, match="--alpha is deprecated"):
        old = build_parser().parse_args(["train", "--dataset", "digits", "--arch", "mlp", "--out", "o",
                                         "--adversary", "fgsm-reg", "--alpha", "0.3"])
    assert old.clean_weight == 0.3 and "--alpha is deprecated" in capsys.readouterr().err
