# Shared helpers for integration tests: real binaries, a private data directory per test,
# every started process stopped by pid on exit. Source it, call checks, end with `finish`.
set -euo pipefail

MQPKI_BUILD=${MQPKI_BUILD:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../build" && pwd)}
MQPKI_SOURCE=${MQPKI_SOURCE:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
export PATH="$MQPKI_BUILD/bin:$PATH"
TEST_NAME=$(basename "$0" .sh)
T=$(mktemp -d "/tmp/mqpki-$TEST_NAME.XXXXXX")
export MQPKI_HOME="$T/home"
unset MQPKI_PIN
PIDS=()
PASSED=0
FAILED=0

cleanup() {
  local pid i
  # PostgreSQL last, with a fast shutdown, once its clients are gone.
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && [ "$pid" != "${PG_PID:-}" ] && kill "$pid" 2>/dev/null || true
  done
  if [ -n "${PG_PID:-}" ]; then
    kill -INT "$PG_PID" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$PG_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  done
  if [ "$FAILED" -eq 0 ] && [ -z "${KEEP:-}" ]; then rm -rf "$T"; else echo "# kept $T"; fi
}
trap cleanup EXIT

# Fault injection runs processes under strace; LeakSanitizer cannot work under ptrace, so in
# sanitizer builds a traced process skips the leak check (ASan and UBSan still run).
strace() { ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" command strace "$@"; }

ok() { PASSED=$((PASSED + 1)); echo "ok - $*"; }
not_ok() { FAILED=$((FAILED + 1)); echo "not ok - $*"; }

# check DESCRIPTION COMMAND...: passes when the command exits 0.
check() {
  local what=$1; shift
  if "$@" >"$T/out" 2>"$T/err"; then ok "$what"; else
    not_ok "$what (exit $?)"; sed 's/^/#   /' "$T/err" | head -5; fi
}

# expect_fail STATUS DESCRIPTION COMMAND...: passes when the command exits with STATUS and
# prints exactly one line on stderr. The line is left in $T/err.
expect_fail() {
  local want=$1 what=$2 got=0; shift 2
  "$@" >"$T/out" 2>"$T/err" || got=$?
  local lines
  lines=$(wc -l <"$T/err")
  if [ "$got" -eq "$want" ] && [ "$lines" -eq 1 ]; then ok "$what: $(cat "$T/err")"; else
    not_ok "$what: exit $got (want $want), $lines stderr lines"; sed 's/^/#   /' "$T/err" | head -5; fi
}

# assert DESCRIPTION CONDITION-COMMAND...
assert() {
  local what=$1; shift
  if "$@"; then ok "$what"; else not_ok "$what"; fi
}

contains() { grep -q -- "$2" "$1"; }

finish() {
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

# free_port: a free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

# wait_for SECONDS COMMAND...: polls every 0.1 s until the command succeeds.
wait_for() {
  local limit=$(($1 * 10)) i=0; shift
  until "$@" 2>/dev/null; do
    i=$((i + 1)); [ "$i" -ge "$limit" ] && return 1
    sleep 0.1
  done
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
alive() { kill -0 "$1" 2>/dev/null; }
gone() { ! kill -0 "$1" 2>/dev/null; }

# A fresh CA in $MQPKI_HOME.
# MQPKI_TEST_STORE=postgresql runs a test's CA on a private PostgreSQL server instead of the
# embedded SQLite file (the store back ends must be interchangeable).
init_ca() {
  local store=()
  if [ "${MQPKI_TEST_STORE:-}" = postgresql ]; then
    [ -n "${PG_URL:-}" ] || start_pg
    store=(--store "$PG_URL")
  fi
  mqpki "${store[@]}" init "$@" >"$T/init.out" 2>"$T/init.err" || { cat "$T/init.err"; return 1; }
  mqpki ca export --out "$T/chain.pem"
}

# init_ca_pg [init options...]: init_ca with the store on the server start_pg started.
init_ca_pg() {
  mqpki --store "$PG_URL" init "$@" >"$T/init.out" 2>"$T/init.err" || { cat "$T/init.err"; return 1; }
  mqpki ca export --out "$T/chain.pem"
}

# make_csr NAME [openssl req options...]: key $T/NAME.key, CSR $T/NAME.csr (PEM).
make_csr() {
  local name=$1; shift
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
    -keyout "$T/$name.key" -out "$T/$name.csr" "$@" 2>/dev/null
}

# start_mqpkid [args...]: starts mqpkid on an ephemeral loopback port, waits until it listens;
# sets MQPKID_PID, MQPKID_PORT, MQPKID_URL and MQPKID_LOG.
start_mqpkid() {
  MQPKID_LOG="$T/mqpkid.$(date +%s%N).log"
  mqpkid --listen 127.0.0.1:0 "$@" 2>"$MQPKID_LOG" &
  MQPKID_PID=$!
  PIDS+=("$MQPKID_PID")
  local i
  for i in $(seq 1 100); do
    MQPKID_PORT=$(grep -o 'listening on https://[^ ]*' "$MQPKID_LOG" 2>/dev/null | sed 's/.*://')
    [ -n "$MQPKID_PORT" ] && break
    kill -0 "$MQPKID_PID" 2>/dev/null || { cat "$MQPKID_LOG"; return 1; }
    sleep 0.05
  done
  [ -n "$MQPKID_PORT" ] || { cat "$MQPKID_LOG"; return 1; }
  MQPKID_URL="https://localhost:$MQPKID_PORT"
}

# stop_pid PID [SIGNAL]: signals a process and waits for it to end.
stop_pid() {
  kill "-${2:-TERM}" "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# est_csr NAME: an EC P-256 key $T/NAME.key and its CSR as base64 DER in $T/NAME.b64.
est_csr() {
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$T/$1.key" -outform DER 2>/dev/null | base64 >"$T/$1.b64"
}

# est_enroll ASSET TOKEN NAME [PATH]: POST simpleenroll; prints the HTTP status; the
# certificate (PEM) lands in $T/NAME.pem on 200.
est_enroll() {
  local code
  code=$(curl -sS --cacert "$T/chain.pem" -u "$1:$2" -H "Content-Type: application/pkcs10" \
    --data-binary @"$T/$3.b64" -o "$T/$3.p7" -w '%{http_code}' \
    "$MQPKID_URL${4:-/.well-known/est/simpleenroll}") || true
  if [ "$code" = 200 ]; then
    base64 -d "$T/$3.p7" | openssl pkcs7 -inform DER -print_certs >"$T/$3.pem"
  fi
  echo "$code"
}

# start_pg: a private PostgreSQL 15 server in $T/pg (initdb, pg_ctl), Unix socket only, on an
# ephemeral port, stopped by pid at exit. The server refuses to run as root: under root it runs
# as the postgres account (Debian's package creates it). Sets PG_URL (database mqpki) and PG_PID.
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
start_pg() {
  local as=() port
  [ -x "$PG_BIN/initdb" ] || { echo "# PostgreSQL server binaries missing (scripts/install-deps.sh)"; return 1; }
  mkdir -p "$T/pg"
  if [ "$(id -u)" = 0 ]; then
    chmod 755 "$T"
    chown postgres: "$T/pg"
    as=(runuser -u postgres --)
  fi
  "${as[@]}" "$PG_BIN/initdb" -D "$T/pg/data" -A trust -U mqpki --no-sync -E UTF8 \
    >"$T/pg/initdb.log" 2>&1 || { cat "$T/pg/initdb.log"; return 1; }
  port=$(free_port)
  # fsync stays on: the durability claims are the server's, as in production.
  "${as[@]}" "$PG_BIN/pg_ctl" -D "$T/pg/data" -l "$T/pg/server.log" -w -t 30 \
    -o "-k $T/pg -p $port -c listen_addresses= -c max_connections=200" start >/dev/null ||
    { cat "$T/pg/server.log"; return 1; }
  PG_PID=$(head -n 1 "$T/pg/data/postmaster.pid")
  PIDS+=("$PG_PID")
  "${as[@]}" "$PG_BIN/createdb" -h "$T/pg" -p "$port" -U mqpki mqpki
  PG_URL="postgresql:///mqpki?host=$T/pg&port=$port&user=mqpki"
  PG_PORT=$port
}
