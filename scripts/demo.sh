#!/usr/bin/env bash
# The field message bus of an energy provider (OASIS "MQTT and the NIST Cybersecurity
# Framework", Appendix A), end to end on the embedded default: a CA in a SoftHSM token, mqpkid,
# the bundled broker with the revocation plugin, five devices enrolled over EST with one-time
# tokens and talking over mutual TLS. The scenario runs; a copy of the meter's identity connects
# from a second address and mqpkid, on its own, puts the meter's certificate on hold (both
# connections cut); a device identity scanning topics is quarantined; the operator reviews the
# alerts and revokes the meter's key as compromised (a thief with its certificate and key is
# refused), the meter re-enrolls with a fresh key and the scenario runs again.
#
# Environment (all optional):
#   MQPKI_BUILD        build directory holding bin/ and lib/ (default: build/ of this repo)
#   MQPKI_DEMO_DIR     working directory, emptied on every run (default: build/demo)
#   MQPKI_DEMO_RESULT  file receiving one JSON line per check and a summary line (for tests)
# Exit status 0 only when every check passed. Every process started here is stopped on exit.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${MQPKI_BUILD:-$REPO/build}" && pwd)
DEMO=${MQPKI_DEMO_DIR:-$REPO/build/demo}
RESULT=${MQPKI_DEMO_RESULT:-}
ROLES=(tablet meter dms capbank supply)
export PATH="$BUILD/bin:$PATH"
export MQPKI_HOME="$DEMO/pki"
unset MQPKI_PIN MQPKI_DEVICE_SECRET MQPKI_DEVICE_TOKEN

for tool in mqpki mqpkid mqpki-device mqpki-fieldbus; do
  [ -x "$BUILD/bin/$tool" ] ||
    { echo "demo: $BUILD/bin/$tool missing: run make build" >&2; exit 2; }
done
for tool in mosquitto jq openssl mosquitto_sub; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] ||
    { echo "demo: $tool missing: run make deps" >&2; exit 2; }
done

# A fresh directory on every run: the demo never depends on what a previous run left.
rm -rf "$DEMO"
mkdir -p "$MQPKI_HOME" "$DEMO/devices" "$DEMO/logs" "$DEMO/tokens"
chmod 700 "$DEMO/tokens"
LOG=$DEMO/logs
[ -z "$RESULT" ] || : >"$RESULT"

PIDS=()
declare -A PID
PASSED=0
FAILED=0
START_MS=$(date +%s%3N)

# Stops every process we started, by pid: TERM, then KILL after 5 s.
cleanup() {
  local pid i
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  for i in $(seq 1 50); do
    local left=0
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# Every background process is recorded, also in DEMO/pids so that a test can check none is left.
started() { PIDS+=("$1"); echo "$1" >>"$DEMO/pids"; }
bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
ms() { date +%s%3N; }
indent() { sed 's/^/    /'; }

# result NAME OK [DETAIL]: records a check, prints failures at once.
check_result() {
  local name=$1 ok=$2 detail=${3:-}
  if [ "$ok" = 1 ]; then PASSED=$((PASSED + 1)); else
    FAILED=$((FAILED + 1)); printf '  \033[31mFAILED\033[0m %s %s\n' "$name" "$detail"; fi
  [ -z "$RESULT" ] || jq -nc --arg n "$name" --argjson ok "$([ "$ok" = 1 ] && echo true ||
    echo false)" --arg d "$detail" '{check:$n, ok:$ok, detail:$d}' >>"$RESULT"
}
check() {
  local name=$1; shift
  if "$@"; then check_result "$name" 1; else check_result "$name" 0; fi
}

# wait_for SECONDS COMMAND...: polls every 50 ms until the command succeeds.
wait_for() {
  local limit=$(($1 * 20)) i=0; shift
  until "$@" 2>/dev/null; do
    i=$((i + 1)); [ "$i" -ge "$limit" ] && return 1
    sleep 0.05
  done
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
gone() { ! kill -0 "$1" 2>/dev/null; }

# A loopback port nobody listens on (the broker needs its port before it starts).
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    listening "$p" || { echo "$p"; return; }
  done
}

# event LOG EVENT TOPIC RUN [JQ-CONDITION on .p]: "INDEX T_MS" of the first matching event line.
event() {
  local cond=${5:-true}
  jq -rs --arg e "$2" --arg t "$3" --argjson r "$4" "to_entries | map(select(.value.event == \$e
    and (\$t == \"\" or .value.topic == \$t) and (\$r == 0 or .value.payload.run? == \$r)))
    | map(.value.payload as \$p | select(\$p | $cond)) | first // empty
    | \"\(.key) \(.value.t_ms)\"" "$1" 2>/dev/null
}
has_event() { [ -n "$(event "$@")" ]; }

# start_role ROLE DIR: starts one device process; its events go to logs/ROLE.N.jsonl.
start_role() {
  local n=0
  while [ -e "$LOG/$1.$n.jsonl" ]; do n=$((n + 1)); done
  EVLOG[$1]="$LOG/$1.$n.jsonl"
  mqpki-fieldbus "$1" --dir "$2" --broker "mqtts://127.0.0.1:$BPORT" \
    >"${EVLOG[$1]}" 2>"$LOG/$1.$n.err" &
  PID[$1]=$!
  started $!
}
declare -A EVLOG

#############################################################################################
bold "1. Identify: a CA in a SoftHSM token, the five assets of the field message bus"
run mqpki init --ca-name "Field Bus" 2>&1 | grep -v "^init: " | indent
mqpki ca export --out "$DEMO/chain.pem"
{
mqpki asset add tablet --kind device --model "Operator tablet" --location control-room
mqpki asset add meter --kind device --model "Smart meter SM-200" --location feeder-12 \
  --firmware 4.2.1
mqpki asset add dms --kind device --model "Distribution management system" \
  --location datacenter
mqpki asset add capbank --kind device --model "Cap bank controller" --location feeder-12
mqpki asset add supply --kind device --model "Power supply" --location substation-7
} | indent
echo "  registered: ${ROLES[*]}"

#############################################################################################
bold "2. The bundled broker (Mosquitto + revocation plugin) and mqpkid"
BPORT=$(free_port)
mqpki broker init fieldbus --port "$BPORT" | indent
BDIR=$MQPKI_HOME/brokers/fieldbus
# Each device publishes only under fleet/ITSELF/# (the plugin's default); these are the only
# reads across subtrees the scenario needs, enforced by the broker.
cat >"$BDIR/acl.conf" <<'EOF'
# WHO    PATTERN                  ACCESS
supply   fleet/tablet/setpoint    read     # the tablet's set-point
supply   fleet/dms/supply/cmd     read     # the DMS's raise-voltage command
meter    fleet/supply/voltage     read     # the voltage it is fed
dms      fleet/meter/voltage      read     # the meter's voltage status
dms      fleet/capbank/status     read     # the cap bank's state
capbank  fleet/dms/capbank/cmd    read     # the DMS's close command
tablet   fleet/dms/diagram        read     # the single-line diagram it displays
EOF
sed -i "s|^#plugin_opt_acl_file .*|plugin_opt_acl_file $BDIR/acl.conf|" "$BDIR/mosquitto.conf"
grep -q "^plugin_opt_acl_file $BDIR/acl.conf" "$BDIR/mosquitto.conf" ||
  { echo "demo: cannot enable the ACL file in $BDIR/mosquitto.conf" >&2; exit 2; }
sed 's/^/    /' "$BDIR/acl.conf"
# A second listener on ::1: the meter's clone comes from another address (section 6).
BPORT6=$(free_port)
cat >>"$BDIR/mosquitto.conf" <<EOF

listener $BPORT6 ::1
cafile $BDIR/ca.pem
certfile $BDIR/broker.pem
keyfile $BDIR/broker.key
require_certificate true
use_identity_as_username false
tls_version tlsv1.2
EOF
mqpki broker run fieldbus >"$LOG/broker.log" 2>&1 &
started $!
check "broker listening" wait_for 10 listening "$BPORT"
# mqpkid finds the registered brokers at start and feeds them every new CRL.
mqpkid --listen 127.0.0.1:0 2>"$LOG/mqpkid.log" &
started $!
wait_for 10 grep -q 'listening on https://' "$LOG/mqpkid.log" || true
EST=https://localhost:$(grep -o 'listening on https://[^ ]*' "$LOG/mqpkid.log" | sed 's/.*://')
check "mqpkid feeds the broker" wait_for 15 grep -q "full CRL .* accepted" "$LOG/broker.log"
echo "  mqpkid: EST on $EST; broker: mqtts://127.0.0.1:$BPORT, CRL feed connected"

#############################################################################################
bold "3. Protect: each device makes its key and enrolls over EST with a one-time token"
declare -A ENROLL_MS
enroll() { # enroll ASSET DIR [LABEL]
  local tok=$DEMO/tokens/$1 t0 t1 label=${3:-$1}
  (umask 077 && mqpki token create "$1" --ttl 10m >"$tok")
  t0=$(ms)
  if mqpki-device --dir "$2" enroll --server "$EST" --ca "$DEMO/chain.pem" --asset "$1" \
    --token-file "$tok" >"$LOG/enroll-$1.out" 2>&1; then
    t1=$(ms)
    ENROLL_MS[$label]=$((t1 - t0))
    printf '  %-8s enrolled in %4d ms  serial %s\n' "$1" "${ENROLL_MS[$label]}" \
      "$(mqpki-device --dir "$2" status --json | jq -r .serial)"
    check_result "enroll $label" 1
  else
    check_result "enroll $label" 0 "$(head -1 "$LOG/enroll-$1.out")"
  fi
}
for r in "${ROLES[@]}"; do enroll "$r" "$DEMO/devices/$r"; done

#############################################################################################
bold "4. The five devices connect with mutual TLS"
for r in "${ROLES[@]}"; do start_role "$r" "$DEMO/devices/$r"; done
for r in "${ROLES[@]}"; do
  check "$r connected and subscribed" wait_for 10 has_event "${EVLOG[$r]}" connected "" 0
done
for r in "${ROLES[@]}"; do
  printf '  %-8s %s\n' "$r" "$(jq -rs \
    'map(select(.event=="connected")) | first | .payload // [] | map(.filter) | join(", ")
     | if . == "" then "(publishes only)" else "reads " + . end' "${EVLOG[$r]}")"
done

# The grants are the broker's, not the devices' good manners: a client with the supply's
# identity can neither forge the meter's reading nor read the operator's diagram.
gen=$(jq -r .generation "$DEMO/devices/supply/device.json")
openssl pkcs8 -in "$DEMO/devices/supply/key-$gen.pem" -out "$DEMO/probe-supply.key" \
  -passin "file:$DEMO/devices/supply/secret" 2>/dev/null
chmod 600 "$DEMO/probe-supply.key"
PROBE=(-h 127.0.0.1 -p "$BPORT" --cafile "$DEMO/chain.pem" --cert "$DEMO/devices/supply/cert.pem"
  --key "$DEMO/probe-supply.key" -i supply:probe -q 1)
mosquitto_pub "${PROBE[@]}" -t fleet/meter/voltage -m '{"run":99,"volts":130,"status":"high"}' \
  >/dev/null 2>&1 || true
check "the supply may not publish under fleet/meter/" wait_for 5 \
  grep -q "acl denied: supply may not publish on fleet/meter/voltage" "$LOG/broker.log"
mosquitto_sub "${PROBE[@]}" -t fleet/dms/diagram -C 1 -W 3 >"$LOG/probe-sub.out" 2>&1 || true
check "the supply may not read fleet/dms/diagram" wait_for 5 \
  grep -q "acl denied: supply may not subscribe" "$LOG/broker.log"
check "the DMS never saw the forged reading" bash -c "! grep -q '\"run\":99' '${EVLOG[dms]}'"
echo "  a client with the supply's identity, outside its grants:"
grep -o "acl denied: supply may not .*" "$LOG/broker.log" | sed 's/^/    broker: /'
rm -f "$DEMO/probe-supply.key"

# The nine steps: PUBLISHER TOPIC CONDITION RECEIVER.
STEPS=(
  "tablet|fleet/tablet/setpoint|.volts == 114|supply|set-point 114 V to the supply"
  "supply|fleet/supply/voltage|.volts == 114|meter|supply output 114 V"
  "meter|fleet/meter/voltage|.volts == 114 and .status == \"low\"|dms|meter: 114 V, low"
  "dms|fleet/dms/capbank/cmd|.op == \"close\"|capbank|DMS: close the cap bank"
  "capbank|fleet/capbank/status|.state == \"closed\"|dms|cap bank: closed"
  "dms|fleet/dms/supply/cmd|.op == \"raise\" and .volts == 120|supply|DMS: raise to 120 V"
  "supply|fleet/supply/voltage|.volts == 120|meter|supply output 120 V"
  "meter|fleet/meter/voltage|.volts == 120 and .status == \"normal\"|dms|meter: 120 V, normal"
  "dms|fleet/dms/diagram|.diagram != null|tablet|DMS: new single-line diagram"
)

# scenario RUN: the tablet starts run RUN; checks every step arrived, in causal order.
scenario() {
  local run=$1 t0 i pub topic cond rcv what p r prev_rcv_idx="" prev_t=0 ok
  t0=$(ms)
  kill -USR1 "${PID[tablet]}"
  wait_for 15 has_event "${EVLOG[tablet]}" display "" "$run" || true
  printf '  %-4s %8s  %-8s %-22s %-34s %s\n' step "+ms" from topic payload "received by"
  for i in "${!STEPS[@]}"; do
    IFS='|' read -r pub topic cond rcv what <<<"${STEPS[$i]}"
    p=$(event "${EVLOG[$pub]}" publish "$topic" "$run" "$cond")
    r=$(event "${EVLOG[$rcv]}" receive "$topic" "$run" "$cond")
    ok=1
    [ -n "$p" ] && [ -n "$r" ] || ok=0
    # Causal order: the publisher sent this step after it received the previous one (same
    # process, so its log order is exact), and no step is received before it was sent.
    if [ "$ok" = 1 ] && [ -n "$prev_rcv_idx" ] && [ "$pub" = "$prev_rcv" ] &&
      [ "${p%% *}" -le "$prev_rcv_idx" ]; then ok=0; fi
    if [ "$ok" = 1 ] && { [ "${r#* }" -lt "${p#* }" ] || [ "${p#* }" -lt "$prev_t" ]; }; then
      ok=0; fi
    if [ "$ok" = 1 ]; then
      printf '  %-4s %8s  %-8s %-22s %-34s %s +%d ms\n' "$((i + 1))." "+$((${p#* } - t0))" \
        "$pub" "$topic" "$(jq -rsc --argjson k "${p%% *}" '.[$k].payload | del(.run)
          | if .diagram then "{diagram}" else tojson end' "${EVLOG[$pub]}")" "$rcv" \
        "$((${r#* } - ${p#* }))"
      prev_t=${p#* }
    else
      printf '  %-4s %8s  %-8s %-22s %s: missing or out of order\n' "$((i + 1))." "-" "$pub" \
        "$topic" "$what"
    fi
    check_result "run $run step $((i + 1)): $what" "$ok"
    prev_rcv=$rcv
    prev_rcv_idx=${r%% *}
  done
  if p=$(event "${EVLOG[tablet]}" display "" "$run") && [ -n "$p" ]; then
    printf '  the tablet displays, %d ms after the set-point:\n    %s\n' "$((${p#* } - t0))" \
      "$(jq -rs --argjson k "${p%% *}" '.[$k].payload.diagram' "${EVLOG[tablet]}")"
    check_result "run $run completed: the tablet displays the diagram" 1
  else
    check_result "run $run completed: the tablet displays the diagram" 0
  fi
}

#############################################################################################
bold "5. Run 1: the operator lowers the voltage; the DMS brings the feeder back to 120 V"
scenario 1

#############################################################################################
bold "6. Detect: a copy of the meter's identity connects from a second address"
# The thief's loot: the meter's certificate, its encrypted key and the secret that unlocks it
# (a copy of the device directory), and the key decrypted for standard tools.
cp -a "$DEMO/devices/meter" "$DEMO/stolen-meter"
gen=$(jq -r .generation "$DEMO/stolen-meter/device.json")
openssl pkcs8 -in "$DEMO/stolen-meter/key-$gen.pem" -passin "file:$DEMO/stolen-meter/secret" \
  -out "$DEMO/stolen-meter.key" 2>/dev/null
chmod 600 "$DEMO/stolen-meter.key"
meter_serial=$(mqpki-device --dir "$DEMO/devices/meter" status --json | jq -r .serial)
cloned_alert() {
  mqpki alerts --json | jq -e 'any(.[]; .rule == "cloned_identity" and .asset == "meter"
    and .response == "hold")' >/dev/null
}
t_detect=$(ms)
echo "  attacker 0: mosquitto_sub from ::1 with the meter's certificate and key, client meter:x"
(exec mosquitto_sub -h ::1 -p "$BPORT6" --cafile "$DEMO/chain.pem" --insecure \
  --cert "$DEMO/stolen-meter/cert.pem" --key "$DEMO/stolen-meter.key" -i meter:x \
  -t 'fleet/meter/#' >"$LOG/attacker0.out" 2>&1) &
ATTACKER0=$!
started "$ATTACKER0"
check "mqpkid detects the cloned identity and holds the certificate" wait_for 10 cloned_alert
check "the broker disconnects the meter" \
  wait_for 10 has_event "${EVLOG[meter]}" disconnected "" 0
check "the clone's connection is cut too" wait_for 10 gone "$ATTACKER0"
d=$(event "${EVLOG[meter]}" disconnected "" 0)
DETECT_MS=""
if [ -n "$d" ]; then
  # The event reaches mqpkid in the broker's next batch; the detector holds the certificate,
  # the publisher signs a delta CRL and the feed hands it to the broker, which kicks both.
  t_crl=$(date -r "$MQPKI_HOME/crl/issuing-delta.crl" +%s%3N)
  DETECT_MS=$((${d#* } - t_detect))
  FROM_CRL=$((${d#* } - t_crl))
  {
    printf '%d\tthe clone connects from ::1\n' 0
    printf '%d\tcrl/issuing-delta.crl written (the hold; brokers get it from mqpkid)\n' \
      $((t_crl - t_detect))
    printf '%d\tthe meter reports its disconnect\n' "$DETECT_MS"
  } | sort -n -s | while IFS=$'\t' read -r t what; do printf '  +%4d ms  %s\n' "$t" "$what"; done
fi
check "the meter's reconnect is refused" wait_for 10 has_event "${EVLOG[meter]}" refused "" 0
check "the meter process ends (exit 3: identity refused)" wait_for 10 gone "${PID[meter]}"
echo "  meter: reconnect refused: $(jq -rs 'map(select(.event=="refused")) | first
  | .payload // "?"' "${EVLOG[meter]}")"
echo "  broker: $(grep -m1 "certificate .* connected from" "$LOG/broker.log" | sed 's/^[^ ]*: //')"

echo
echo "  attacker 3: a field gateway's valid identity subscribes across the fleet"
mqpki asset add gateway --kind device --model "Field gateway" --location feeder-12 >/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=gateway \
  -keyout "$DEMO/gateway.key" -out "$DEMO/gateway.csr" 2>/dev/null
mqpki issue --asset gateway --csr "$DEMO/gateway.csr" --out "$DEMO/gateway.pem" >/dev/null
GW=(-h 127.0.0.1 -p "$BPORT" --cafile "$DEMO/chain.pem" --cert "$DEMO/gateway.pem"
  --key "$DEMO/gateway.key" -i gateway)
SCAN=()
for r in "${ROLES[@]}"; do SCAN+=(-t "fleet/$r/status" -t "fleet/$r/cmd" -t "fleet/$r/config"); done
t_scan=$(ms)
mosquitto_sub "${GW[@]}" "${SCAN[@]}" -C 1 -W 2 >"$LOG/attacker3.out" 2>&1 || true
scan_alert() {
  mqpki alerts --json | jq -e 'any(.[]; .rule == "topic_scan" and .asset == "gateway"
    and .response == "quarantine")' >/dev/null
}
check "mqpkid detects the topic scan and quarantines the gateway" wait_for 10 scan_alert
check "the broker confines the gateway to fleet/gateway/quarantine" \
  wait_for 10 grep -q "1 assets under quarantine" "$LOG/broker.log"
SCAN_MS=$(($(ms) - t_scan))
mosquitto_pub "${GW[@]}" -t fleet/gateway/status -m up >/dev/null 2>&1 || true
check "the quarantined gateway may not publish its status" wait_for 5 bash -c \
  "mqpki events --asset gateway --json | jq -e -s 'any(.[]; .type == \"quarantine_denied\")' \
  >/dev/null"
DETECT_PHASE_MS=$(($(ms) - t_detect))
echo "  the Detect phase took $DETECT_PHASE_MS ms (both attacks, detection, responses, checks)"

#############################################################################################
bold "7. Respond: the operator reviews the alerts; the meter's key is declared compromised"
run mqpki alerts --open | indent
run mqpki revoke --asset meter --reason key-compromise | indent
for id in $(mqpki alerts --open --json | jq -r '.[] | select(.rule == "cloned_identity" or
  .rule == "topic_scan") | .id'); do
  mqpki alerts ack "$id" | indent
done
rm -f "$DEMO/gateway.key"

printf '\n  attacker 1: mqpki-fieldbus meter with a copy of the meter directory\n'
rc=0
timeout 20 mqpki-fieldbus meter --dir "$DEMO/stolen-meter" --broker "mqtts://127.0.0.1:$BPORT" \
  >"$LOG/attacker1.jsonl" 2>"$LOG/attacker1.err" || rc=$?
check "attacker 1 (stolen device directory) is refused" \
  test "$rc" = 3 -a -n "$(event "$LOG/attacker1.jsonl" refused "" 0)"
echo "    exit $rc: $(jq -rs 'map(select(.event=="refused")) | first | .payload // "-"' \
  "$LOG/attacker1.jsonl")"
printf '  attacker 2: mosquitto_sub with the stolen certificate and the decrypted key\n'
rc=0
timeout 20 mosquitto_sub -h 127.0.0.1 -p "$BPORT" --cafile "$DEMO/chain.pem" \
  --cert "$DEMO/stolen-meter/cert.pem" --key "$DEMO/stolen-meter.key" -i meter \
  -t 'fleet/supply/voltage' -C 1 -W 10 >"$LOG/attacker2.out" 2>&1 || rc=$?
check "attacker 2 (mosquitto_sub, stolen certificate and key) is refused" \
  grep -q "not authori" "$LOG/attacker2.out"
echo "    exit $rc: $(head -1 "$LOG/attacker2.out")"
check "the broker logs the refusals" \
  grep -qi "meter (certificate $meter_serial) refused" "$LOG/broker.log"
echo "  broker: $(grep -i -m1 "meter (certificate $meter_serial) refused" "$LOG/broker.log" |
  sed 's/^[^ ]*: //')"
for r in tablet dms capbank supply; do
  check "$r was not disconnected" bash -c "kill -0 ${PID[$r]} && \
    ! grep -q '\"disconnected\"' '${EVLOG[$r]}'"
done

#############################################################################################
bold "8. Recover: a new token, a fresh key, the meter enrolls again"
enroll meter "$DEMO/devices/meter-2" meter-2
new_serial=$(mqpki-device --dir "$DEMO/devices/meter-2" status --json | jq -r .serial 2>/dev/null)
check "the new meter certificate is a new one" \
  test -n "$new_serial" -a "$new_serial" != "$meter_serial"
start_role meter "$DEMO/devices/meter-2"
check "the new meter connected" wait_for 10 has_event "${EVLOG[meter]}" connected "" 0

#############################################################################################
bold "9. Run 2: the same scenario with the recovered meter"
scenario 2

#############################################################################################
bold "10. The inventory"
run mqpki asset list | indent
run mqpki audit verify | indent

#############################################################################################
bold "10. Posture: the NIST CSF report (docs/csf.md)"
run mqpki report csf --format html --out "$DEMO/csf-report.html" | tee "$LOG/csf.out" | indent
check "the CSF report lists Identify, Protect, Detect, Respond and Recover" \
  test "$(grep -c ': tier ' "$LOG/csf.out")" = 5

bold "Summary"
for r in "${ROLES[@]}" meter-2; do
  printf '  enrollment %-8s %4s ms\n' "$r" "${ENROLL_MS[$r]:--}"
done
if [ -n "$DETECT_MS" ]; then
  printf '  clone connects to meter disconnected   %d ms (detect, hold, delta CRL, kick)\n' \
    "$DETECT_MS"
fi
printf '  topic scan to quarantine in force      %d ms\n' "${SCAN_MS:-0}"
printf '  Detect phase                           %d ms\n' "${DETECT_PHASE_MS:-0}"
printf '  %d checks passed, %d failed, %d s in all\n' "$PASSED" "$FAILED" \
  $((($(ms) - START_MS) / 1000))
echo "  working directory: $DEMO (recreated on every run; logs in $LOG)"
echo "  NIST CSF report: $DEMO/csf-report.html"
grep ': tier ' "$LOG/csf.out" | sed 's/^/    /' || true
if [ -n "$RESULT" ]; then
  enroll_json=$(for r in "${!ENROLL_MS[@]}"; do echo "$r ${ENROLL_MS[$r]}"; done |
    jq -Rn '[inputs | split(" ") | {(.[0]): (.[1] | tonumber)}] | add // {}')
  jq -nc --argjson p "$PASSED" --argjson f "$FAILED" --argjson e "$enroll_json" \
    --arg c "${FROM_CRL:-}" --arg d "${DETECT_MS:-}" --arg q "${SCAN_MS:-}" \
    --arg t "${DETECT_PHASE_MS:-}" \
    'def n: if . == "" then null else tonumber end; {summary: true, passed: $p, failed: $f,
    enroll_ms: $e, crl_written_to_disconnect_ms: ($c | n),
    clone_to_disconnect_ms: ($d | n), scan_to_quarantine_ms: ($q | n),
    detect_phase_ms: ($t | n)}' \
    >>"$RESULT"
fi
[ "$FAILED" -eq 0 ]
