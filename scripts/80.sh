#!/usr/bin/env bash
# eightys in one command, on a machine that has only Python 3.11:
#
#   ./scripts/80.sh server/http.lua [eightys flags]   set up (first run) and serve
#   ./scripts/80.sh test [pytest args]                 set up and run the test suite
#   ./scripts/80.sh bench [bench.py args]              set up and run the benchmark
#   ./scripts/80.sh bench wamp [wamp_bench.py args]    the WAMP router benchmark
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

# The HTTP core is compiled in place (Cython, at install): after an edit of its
# sources the old .so would shadow the new source, so rebuild it first. The list
# is setup.py's COMPILED, without extensions.
ensure_compiled() {
    local src so part built=""
    for src in eightys/protocols/http_core eightys/protocols/stats eightys/lua_call \
               eightys/protocols/llhttp eightys/protocols/sockwrite eightys/protocols/tcp_socket \
               eightys/protocols/tls_socket \
               eightys/protocols/http; do
        so=$(ls "$ROOT/$src".cpython-*.so 2>/dev/null | head -n 1)
        [ -n "$so" ] && built=1
        for part in "$ROOT/$src".py "$ROOT/$src".pyx "$ROOT/$src".pxd; do
            # a module added to COMPILED after this checkout was built has no .so yet
            if [ -f "$part" ] && { [ -z "$so" ] || [ "$part" -nt "$so" ]; }; then
                so=""
                break
            fi
        done
        if [ -z "$so" ] && [ -n "$built$(ls "$ROOT"/eightys/protocols/*.cpython-*.so 2>/dev/null)" ]; then
            log "rebuilding the compiled HTTP core (its source changed)"
            (cd "$ROOT" && "$VENV/bin/python" setup.py -q build_ext --inplace >/dev/null)
            return
        fi
    done
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

# ensure_node_clients: npm install tests/node/package.json's clients (once per change).
ensure_node_clients() {
    local dir="$ROOT/tests/node"
    if [ -d "$dir/node_modules" ] && [ "$dir/node_modules" -nt "$dir/package.json" ]; then
        return 0
    fi
    command -v npm >/dev/null 2>&1 || ensure_debian npm npm || return 1
    log "installing the npm test clients into tests/node/"
    (cd "$dir" && npm install --no-audit --no-fund --silent) && touch "$dir/node_modules"
}

case "${1:-}" in
    test)
        shift
        ensure_venv
        ensure_compiled
        # the live-reload and chat tests drive a real browser (skipped if missing, except under CI)
        ensure_debian chromium chromium || true
        # npm clients (WebSocket interop with npm `ws`), into the folder the tests own
        ensure_node_clients || true
        # the dev-mode test reaches the server from a network namespace (root only)
        ensure_debian curl curl || true
        ensure_debian ip iproute2 || true
        # the README's two-servers-behind-nginx deployment is run by a test
        ensure_debian nginx nginx-light || true
        cd "$ROOT"
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    bench)
        shift
        ensure_venv
        ensure_compiled
        if [ "${1:-}" = wamp ]; then  # ./scripts/80.sh bench wamp [wamp_bench.py args]
            shift
            ensure_debian taskset util-linux || true
            cd "$ROOT"
            exec "$VENV/bin/python" "$ROOT/scripts/wamp_bench.py" "$@"
        fi
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
        ensure_compiled
        cd "$ROOT"
        exec "$VENV/bin/eightys" "$@"
        ;;
esac
