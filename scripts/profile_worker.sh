#!/usr/bin/env bash
# Instructions per request of a whole running worker (callgrind), uvloop and libuv
# included: what scripts/profile_request.py leaves out (the read callback, the GIL
# that uvloop takes back for every callback, the real transport's write, TLS).
#
#   scripts/profile_worker.sh            # server/simple_http.lua, plain HTTP
#   scripts/profile_worker.sh --tls      # the same over HTTPS (a throwaway certificate)
#   DURATION=20 scripts/profile_worker.sh
#
# The master runs normally; its worker runs under valgrind (instrumentation off
# until the load is warm: 5 s of wrk first, so LuaJIT has compiled its traces).
# Then the counters are zeroed, wrk -c 50 runs for $DURATION seconds, and the
# dump is divided by the requests wrk counted. Needs valgrind and wrk (Debian).
# Instruction counts do not depend on the machine's load; they are slower to get
# (valgrind runs the worker ~50x slower) but repeatable, unlike req/s.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
PORT="${PORT:-18090}"
DURATION="${DURATION:-10}"
OUT="$(mktemp -d /tmp/eightys-profile.XXXXXX)"
SCHEME=http
TLS_ARGS=()
if [ "${1:-}" = --tls ]; then
    SCHEME=https
    "$PYTHON" - "$OUT" <<'EOF'
import datetime, sys
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
out = Path(sys.argv[1])
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
(out / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
(out / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
EOF
    TLS_ARGS=(--tls-cert "$OUT/cert.pem" --tls-key "$OUT/key.pem")
fi
URL="$SCHEME://127.0.0.1:$PORT/echo?name=Abcde"

# the worker's interpreter: valgrind around the venv's python (the master's spawn
# uses sys.executable; valgrind cannot run the master itself, it lacks pidfd_open)
cat > "$OUT/python" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$OUT/callgrind.%p "$PYTHON" "\$@"
EOF
chmod +x "$OUT/python"

cd "$ROOT"
"$PYTHON" -c "import sys; sys.executable = sys.argv.pop(1); sys.argv[0] = 'eightys'
from eightys.cli import main; sys.exit(main())" "$OUT/python" server/simple_http.lua \
    -c 1 -p "$PORT" "${TLS_ARGS[@]}" > "$OUT/server.log" 2>&1 &
MASTER=$!
trap 'kill $MASTER 2>/dev/null || true' EXIT
for _ in $(seq 120); do
    curl -sk -o /dev/null "$URL" && break
    sleep 1
done
wrk -t1 -c50 -d5s -H 'Connection: keep-alive' "$URL" > /dev/null
WORKER=$(pgrep -f "valgrind.*eightys.worker" | tail -n 1)
callgrind_control -i on "$WORKER" > /dev/null
callgrind_control -z "$WORKER" > /dev/null
wrk -t1 -c50 -d"${DURATION}s" -H 'Connection: keep-alive' "$URL" | tee "$OUT/wrk.txt"
callgrind_control -d "$WORKER" > /dev/null
REQUESTS=$(grep -oE '^ *[0-9]+ requests' "$OUT/wrk.txt" | tr -dc 0-9)
DUMP=$(ls "$OUT"/callgrind.*.1 | head -n 1)
echo
echo "instructions per request ($REQUESTS requests; the dump: $DUMP)"
callgrind_annotate --inclusive=yes "$DUMP" 2>/dev/null \
    | grep -E 'PROGRAM TOTALS|HttpProtocol_5data_received \[|_dispatch_events \[|LuaDispatch_call \[|HttpConnection_receive_data \[|HttpProtocol__flush \[|SSLProtocol_buffer_updated_impl \[|_do_handshake \[|SSL_read_ex \[|SSL_write_ex \[' \
    | awk -v n="$REQUESTS" '{ count = $1; gsub(",", "", count); name = $0; sub(/.*%\) +/, "", name);
                              sub(/ .*/, "", name); sub(/.*:/, "", name); printf "%8.0f  %s\n", count / n, name }'
[ "$SCHEME" = https ] && echo "(the handshakes of wrk's 50 new connections are in the total: SSL_do_handshake)"
echo "(LuaJIT's collector runs in steps: a short run moves the Lua figures by a few hundred)"
