"""The program's start-up: jemalloc preloaded by one re-exec, never for a library import."""

import os
import subprocess
import sys

import pytest

from robustlab import _launch

LIB = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
ARGV = ["python", "-m", "robustlab", "evaluate"]


def test_plan_preloads_jemalloc_once():
    env = _launch.preload_plan({"PATH": "/bin"}, "linux", ARGV, LIB)
    assert env is not None and env["LD_PRELOAD"] == LIB and env["PATH"] == "/bin"
    assert env["MALLOC_CONF"] == "dirty_decay_ms:-1,muzzy_decay_ms:-1"  # no purge-and-fault churn
    assert _launch.preload_plan({"MALLOC_CONF": "narenas:1"}, "linux", ARGV, LIB)["MALLOC_CONF"] == "narenas:1"
    # the re-executed process sees its own preload and runs on
    assert _launch.preload_plan(env, "linux", ARGV, LIB) is None


def test_plan_keeps_the_users_preload_and_allocator():
    env = _launch.preload_plan({"LD_PRELOAD": "/opt/libfoo.so"}, "linux", ARGV, LIB)
    assert env is not None and env["LD_PRELOAD"] == f"{LIB} /opt/libfoo.so"
    assert _launch.preload_plan({"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}, "linux", ARGV, LIB) is None


@pytest.mark.parametrize("environ,platform,argv,lib", [
    ({_launch.ENV: "system"}, "linux", ARGV, LIB),  # opted out
    ({}, "darwin", ARGV, LIB),  # Linux only
    ({}, "linux", [], LIB),  # no command line to re-execute
    ({}, "linux", ARGV, None),  # not installed
])
def test_plan_runs_as_is(environ, platform, argv, lib):
    assert _launch.preload_plan(environ, platform, argv, lib) is None


def test_plan_names_a_bad_choice_and_a_missing_library(capsys):
    with pytest.raises(SystemExit) as exc:
        _launch.preload_plan({_launch.ENV: "tcmalloc"}, "linux", ARGV, LIB)
    assert exc.value.code == 2
    assert capsys.readouterr().err == ("robustlab: error: ROBUSTLAB_ALLOCATOR must be one of auto, jemalloc, system, "
                                       "got 'tcmalloc'\n")
    assert _launch.preload_plan({_launch.ENV: "jemalloc"}, "linux", ARGV, None) is None
    assert "no libjemalloc.so.2 was found" in capsys.readouterr().err


def test_import_does_not_load_torch_or_reexec():
    code = "import sys, robustlab._launch, robustlab; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(not sys.platform.startswith("linux") or _launch.find_jemalloc() is None,
                    reason="jemalloc not installed (Debian: libjemalloc2)")
def test_reexec_maps_jemalloc_and_keeps_the_arguments():
    code = ("import sys; from robustlab._launch import use_jemalloc; use_jemalloc(); "
            "print('jemalloc' in open('/proc/self/maps').read(), sys.argv[1:])")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", _launch.ENV)}
    out = subprocess.run([sys.executable, "-c", code, "a", "--b"], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "True ['a', '--b']"
    env[_launch.ENV] = "system"
    out = subprocess.run([sys.executable, "-c", code, "a"], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False ['a']"


@pytest.mark.skipif(not sys.platform.startswith("linux") or _launch.find_jemalloc() is None,
                    reason="jemalloc not installed (Debian: libjemalloc2)")
def test_release_memory_purges_jemalloc_without_time_decay():
    code = ("import torch; from robustlab.evaluate.shards import _releaser, release_memory\n"
            "rss = lambda: int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])\n"
            "x = [torch.ones(1000, 1000) for _ in range(50)]; del x\n"  # 200 MB freed, kept by jemalloc
            "before = rss(); release_memory(); print(_releaser().__name__, before - rss())")
    env = {**os.environ, "LD_PRELOAD": _launch.find_jemalloc(), "MALLOC_CONF": _launch.MALLOC_CONF}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    name, freed_kb = out.stdout.split()
    assert name == "purge" and int(freed_kb) > 150_000  # most of the 200 MB goes back to the OS
