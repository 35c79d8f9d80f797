#!/usr/bin/env bash
# bench/pg.sh BUILD_DIR RAW.jsonl: EST issuance on the PostgreSQL store (docs/ha.md), one and two
# mqpkid replicas, for `make bench` (run.sh calls it after the SQLite issuance runs; it also runs
# alone). A private PostgreSQL 15 server (initdb, pg_ctl, Unix socket, fsync on), its own CA made
# with `mqpki --store URL init`, 16 load identities; every process it starts is stopped on exit.
# Appends raw result lines to RAW:
#   issuance_pg c16_1r   loadgen c16 against one replica
#   issuance_pg c16_2r   two loadgens c8 at once, one per replica: per_s summed, p50 the mean
#                        of the two, p99 the larger
# Knobs: BENCH_REPS (3), BENCH_SECS (5).
set -euo pipefail

BUILD=$(cd "${1:?usage: bench/pg.sh BUILD_DIR RAW.jsonl}" && pwd)
RAW=${2:?usage: bench/pg.sh BUILD_DIR RAW.jsonl}
BIN=$BUILD/bin
REPS=${BENCH_REPS:-3}
SECS=${BENCH_SECS:-5}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
W=$(mktemp -d /tmp/mqpki-bench-pg.XXXXXX)
export PATH=$BIN:$PATH MQPKI_HOME=$W/a
unset MQPKI_PIN
PIDS=()
AS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -f "$W/pg/data/postmaster.pid" ] &&
    "${AS[@]}" "$PG_BIN/pg_ctl" -D "$W/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fail() { say "warning: $1 failed"; tail -3 "$W/errors.log" >&2 || true; rec issuance_pg "$1" '{"failed": true}'; }

[ -x "$PG_BIN/initdb" ] || { say "PostgreSQL server binaries missing: issuance on PostgreSQL skipped"; exit 0; }

# ---- the server (it refuses to run as root: as postgres then, like tests/integration/lib.sh) ----
mkdir -p "$W/pg"
if [ "$(id -u)" = 0 ]; then
  chmod 755 "$W"
  chown postgres: "$W/pg"
  AS=(runuser -u postgres --)
fi
"${AS[@]}" "$PG_BIN/initdb" -D "$W/pg/data" -A trust -U mqpki -E UTF8 >"$W/initdb.log" 2>&1
PORT=$(free_port)
"${AS[@]}" "$PG_BIN/pg_ctl" -D "$W/pg/data" -l "$W/pg/server.log" -w -t 30 \
  -o "-k $W/pg -p $PORT -c listen_addresses= -c max_connections=200" start >/dev/null
"${AS[@]}" "$PG_BIN/createdb" -h "$W/pg" -p "$PORT" -U mqpki mqpki
URL="postgresql:///mqpki?host=$W/pg&port=$PORT&user=mqpki"

# ---- the CA on it, and the load identities ----
mqpki --store "$URL" init >/dev/null 2>&1
mqpki ca export --out "$W/chain.pem"
sed -i 's/^rate = .*/rate = 0/' "$MQPKI_HOME/mqpki.conf" # the load comes from one address
mkdir -p "$W/ids"
for i in $(seq 0 15); do
  mqpki asset add "t$i" --kind device >/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=t$i" \
    -keyout "$W/ids/t$i.key" -out "$W/ids/t$i.csr" 2>/dev/null
  mqpki issue --asset "t$i" --csr "$W/ids/t$i.csr" --out "$W/ids/t$i.pem" >/dev/null
done
# The second loadgen's threads are t0..t7 of their own directory: identities t8..t15.
mkdir -p "$W/ids2"
for i in $(seq 0 7); do
  cp "$W/ids/t$((i + 8)).pem" "$W/ids2/t$i.pem"
  cp "$W/ids/t$((i + 8)).key" "$W/ids2/t$i.key"
done

start_replica() { # NAME HOME: sets U to its simplereenroll URL
  local port
  port=$(free_port)
  mqpkid --home "$2" --listen "127.0.0.1:$port" >/dev/null 2>"$W/mqpkid-$1.log" &
  PIDS+=($!)
  wait_for 15 grep -q 'listening on https://' "$W/mqpkid-$1.log"
  U="https://localhost:$port/.well-known/est/simplereenroll"
}

# ---- one replica ----
say "issuance on PostgreSQL: one replica, c16 x $REPS x ${SECS}s"
start_replica A "$W/a"
UA=$U
loadgen est "$UA" "$W/chain.pem" "$W/ids" 4 1 5 >/dev/null 2>>"$W/errors.log" # warm-up
for r in $(seq 1 "$REPS"); do
  if out=$(loadgen est "$UA" "$W/chain.pem" "$W/ids" 16 "$SECS" 300 2>>"$W/errors.log"); then
    rec issuance_pg c16_1r "$out"
  else fail c16_1r; fi
done

# ---- two replicas, the load split between them ----
say "issuance on PostgreSQL: two replicas, c8 + c8 x $REPS x ${SECS}s"
mqpki --home "$W/b" replica init --from "$W/a" >/dev/null 2>&1
start_replica B "$W/b"
UB=$U
loadgen est "$UB" "$W/chain.pem" "$W/ids2" 4 1 5 >/dev/null 2>>"$W/errors.log" # warm-up
for r in $(seq 1 "$REPS"); do
  loadgen est "$UA" "$W/chain.pem" "$W/ids" 8 "$SECS" 300 >"$W/la.json" 2>>"$W/errors.log" &
  la=$!
  loadgen est "$UB" "$W/chain.pem" "$W/ids2" 8 "$SECS" 300 >"$W/lb.json" 2>>"$W/errors.log" &
  lb=$!
  if wait "$la" && wait "$lb" && [ -s "$W/la.json" ] && [ -s "$W/lb.json" ]; then
    rec issuance_pg c16_2r "$(jq -cs '{threads: (.[0].threads + .[1].threads),
      seconds: ([.[0].seconds, .[1].seconds] | max),
      certificates: (.[0].certificates + .[1].certificates),
      errors: (.[0].errors + .[1].errors), per_s: (.[0].per_s + .[1].per_s),
      p50_ms: ((.[0].p50_ms + .[1].p50_ms) / 2), p99_ms: ([.[0].p99_ms, .[1].p99_ms] | max)}' \
      "$W/la.json" "$W/lb.json")"
  else fail c16_2r; fi
done
say "issuance on PostgreSQL: done"
