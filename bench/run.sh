#!/usr/bin/env bash
# bench/run.sh BUILD_DIR: the `make bench` orchestrator. Loopback only; every process it starts is
# stopped by pid on exit; every loop is bounded. Raw results go to bench/results/raw.jsonl, the
# summary to bench/results/latest.json and docs/performance.md (bench/report.py).
# Knobs: BENCH_REPS (3), BENCH_SECS (5 s per issuance/connect run), BENCH_REVOKE (60),
# BENCH_ASSETS (1000000), BENCH_CRL ("10000 100000 1000000"), BENCH_BIG (1000000 entries held
# for revocation_big, bench/revoke-big.sh), BENCH_BIG_REVOKE (10 revocations); bench/detect.sh's
# BENCH_CLONES (60) and BENCH_FLOOD (100000).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export ROOT
BUILD=$(cd "${1:-$ROOT/build-bench}" && pwd)
BIN=$BUILD/bin
REPS=${BENCH_REPS:-3}
SECS=${BENCH_SECS:-5}
NREV=${BENCH_REVOKE:-60}
NASSETS=${BENCH_ASSETS:-1000000}
CRLS=${BENCH_CRL:-10000 100000 1000000}
BIG=${BENCH_BIG:-1000000}
NBIG=${BENCH_BIG_REVOKE:-10}
W=$(mktemp -d /tmp/mqpki-bench.XXXXXX)
RAW=$ROOT/bench/results/raw.jsonl
export PATH=$BIN:$PATH MQPKI_HOME=$W/home
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# jrec GROUP KEY COMMAND...: records the command's JSON line, or {"failed": true} (logged).
jrec() {
  local g=$1 k=$2 out; shift 2
  out=$("$@" 2>>"$W/errors.log") || true
  if ! printf '%s' "$out" | jq -e . >/dev/null 2>&1; then
    say "warning: $g $k failed: $(tail -2 "$W/errors.log" | tr '\n' ' ')"
    out='{"failed": true}'
  fi
  rec "$g" "$k" "$out"
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
HF='.results[0] | {mean, stddev, median, min, max}'  # hyperfine's export, summarized

: >"$RAW"
cd "$W"

# ---- machine and versions ----
rec meta machine "$(python3 - <<'PY'
import json, os, platform, subprocess
def out(*a):
    try: return subprocess.run(a, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception: return ""
cpu = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")]
mem = [l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")]
print(json.dumps({
  "cpu": cpu[0] if cpu else "?", "cores": os.cpu_count(),
  "mem_gb": round(int(mem[0]) / 1048576, 1) if mem else 0,
  "kernel": platform.release(), "os": out("sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"),
  "load_at_start": round(os.getloadavg()[0], 2),
  "openssl": out("openssl", "version"), "sqlite": out("sqlite3", "--version").split(" ")[0],
  "softhsm": out("dpkg-query", "-W", "-f=${Version}", "softhsm2"),
  "mosquitto": out("dpkg-query", "-W", "-f=${Version}", "mosquitto"),
  "libmicrohttpd": out("dpkg-query", "-W", "-f=${Version}", "libmicrohttpd12"),
  "cfssl": out("dpkg-query", "-W", "-f=${Version}", "golang-cfssl"),
  "curl": out("dpkg-query", "-W", "-f=${Version}", "libcurl4"),
  "git": out("git", "-C", os.environ.get("ROOT", "."), "describe", "--always", "--dirty"),
}))
PY
)"

# ---- CA, identities, brokers ----
say "mqpki init"
mqpki init >/dev/null 2>&1
sed -i 's/^rate = .*/rate = 0/' "$MQPKI_HOME/mqpki.conf"  # the load comes from one address
mqpki ca export --out chain.pem
make_id() { # make_id NAME: asset, key, CSR and certificate in $W
  mqpki asset add "$1" --kind device >/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$1.key" -out "$1.csr" 2>/dev/null
  mqpki issue --asset "$1" --csr "$1.csr" --out "$1.pem" >/dev/null
}
say "16 load identities, $NREV revocation identities"
for i in $(seq 0 15); do make_id "t$i"; done
for i in $(seq 0 $((NREV - 1))); do make_id "r$i"; done
make_id conn
BP=$(free_port); PP=$(free_port)
mqpki broker init b1 --port "$BP" >/dev/null
# Plain Mosquitto: the same TLS listener and client-certificate requirement, no plugin.
grep -v '^plugin' "$MQPKI_HOME/brokers/b1/mosquitto.conf" |
  sed -e "s/^listener .*/listener $PP 127.0.0.1/" \
    -e 's/^use_identity_as_username .*/use_identity_as_username true/' \
    -e "s#^persistence_location .*#persistence_location $W/plain/#" >plain.conf
mkdir -p plain

# ---- limits ----
say "limits: SoftHSM C_Sign/s, OpenSSL ECDSA P-256 sign/verify/s"
for r in $(seq 1 "$REPS"); do jrec limit run pkibench limits "$MQPKI_HOME" 2; done

# ---- issuance: mqpki EST ----
say "issuance: mqpkid EST simplereenroll, c1/c4/c16 x $REPS x ${SECS}s"
mqpkid --listen 127.0.0.1:0 2>mqpkid.log &
MQPKID=$!; PIDS+=("$MQPKID")
wait_for 10 grep -q 'listening on https://' mqpkid.log
EP=$(grep -o 'listening on https://[^ ]*' mqpkid.log | head -1 | sed 's/.*://')
URL=https://localhost:$EP/.well-known/est/simplereenroll
loadgen est "$URL" chain.pem . 4 1 5 >/dev/null  # warm-up
for r in $(seq 1 "$REPS"); do
  for c in 1 4 16; do
    jrec issuance_mqpki "c$c" loadgen est "$URL" chain.pem . "$c" "$SECS" 300
  done
done

# ---- issuance: cfssl serve ----
if command -v cfssl >/dev/null; then
  say "issuance: cfssl serve /api/v1/cfssl/sign, c1/c4/c16 x $REPS x ${SECS}s"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=cfssl-bench-ca \
    -days 30 -keyout cfssl-ca.key -out cfssl-ca.pem 2>/dev/null
  CP=$(free_port)
  cfssl serve -address 127.0.0.1 -port "$CP" -ca cfssl-ca.pem -ca-key cfssl-ca.key \
    >cfssl.log 2>&1 &
  CFSSL=$!; PIDS+=("$CFSSL")
  wait_for 15 bash -c "exec 3<>/dev/tcp/127.0.0.1/$CP"
  CURL=http://127.0.0.1:$CP/api/v1/cfssl/sign
  loadgen cfssl "$CURL" - - 4 1 5 >/dev/null
  for r in $(seq 1 "$REPS"); do
    for c in 1 4 16; do
      jrec issuance_cfssl "c$c" loadgen cfssl "$CURL" - - "$c" "$SECS" 300
    done
  done
  stop "$CFSSL"
fi

# ---- issuance: openssl x509 -req, one process per certificate ----
say "issuance: openssl x509 -req (hyperfine)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=ossl-ca \
  -days 30 -keyout ossl-ca.key -out ossl-ca.pem 2>/dev/null
OSSL="openssl x509 -req -in t0.csr -CA ossl-ca.pem -CAkey ossl-ca.key -set_serial 0x1234"
OSSL="$OSSL -days 30 -sha256 -out ossl.pem"
if command -v hyperfine >/dev/null; then
  hyperfine -N --warmup 5 --runs 200 --export-json ossl.json "$OSSL" >/dev/null 2>&1
  rec issuance_openssl_cli hyperfine "$(jq -c "$HF" ossl.json)"
else
  t0=$(date +%s.%N); for i in $(seq 1 200); do $OSSL; done; t1=$(date +%s.%N)
  rec issuance_openssl_cli loop "{\"mean\": $(echo "($t1 - $t0) / 200" | bc -l)}"
fi

# ---- broker: plugin vs plain connects/s ----
say "broker: TLS connects/s with the plugin vs plain mosquitto"
mqpki broker run b1 >broker.log 2>&1 &
BROKER=$!; PIDS+=("$BROKER")
# From the broker's directory: mosquitto.conf names its certificate and key relative to it.
(cd "$MQPKI_HOME/brokers/b1" && exec mosquitto -c "$W/plain.conf") >plain.log 2>&1 &
PLAIN=$!; PIDS+=("$PLAIN")
wait_for 15 bash -c "exec 3<>/dev/tcp/127.0.0.1/$BP"
wait_for 15 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PP"
# The feed: mqpkid reaches newly registered brokers (restart it so it certainly does).
stop "$MQPKID"
mqpkid --listen 127.0.0.1:0 2>mqpkid2.log &
MQPKID=$!; PIDS+=("$MQPKID")
wait_for 20 grep -q "full CRL .* accepted" broker.log || say "warning: broker holds no CRL yet"
CSEC=$(( SECS > 3 ? SECS - 2 : SECS ))
for r in $(seq 1 $((REPS + 2))); do  # noisier than the rest: two more pairs
  jrec broker_plugin run pkibench connects 127.0.0.1 "$BP" chain.pem conn.pem conn.key "$CSEC" conn
  jrec broker_plain run pkibench connects 127.0.0.1 "$PP" chain.pem conn.pem conn.key "$CSEC" conn
done
stop "$PLAIN"

# ---- revocation -> disconnect ----
say "revocation: $NREV revocations, each to its subscriber's disconnect"
wait_for 20 grep -q "feed: connected to broker b1" mqpkid2.log || say "warning: feed not connected"
jrec revocation run pkibench revoke 127.0.0.1 "$BP" chain.pem . "$NREV" "$BIN/mqpki"
stop "$MQPKID"; stop "$BROKER"

# ---- revocation while a broker holds a 1M-entry CRL ----
say "revocation at scale: $NBIG revocations with a $BIG-entry CRL held, probe every 10 ms"
jrec revocation_big run bash "$ROOT/bench/revoke-big.sh" "$BIN" "$W/big" "$BIG" "$NBIG"
rm -rf "$W/big"

# ---- issuance on PostgreSQL, one and two replicas: its own server and CA (bench/pg.sh) ----
bash "$ROOT/bench/pg.sh" "$BUILD" "$RAW"

# ---- detect -> respond: its own CA, brokers and mqpkid (bench/detect.sh) ----
bash "$ROOT/bench/detect.sh" "$BUILD" "$RAW"

# ---- CRL scale ----
for n in $CRLS; do
  reps=$REPS
  say "CRL: $n entries x $reps (build+sign via ca/ + token, plugin load+verify)"
  for r in $(seq 1 "$reps"); do
    jrec crl_build "$n" pkibench crl-build "$MQPKI_HOME" "$n" "crl-$n.der"
    jrec crl_load "$n" pkibench crl-load chain.pem "crl-$n.der"
  done
  rm -f "crl-$n.der"
done

# ---- inventory of NASSETS assets ----
say "inventory: bulk-loading $NASSETS assets and certificates into a real store"
export MQPKI_HOME=$W/inv
mqpki init >/dev/null 2>&1
NOW=$(date +%s)
sqlite3 "$MQPKI_HOME/mqpki.db" >/dev/null <<SQL
PRAGMA journal_mode=WAL;
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $NASSETS)
INSERT INTO assets(id, kind, state, model, firmware, location, created_at, updated_at, last_seen,
                   last_address, last_broker)
SELECT printf('dev%07d', i), 'device',
       CASE WHEN i % 100 = 0 THEN 'enrolled' ELSE 'active' END,
       'sensor-v2', '1.4.' || (i % 7), 'site-' || (i % 50), $NOW - 86400, $NOW - 3600,
       $NOW - (i % 3600), '10.0.' || (i % 250) || '.' || (i % 200), 'b1' FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $NASSETS)
INSERT INTO certs(serial, asset_id, profile, not_before, not_after, state, key_fp, pem, issued_seq)
SELECT printf('%032X', i * 2654435761), printf('dev%07d', i), 'device', $NOW - 86400,
       $NOW + 86400 * (1 + (i % 365)), 'valid', printf('%064X', i), NULL, 1000 + i FROM n;
COMMIT;
SQL
SIZE=$(stat -c %s "$MQPKI_HOME/mqpki.db")
WAL=$(stat -c %s "$MQPKI_HOME/mqpki.db-wal" 2>/dev/null || echo 0)
rec inventory store "{\"assets\": $NASSETS, \"store_bytes\": $SIZE, \"wal_bytes\": $WAL}"
mqpki asset list --state active --json >/dev/null  # warm the page cache
hyperfine -N --runs "$REPS" --export-json list.json \
  "mqpki --home $MQPKI_HOME asset list --state active --json" >/dev/null 2>&1 ||
  hyperfine --runs "$REPS" --export-json list.json \
    "mqpki --home $MQPKI_HOME asset list --state active --json >/dev/null" >/dev/null 2>&1
rec inventory list "$(jq -c "$HF" list.json)"
# Expiry sweep: every live certificate expiring within 30 days, as a renewal job would ask.
SWEEP="SELECT serial, asset_id, not_after FROM certs WHERE state = 'valid'"
SWEEP="$SWEEP AND not_after < $((NOW + 30 * 86400)) ORDER BY not_after"
hyperfine -N --runs "$REPS" --export-json sweep.json \
  "sqlite3 $MQPKI_HOME/mqpki.db \"$SWEEP\"" >/dev/null 2>&1
ROWS=$(sqlite3 "$MQPKI_HOME/mqpki.db" "SELECT COUNT(*) FROM ($SWEEP)")
rec inventory sweep "$(jq -c --argjson n "$ROWS" "$HF + {rows: \$n}" sweep.json)"
hyperfine -N --runs "$REPS" --export-json certexp.json \
  "mqpki --home $MQPKI_HOME cert list --state expired --json" >/dev/null 2>&1 || true
[ -s certexp.json ] && rec inventory cert_list_expired "$(jq -c "$HF" certexp.json)"

say "report"
ROOT=$ROOT python3 "$ROOT/bench/report.py" "$RAW" "$ROOT/bench/results/latest.json" \
  "$ROOT/docs/performance.md" "$ROOT/bench/performance.md.in"
