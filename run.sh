#!/usr/bin/env bash
# One-stop set-up for a fresh machine (Python 3.11 + pip + apt, root, package registries only).
#
#   bash run.sh demo [ARGS...]   set up, then `robustlab demo` on real offline data (MNIST)
#   bash run.sh test [ARGS...]   set up, then the default test suite (pytest)
#   bash run.sh setup            set up only
#
# Set-up is idempotent: Debian packages (offline Fashion-MNIST, jemalloc, Chromium for the browser test),
# a virtual environment in .venv with torch==2.13.0 (CPU wheel; pinned, since an unpinned torch
# pulls a multi-GB CUDA build) and robustlab installed in editable mode with its test extras.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "run.sh: please install with your package manager: ${missing[*]} (continuing without)" >&2
        return 0
    fi
    echo "run.sh: apt-get install ${missing[*]}"
    apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || echo "run.sh: could not install ${missing[*]}; the tests that need them will be skipped" >&2
}

setup() {
    local extras="$1"
    if command -v dpkg >/dev/null; then
        apt_install dataset-fashion-mnist libjemalloc2  # jemalloc: flat, faster memory (src/robustlab/_launch.py)
        [ "$extras" = "test" ] && apt_install chromium chromium-driver
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    local pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
    if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
        "${pip[@]}" install torch==2.13.0
    fi
    local stamp="$VENV/.robustlab-$extras" target="."
    [ "$extras" = "test" ] && target=".[test]"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "${pip[@]}" install -c constraints.txt -e "$target"
        touch "$stamp"
    fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    demo)
        setup demo
        exec "$VENV/bin/robustlab" demo "$@"
        ;;
    test)
        setup test
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    setup)
        setup test
        ;;
    *)
        echo "usage: bash run.sh demo|test|setup [ARGS...]" >&2
        exit 2
        ;;
esac
