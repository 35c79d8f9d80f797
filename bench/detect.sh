#!/usr/bin/env bash
# bench/detect.sh BUILD_DIR RAW.jsonl: the detect -> respond figures of `make bench` (run.sh
# calls it; it also runs alone). Its own CA, two bundled brokers (b1 with security events, b2
# with plugin_opt_events false, both also on ::1) and mqpkid, loopback only; every process it
# starts is stopped by pid on exit. Appends raw result lines to RAW:
#   detect_clone      cloned identity: clone's CONNACK -> device disconnected (BENCH_CLONES, 60)
#   detect_connects   TLS connects/s, events on (b1) and off (b2), alternated BENCH_REPS+2 times,
#                     keys on/off (the plugin alone) and on_mqpkid/off_mqpkid (mqpkid running)
#   detect_messages   messages/s through the broker, events on and off, alternated likewise
#                     (each run also records the broker's CPU seconds: broker_cpu_s)
#   detect_memory     broker and mqpkid RSS before and after a flood of ACL denials
# Knobs: BENCH_REPS (3), BENCH_SECS (5), BENCH_CLONES (60), BENCH_FLOOD (100000).
set -euo pipefail

BUILD=$(cd "${1:?usage: bench/detect.sh BUILD_DIR RAW.jsonl}" && pwd)
RAW=${2:?usage: bench/detect.sh BUILD_DIR RAW.jsonl}
BIN=$BUILD/bin
REPS=${BENCH_REPS:-3}
SECS=${BENCH_SECS:-5}
NCLONE=${BENCH_CLONES:-60}
NFLOOD=${BENCH_FLOOD:-100000}
W=$(mktemp -d /tmp/mqpki-bench-detect.XXXXXX)
export PATH=$BIN:$PATH MQPKI_HOME=$W/home
unset MQPKI_PIN
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
jrec() {
  local g=$1 k=$2 out; shift 2
  if out=$("$@" 2>>"$W/errors.log") && [ -n "$out" ]; then rec "$g" "$k" "$out"; else
    say "warning: $g/$k failed (see below)"; tail -3 "$W/errors.log" >&2 || true
    rec "$g" "$k" '{"failed": true}'; fi
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# CPU time (user + system, clock ticks) a process has used: what a run cost the broker, which
# the other users of a shared VM disturb far less than they disturb a rate.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# brec GROUP KEY BROKER COMMAND...: jrec, with the broker's CPU seconds during the run added.
brec() {
  local g=$1 k=$2 b=$3 out c0 c1; shift 3
  c0=$(cpu_ticks "${BROKER[$b]}")
  if out=$("$@" 2>>"$W/errors.log") && [ -n "$out" ]; then
    c1=$(cpu_ticks "${BROKER[$b]}")
    rec "$g" "$k" "$(jq -c --argjson t "$((c1 - c0))" --argjson hz "$(getconf CLK_TCK)" \
      '. + {broker_cpu_s: ($t / $hz)}' <<<"$out")"
  else
    say "warning: $g/$k failed"; rec "$g" "$k" '{"failed": true}'; fi
}

cd "$W"
say "detect: CA, $NCLONE clone identities, two brokers"
mqpki init >/dev/null 2>&1
mqpki ca export --out chain.pem
make_id() {
  mqpki asset add "$1" --kind device >/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$1.key" -out "$1.csr" 2>/dev/null
  mqpki issue --asset "$1" --csr "$1.csr" --out "$1.pem" >/dev/null
}
for i in $(seq 0 $((NCLONE - 1))); do make_id "c$i"; done
make_id conn
make_id flood
declare -A PORT PORT6
for b in b1 b2; do
  PORT[$b]=$(free_port)
  PORT6[$b]=$(free_port)
  mqpki broker init "$b" --port "${PORT[$b]}" >/dev/null
  d=$MQPKI_HOME/brokers/$b
  {
    echo "listener ${PORT6[$b]} ::1"
    echo "cafile $d/ca.pem"
    echo "certfile $d/broker.pem"
    echo "keyfile $d/broker.key"
    echo "require_certificate true"
    echo "use_identity_as_username false"
    echo "tls_version tlsv1.2"
  } >>"$d/mosquitto.conf"
done
# b2: the same plugin without security events, for the cost of the events.
sed -i 's/^plugin_opt_fail_closed .*/&\nplugin_opt_events false/' \
  "$MQPKI_HOME/brokers/b2/mosquitto.conf"
declare -A BROKER
for b in b1 b2; do
  mqpki broker run "$b" >"$b.log" 2>&1 &
  BROKER[$b]=$!; PIDS+=($!)
  wait_for 15 bash -c "exec 3<>/dev/tcp/127.0.0.1/${PORT[$b]}"
done
# ---- plugin cost: events on (b1) vs off (b2), alternated ----
# First the plugin alone (no mqpkid: the batches go out to no subscriber), then with mqpkid
# consuming them on the same two cores (it also records every connect's last-seen, as before).
CSEC=$((SECS > 3 ? SECS - 2 : SECS))
pairs() { # pairs SUFFIX
  local r
  for r in $(seq 1 $((REPS + 2))); do
    brec detect_connects "on$1" b1 pkibench connects 127.0.0.1 "${PORT[b1]}" chain.pem \
      conn.pem conn.key "$CSEC" conn
    brec detect_connects "off$1" b2 pkibench connects 127.0.0.1 "${PORT[b2]}" chain.pem \
      conn.pem conn.key "$CSEC" conn
    brec detect_messages "on$1" b1 pkibench messages 127.0.0.1 "${PORT[b1]}" chain.pem \
      conn.pem conn.key "$CSEC" conn
    brec detect_messages "off$1" b2 pkibench messages 127.0.0.1 "${PORT[b2]}" chain.pem \
      conn.pem conn.key "$CSEC" conn
  done
}
say "detect: connects/s and messages/s, events on vs off, plugin alone, $((REPS + 2)) pairs"
pairs ""
mqpkid --listen 127.0.0.1:0 2>mqpkid.log &
MQPKID=$!; PIDS+=("$MQPKID")
for b in b1 b2; do
  wait_for 20 grep -q "full CRL .* accepted" "$b.log" || say "warning: $b holds no CRL yet"
done
wait_for 20 bash -c "[ \$(grep -c 'feed: connected to broker' mqpkid.log) -ge 2 ]" ||
  say "warning: the feed is not connected to both brokers"
say "detect: the same with mqpkid consuming the events on the same host"
pairs "_mqpkid"

# ---- cloned identity -> disconnect ----
say "detect: $NCLONE cloned identities, each from ::1 while its device is connected"
jrec detect_clone run pkibench clone 127.0.0.1 "${PORT[b1]}" ::1 "${PORT6[b1]}" chain.pem . \
  "$NCLONE"

# ---- a flood of ACL denials: memory stays within the caps ----
say "detect: $NFLOOD ACL denials from one client; RSS of the broker and mqpkid"
b_before=$(rss_kb "${BROKER[b1]}")
m_before=$(rss_kb "$MQPKID")
t0=$(date +%s%3N)
seq 1 "$NFLOOD" | mosquitto_pub -h 127.0.0.1 -p "${PORT[b1]}" --cafile chain.pem \
  --cert flood.pem --key flood.key -i flood -t fleet/conn/x -l -q 0 >/dev/null 2>&1 || true
t1=$(date +%s%3N)
# The same messages/s measure while the broker drains what the flood left.
jrec detect_messages during_flood pkibench messages 127.0.0.1 "${PORT[b1]}" chain.pem conn.pem \
  conn.key 2 conn
sleep 3
b_after=$(rss_kb "${BROKER[b1]}")
m_after=$(rss_kb "$MQPKID")
stored=$(sqlite3 "$MQPKI_HOME/mqpki.db" "SELECT COUNT(*) FROM events WHERE asset = 'flood'")
rec detect_memory flood "{\"denials\": $NFLOOD, \"flood_ms\": $((t1 - t0)), \
\"broker_rss_kb_before\": $b_before, \"broker_rss_kb_after\": $b_after, \
\"mqpkid_rss_kb_before\": $m_before, \"mqpkid_rss_kb_after\": $m_after, \
\"events_stored\": $stored}"
say "detect: done"
