#!/usr/bin/env bash
# bench/revoke-big.sh BIN_DIR WORK_DIR [ENTRIES] [REVOCATIONS] [FULL_AFTER]: revocation while a
# broker holds a CRL of ENTRIES (1,000,000) entries. A fresh data directory gets ENTRIES revoked
# certificates bulk-loaded with sqlite3; mqpkid signs the first full CRL and feeds it to the
# bundled broker; then `pkibench revoke-probe` revokes REVOCATIONS (10) connected subscribers one
# after another while a probe publishes through the broker every 10 ms. [ca] crl_full_after is
# set to FULL_AFTER (5s) so that full CRLs of ENTRIES entries are re-signed and loaded by the
# broker during the revocations, as a burst in production would cause. Prints one JSON line.
# Every process it starts is stopped by pid; every wait is bounded.
set -euo pipefail
BIN=$1
W=$2
N=${3:-1000000}
NREV=${4:-10}
FULL_AFTER=${5:-5s}
export PATH=$BIN:$PATH MQPKI_HOME=$W/home
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mkdir -p "$W"
cd "$W"
mqpki init >/dev/null 2>&1
sed -i -e 's/^rate = .*/rate = 0/' -e "s/^crl_full_after = .*/crl_full_after = $FULL_AFTER/" \
  "$MQPKI_HOME/mqpki.conf"
mqpki ca export --out chain.pem
NOW=$(date +%s)
# N revoked certificates of one retired asset, in revocation order (rev_seq 1..N).
sqlite3 "$MQPKI_HOME/mqpki.db" >/dev/null <<SQL
PRAGMA journal_mode=WAL;
BEGIN;
INSERT INTO assets(id, kind, state, created_at, updated_at)
  VALUES ('retired', 'device', 'decommissioned', $NOW, $NOW);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $N)
INSERT INTO certs(serial, asset_id, profile, not_before, not_after, state, key_fp, pem,
                  issued_seq, revoked_at, reason, rev_seq, rev_time)
SELECT printf('%016X%016X', i * 2654435761, i * 40503 + 7), 'retired', 'device', $NOW - 86400,
       $NOW + 86400 * 365, 'revoked', printf('%064X', i), NULL, 1000000000 + i, $NOW - $N + i,
       i % 2, i, $NOW - $N + i FROM n;
UPDATE counters SET value = $N WHERE name = 'rev_seq';
COMMIT;
SQL
make_id() {
  mqpki asset add "$1" --kind device >/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$1.key" -out "$1.csr" 2>/dev/null
  mqpki issue --asset "$1" --csr "$1.csr" --out "$1.pem" >/dev/null
}
make_id conn
for i in $(seq 0 $((NREV - 1))); do make_id "v$i"; done
# The first full CRL of N entries, signed by the CLI (mqpkid is not running yet).
t0=$(date +%s.%N)
mqpki crl publish >/dev/null
FULL_S=$(python3 -c "import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 3))" "$(date +%s.%N)" "$t0")
BP=$(free_port)
mqpki broker init b1 --port "$BP" >/dev/null
mqpki broker run b1 >broker.log 2>&1 &
PIDS+=("$!")
wait_for 15 bash -c "exec 3<>/dev/tcp/127.0.0.1/$BP"
mqpkid --listen 127.0.0.1:0 2>mqpkid.log &
PIDS+=("$!")
if ! wait_for 120 grep -q "full CRL .* accepted: $N serials\|full CRL .* accepted: $((N + 0))" \
  broker.log; then
  echo "revoke-big: the broker did not load the $N-entry CRL" >&2
  tail -5 broker.log mqpkid.log >&2
  exit 1
fi
wait_for 20 grep -q "feed: connected to broker b1" mqpkid.log || true
sleep 2
out=$(pkibench revoke-probe 127.0.0.1 "$BP" chain.pem . "$NREV" "$BIN/mqpki")
fulls=$(grep -c "full CRL .* accepted" broker.log || true)
load=$(cut -d' ' -f1 /proc/loadavg)
# What the plugin's log says each full CRL cost Mosquitto's thread (copy and checks, swap).
onthread=$(sed -n 's/.*loading off the broker.s thread (\([0-9.]*\) ms on it).*/\1/p' broker.log |
  sort -n | tail -1)
swap=$(sed -n 's/.*swapped in (\([0-9.]*\) ms).*/\1/p' broker.log | sort -n | tail -1)
printf '%s' "$out" | jq -c --argjson n "$N" --argjson f "$fulls" --argjson s "$FULL_S" \
  --argjson l "$load" --argjson o "${onthread:-null}" --argjson w "${swap:-null}" \
  '. + {entries: $n, full_crls_loaded: $f, cli_full_sign_s: $s, load_after: $l,
        plugin_thread_ms_max: $o, plugin_swap_ms_max: $w}'
