#!/usr/bin/env bash
# eightys in one command, on a machine that has only Python 3.11:
#
#   ./scripts/80.sh server/http.lua [eightys flags]   set up (first run) and serve
#   ./scripts/80.sh test [pytest args]                 set up and run the test suite
#   ./scripts/80.sh bench [bench.py args]              set up and run the benchmark
#
# Setup: a virtualenv in .venv with the project and its test extras installed
# (redone when pyproject.toml changes), plus the Debian packages a command needs
# when they are missing and we may install them (root with apt-get).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

log() { printf '80.sh: %s\n' "$*" >&2; }

ensure_venv() {
    local stamp="$VENV/.eightys-installed"
    if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$stamp" -nt "$ROOT/pyproject.toml" ]; then
        return
    fi
    log "setting up $VENV (first run or pyproject.toml changed)"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[test]"
    touch "$stamp"
}

# ensure_debian CMD PACKAGE...: install PACKAGEs if CMD is missing (best effort).
ensure_debian() {
    local cmd="$1"; shift
    command -v "$cmd" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing $* (for $cmd)"
        if [ -z "${APT_UPDATED:-}" ]; then
            apt-get update -qq >/dev/null && APT_UPDATED=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        log "$cmd is missing and cannot be installed here (needs root and apt-get)"
        return 1
    fi
}

case "${1:-}" in
    test)
        shift
        ensure_venv
        # the live-reload test drives a real browser (skipped if missing, except under CI)
        ensure_debian chromium chromium || true
        # the dev-mode test reaches the server from a network namespace (root only)
        ensure_debian curl curl || true
        ensure_debian ip iproute2 || true
        cd "$ROOT"
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    bench)
        shift
        ensure_venv
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uvicorn>=0.30"
        ensure_debian wrk wrk
        ensure_debian ab apache2-utils
        ensure_debian nginx nginx-light || true
        ensure_debian taskset util-linux || true
        cd "$ROOT"
        exec "$VENV/bin/python" "$ROOT/scripts/bench.py" "$@"
        ;;
    *)
        ensure_venv
        cd "$ROOT"
        exec "$VENV/bin/eightys" "$@"
        ;;
esac
