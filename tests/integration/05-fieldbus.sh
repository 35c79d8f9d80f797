#!/usr/bin/env bash
# 05-fieldbus: the field message bus scenario end to end, through the same driver as `make
# demo` (scripts/demo.sh) in a private directory: five devices enrolled over EST, the nine steps
# received in causal order, a clone of the meter's identity detected and the meter's certificate
# held (both cut off), a topic scan quarantined, a thief with its certificate and key refused
# after the revocation, the meter re-enrolled with a fresh key and the scenario completed again.
# Each check of the driver becomes one test line; the event logs are then checked on their own.
. "$(dirname "$0")/lib.sh"

for tool in mqpkid mqpki-device mqpki-fieldbus; do
  if [ ! -x "$MQPKI_BUILD/bin/$tool" ]; then
    echo "# skip: $tool not built"
    finish
    exit 0
  fi
done
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
  echo "# skip: mosquitto not installed"
  finish
  exit 0
fi

D=$T/demo
R=$T/result.jsonl
rc=0
MQPKI_BUILD=$MQPKI_BUILD MQPKI_DEMO_DIR=$D MQPKI_DEMO_RESULT=$R \
  timeout 170 bash "$MQPKI_SOURCE/scripts/demo.sh" >"$T/demo.out" 2>&1 || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "# demo.sh exited $rc; its output:"
  sed 's/^/#   /' "$T/demo.out" | tail -40
fi
assert "the driver exits 0" test "$rc" -eq 0

# The driver's own checks, one line each.
if [ -s "$R" ]; then
  while IFS=$'\t' read -r ok name; do
    if [ "$ok" = true ]; then ok "$name"; else not_ok "$name"; fi
  done < <(jq -r 'select(.check) | [(.ok | tostring), .check + (if .detail != "" then
    ": " + .detail else "" end)] | @tsv' "$R")
fi
count() {
  jq -s --arg p "$1" '[.[] | select(.check? // "" | test($p)) | select(.ok)] | length' "$R"
}
assert "run 1: all nine steps checked and passed" test "$(count '^run 1 step')" -eq 9
assert "run 2 (after recovery): all nine steps passed" test "$(count '^run 2 step')" -eq 9
assert "six enrollments (five devices, the meter again)" test "$(count '^enroll ')" -eq 6
jq -s 'map(select(.summary)) | first' "$R" >"$T/summary.json" 2>/dev/null || true
assert "summary: no failed check" test "$(jq -r .failed "$T/summary.json")" = 0
assert "summary: a revocation-to-disconnect time" \
  jq -e '.crl_written_to_disconnect_ms != null' "$T/summary.json" >/dev/null
assert "summary: the Detect phase timed" \
  jq -e '.clone_to_disconnect_ms != null and .detect_phase_ms != null' "$T/summary.json" >/dev/null

# The event logs, read directly.
L=$D/logs
seq_of() { jq -r --arg e "$2" 'select(.event == $e) | .payload.run // .payload' "$1" | paste -sd,; }
assert "the tablet displayed the diagram of run 1, then of run 2" \
  test "$(seq_of "$L/tablet.0.jsonl" display)" = "1,2"
assert "the first meter: disconnected, then refused on reconnect" \
  test "$(jq -r 'select(.event == "disconnected" or .event == "refused") | .event' \
    "$L/meter.0.jsonl" | paste -sd,)" = "disconnected,refused"
assert "the recovered meter took part in run 2 only" \
  test "$(jq -r 'select(.event == "publish") | .payload.run' "$L/meter.1.jsonl" |
    sort -u | paste -sd,)" = "2"
assert "the stolen identity never got connected" \
  bash -c "! grep -q '\"connected\"' '$L/attacker1.jsonl' && grep -q '\"refused\"' \
    '$L/attacker1.jsonl'"
assert "the broker refused the revoked serial" grep -q "refused: certificate revoked" \
  "$L/broker.log"
# Each role publishes under fleet/ROLE/ only (the broker would drop anything else anyway).
own_subtree() {
  local f
  for f in "$L"/*.[0-9].jsonl; do
    jq -e -s 'map(select(.event == "publish") | .who as $w
      | select(.topic | startswith("fleet/" + $w + "/") | not)) | length == 0' "$f" \
      >/dev/null || return 1
  done
}
assert "every device published only under its own subtree" own_subtree
left=""
for pid in $(cat "$D/pids" 2>/dev/null); do
  kill -0 "$pid" 2>/dev/null && left="$left $pid"
done
assert "no process left behind${left:+ (still running:$left)}" test -z "$left"
finish
