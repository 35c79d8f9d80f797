#!/usr/bin/env bash
# 08-detect: detect -> respond with the bundled broker, mqpkid and real clients. For each
# built-in detector the broker's event, the alert, the automatic response, its audit record and
# `mqpki release` restoring service; a bystander's subscriber stays connected throughout; an
# ACL-denial flood leaves the stored events within [detect] events_max_rows.
. "$(dirname "$0")/lib.sh"

P=$(free_port)
P6=$(free_port)
H=$MQPKI_HOME
CA=(--cafile "$T/chain.pem")
# A second address for the same certificate: the broker also listens on ::1 (its certificate
# names 127.0.0.1 only, so that client skips the host name check).
V4=(-h 127.0.0.1 -p "$P" "${CA[@]}")
V6=(-h ::1 -p "$P6" "${CA[@]}" --insecure)

id_of() { "$@" --cert "$T/$ASSET.pem" --key "$T/$ASSET.key"; }
# client ASSET mosquitto_xxx ARGS...: a client with ASSET's certificate on the IPv4 listener.
client() { local a=$1 cmd=$2; shift 2; "$cmd" "${V4[@]}" --cert "$T/$a.pem" --key "$T/$a.key" "$@"; }
# bg_client ASSET OUT ARGS...: a background mosquitto_sub (its pid in $!, for kill and alive).
bg_client() {
  local a=$1 out=$2; shift 2
  (exec mosquitto_sub "${V4[@]}" --cert "$T/$a.pem" --key "$T/$a.key" "$@" >"$out" 2>&1) &
}
alerts_json() { mqpki alerts --json; }
has_alert() { alerts_json | jq -e --arg r "$1" --arg a "$2" \
  'any(.[]; .rule == $r and (.asset == $a or .address == $a))' >/dev/null; }
has_event() { mqpki events --asset "$2" --json | jq -e -s --arg t "$1" 'any(.[]; .type == $t)' \
  >/dev/null; }
cert_state() { mqpki cert list --asset "$1" --json | jq -r '.[0].state + ":" + (.[0].reason // "")'; }
history_has() { mqpki asset show "$1" --json | jq -e --arg a "$2" --arg who "$3" \
  'any(.history[]; .action == $a and (.actor | startswith($who)))' >/dev/null; }

check "mqpki init" init_ca
cat >>"$H/mqpki.conf" <<EOF

[detect]
events_max_rows = 500
auth_failures_threshold = 3
topic_scan_threshold = 5
flapping_threshold = 4
silent_window = 3s
revoked_connected_window = 1s
hook = $T/hook.sh
EOF
# The hook keeps every alert it is given.
printf '#!/bin/sh\ncat >>"%s/hook.out"\necho >>"%s/hook.out"\n' "$T" "$T" >"$T/hook.sh"
chmod 700 "$T/hook.sh"
check "broker init b1" mqpki broker init b1 --port "$P"
cat >>"$H/brokers/b1/mosquitto.conf" <<EOF
plugin_opt_events_max 256
plugin_opt_stats_every 1

listener $P6 ::1
cafile $H/brokers/b1/ca.pem
certfile $H/brokers/b1/broker.pem
keyfile $H/brokers/b1/broker.key
require_certificate true
use_identity_as_username false
tls_version tlsv1.2
EOF
for d in meter bystander scanner prober flapper flooder; do
  mqpki asset add "$d" --kind device >/dev/null
  make_csr "$d"
  mqpki issue --asset "$d" --csr "$T/$d.csr" --out "$T/$d.pem" >/dev/null
done
meter_serial=$(openssl x509 -in "$T/meter.pem" -noout -serial | cut -d= -f2)

mqpki broker run b1 >"$T/broker.log" 2>&1 &
BROKER=$!
PIDS+=("$BROKER")
check "broker b1 listening" wait_for 10 listening "$P"
check "mqpkid starts" start_mqpkid
check "mqpkid's feed connects to b1" wait_for 15 grep -q "feed: connected to broker b1" \
  "$MQPKID_LOG"
check "b1 holds the CRL" wait_for 10 grep -q "full CRL .* accepted" "$T/broker.log"

# The bystander listens to its own topics the whole time.
bg_client bystander "$T/bystander.out" -i bystander -t 'fleet/bystander/#'
BYSTANDER=$!
PIDS+=("$BYSTANDER")
check "the bystander is connected" wait_for 10 grep -q "as bystander " "$T/broker.log"

# Cloned identity: the meter's certificate from a second address while the meter is connected.
bg_client meter "$T/meter.out" -i meter -t 'fleet/meter/#'
METER=$!
PIDS+=("$METER")
check "the meter is connected" wait_for 10 has_event connect meter
(exec mosquitto_sub "${V6[@]}" --cert "$T/meter.pem" --key "$T/meter.key" -i meter \
  -t 'fleet/meter/#' >"$T/clone.out" 2>&1) &
CLONE=$!
PIDS+=("$CLONE")
check "the broker reports the session takeover from ::1" wait_for 10 has_event takeover meter
check "cloned_identity alert for the meter" wait_for 10 has_alert cloned_identity meter
check "its response put the certificate on hold" wait_for 10 bash -c \
  "[ \"\$(mqpki cert list --asset meter --json | jq -r '.[0].state')\" = revoked ]"
assert "the alert says so" bash -c "alerts_json() { mqpki alerts --json; }; alerts_json | jq -e \
  'any(.[]; .rule == \"cloned_identity\" and .response == \"hold\" and \
  (.outcome | test(\"put on hold\")))' >/dev/null"
check "b1 disconnects the held certificate" wait_for 10 grep -q \
  "disconnecting meter .*certificate revoked" "$T/broker.log"
check "the meter's connection is cut (its reconnect is refused)" wait_for 10 gone "$METER"
check "the clone's connection is cut too" wait_for 10 gone "$CLONE"
assert "audited: the hold names the rule" history_has meter cert.revoke detect:cloned_identity
assert "audited: the alert with its evidence" bash -c "mqpki asset show meter --json | jq -e \
  'any(.history[]; .action == \"detect.alert\" and .detail.rule == \"cloned_identity\" and \
  .detail.evidence.other_address != null)' >/dev/null"
assert "the bystander was not disturbed" alive "$BYSTANDER"
check "release --asset meter" mqpki release --asset meter
assert "release lifts the hold" test "$(mqpki cert list --asset meter --json | jq -r \
  '.[0].state')" = valid
check "the meter connects again" wait_for 10 bash -c "mosquitto_pub -h 127.0.0.1 -p $P \
  --cafile '$T/chain.pem' --cert '$T/meter.pem' --key '$T/meter.key' -i meter \
  -t fleet/meter/up -m back"
assert "release is audited" history_has meter cert.unhold cli
assert "the hook got the alert on stdin" grep -q '"rule":"cloned_identity"' "$T/hook.out"

# The same certificate from a second address under another client id: held again.
n=$(grep -c 'as meter ' "$T/broker.log")
bg_client meter "$T/meter2.out" -i meter -t 'fleet/meter/#'
METER=$!
PIDS+=("$METER")
check "the meter is back" wait_for 10 bash -c "[ \$(grep -c 'as meter ' '$T/broker.log') -gt $n ]"
(exec mosquitto_sub "${V6[@]}" --cert "$T/meter.pem" --key "$T/meter.key" -i meter:b \
  -t 'fleet/meter/#' >"$T/clone2.out" 2>&1) &
CLONE=$!
PIDS+=("$CLONE")
check "the broker reports one certificate from two addresses" wait_for 10 has_event cert_shared meter
check "held again (the released hold answers anew)" wait_for 10 bash -c \
  "[ \"\$(mqpki cert list --asset meter --json | jq -r '.[0].state')\" = revoked ]"
check "both connections are cut" wait_for 10 bash -c "! kill -0 $METER 2>/dev/null && \
  ! kill -0 $CLONE 2>/dev/null"
assert "two cloned_identity alerts" test "$(mqpki alerts --json | jq \
  '[.[] | select(.rule == "cloned_identity")] | length')" = 2
check "release --asset meter again" mqpki release --asset meter

# Topic scanning: denials over many distinct topics; the response is a quarantine.
for i in 1 2 3 4 5 6; do
  client scanner mosquitto_pub -i scanner -t "fleet/meter/probe$i" -m x >/dev/null 2>&1 || true
done
check "the broker reports ACL denials with their topics" wait_for 10 bash -c \
  "mqpki events --asset scanner --json | jq -e -s 'any(.[]; .type == \"acl_denied\" and \
  .event.topic == \"fleet/meter/probe1\")' >/dev/null"
check "topic_scan alert for the scanner" wait_for 10 has_alert topic_scan scanner
check "b1 learns the quarantine" wait_for 10 grep -q "1 assets under quarantine" "$T/broker.log"
assert "audited: the quarantine" history_has scanner detect.quarantine detect
client scanner mosquitto_pub -i scanner -t fleet/scanner/data -m denied >/dev/null 2>&1 || true
client scanner mosquitto_pub -i scanner -t fleet/scanner/quarantine -m allowed >/dev/null 2>&1 ||
  true
check "quarantined: its own data topic is denied now" wait_for 10 bash -c \
  "mqpki events --asset scanner --json | jq -e -s 'any(.[]; .type == \"quarantine_denied\" and \
  .event.topic == \"fleet/scanner/data\")' >/dev/null"
assert "but fleet/scanner/quarantine is not" bash -c "! mqpki events --asset scanner --json | \
  jq -e -s 'any(.[]; .event.topic == \"fleet/scanner/quarantine\")' >/dev/null"
check "release --asset scanner" mqpki release --asset scanner
quarantined_now() { grep "assets under quarantine" "$T/broker.log" | tail -1 | grep -q ": $1 assets"; }
check "b1 learns the release" wait_for 10 quarantined_now 0
bg_client scanner "$T/scanner.out" -i scanner:sub -t fleet/scanner/data -C 1 -W 10
SUB=$!
PIDS+=("$SUB")
wait_for 10 grep -q "as scanner:sub " "$T/broker.log" || true
client scanner mosquitto_pub -i scanner -t fleet/scanner/data -m restored -q 1 >/dev/null 2>&1
wait "$SUB" 2>/dev/null || true
assert "after release the scanner's messages flow again" grep -q restored "$T/scanner.out"

# A wildcard subscription outside its subtree fires at once.
client prober mosquitto_sub -i prober -t 'fleet/#' -C 1 -W 2 >/dev/null 2>&1 || true
check "topic_scan alert for a wildcard subscription" wait_for 10 bash -c "mqpki alerts --json | \
  jq -e 'any(.[]; .rule == \"topic_scan\" and .asset == \"prober\" and \
  .evidence.wildcard_subscription == \"fleet/#\")' >/dev/null"
check "release --asset prober" mqpki release --asset prober

# Repeated authentication failures: the prober's certificate under another asset's client id.
for i in 1 2 3; do
  client prober mosquitto_pub -i bystander -t fleet/prober/x -m x >/dev/null 2>&1 || true
done
check "the broker reports refusals with their reason" wait_for 10 bash -c \
  "mqpki events --asset prober --json | jq -e -s 'any(.[]; .type == \"connect_refused\" and \
  .event.reason == \"client_id\")' >/dev/null"
check "auth_failures alert for the prober" wait_for 10 has_alert auth_failures prober
assert "the bystander's session was not taken over" alive "$BYSTANDER"

# Flapping connections, then silence.
for i in 1 2 3 4; do
  client flapper mosquitto_pub -i flapper -t fleet/flapper/x -m "$i" >/dev/null 2>&1
done
check "flapping alert for the flapper" wait_for 10 has_alert flapping flapper
check "silent alert once the flapper stays away" wait_for 15 has_alert silent flapper
assert "no silent alert for the connected bystander" bash -c "! mqpki alerts --json | jq -e \
  'any(.[]; .rule == \"silent\" and .asset == \"bystander\")' >/dev/null"
check "disconnects are reported" has_event disconnect flapper

# A broker that does not enforce the CRL (its plugin trusts another CA than ours, so that
# neither our CRLs nor the issuing CA list of the feed verify) lets a held certificate in:
# revoked_connected.
P2=$(free_port)
check "broker init b2" mqpki broker init b2 --port "$P2"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=another CA" \
  -keyout "$T/other-ca.key" -out "$T/other-ca.pem" -days 2 \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
sed -i "s|^plugin_opt_ca_file .*|plugin_opt_ca_file $T/other-ca.pem|" "$H/brokers/b2/mosquitto.conf"
mqpki broker run b2 >"$T/broker2.log" 2>&1 &
PIDS+=($!)
check "broker b2 listening" wait_for 10 listening "$P2"
check "mqpkid links b2" wait_for 15 grep -q "feed: connected to broker b2" "$MQPKID_LOG"
check "b2 refuses the CRL" wait_for 10 grep -q "signed by an unknown CA" "$T/broker2.log"
check "hold the flapper" mqpki revoke --asset flapper --reason hold
sleep 2.1 # revocation times are whole seconds: past the 1 s grace for sure
mosquitto_pub -h 127.0.0.1 -p "$P2" "${CA[@]}" --cert "$T/flapper.pem" --key "$T/flapper.key" \
  -i flapper -t fleet/flapper/x -m late >/dev/null 2>&1 || true
check "revoked_connected alert for the flapper on b2" wait_for 10 bash -c "mqpki alerts --json | \
  jq -e 'any(.[]; .rule == \"revoked_connected\" and .asset == \"flapper\" and \
  .broker == \"b2\")' >/dev/null"
check "release --asset flapper" mqpki release --asset flapper

# Alerts: listing, acknowledging.
id=$(mqpki alerts --json | jq '[.[] | select(.rule == "flapping")][0].id')
check "alerts ack" mqpki alerts ack "$id"
assert "an acknowledged alert is no longer open" bash -c "! mqpki alerts --open --json | \
  jq -e --argjson id $id 'any(.[]; .id == \$id)' >/dev/null"
expect_fail 1 "ack of an unknown alert" mqpki alerts ack 999999

# A flood of ACL denials from one client: bounded rings, bounded store, others undisturbed.
seq 1 3000 | client flooder mosquitto_pub -i flooder -t fleet/bystander/x -l >/dev/null 2>&1 ||
  true
check "the flood is reported" wait_for 15 has_event acl_denied flooder
# At most plugin_opt_denials_per_s (20) denial events a second per client; the stats event
# that follows (here at the flooder's disconnect) counts the rest: every denial is accounted.
denials() { mqpki events --asset flooder --json | jq -s '([.[] | select(.type == "acl_denied")]
  | length) + ([.[] | select(.type == "stats") | .event.denials_dropped // 0] | add // 0)'; }
check "every denial is counted: sent one by one or summed in stats" wait_for 15 bash -c \
  "[ \"\$($(declare -f denials); denials)\" = 3000 ]"
sent=$(mqpki events --asset flooder --json | jq -s '[.[] | select(.type == "acl_denied")] | length')
assert "but only a few were sent one by one (got $sent)" test "$sent" -le 200
check "stored events stay within events_max_rows (pruned)" wait_for 40 bash -c \
  "[ \$(sqlite3 '$H/mqpki.db' 'SELECT COUNT(*) FROM events') -le 500 ]"
client bystander mosquitto_pub -i bystander:pub -t fleet/bystander/after -m still-here -q 1
check "the bystander still gets its messages" wait_for 10 grep -q still-here "$T/bystander.out"
assert "broker and mqpkid alive" bash -c "kill -0 $BROKER && kill -0 $MQPKID_PID"
check "the alerts metric counts by rule" bash -c "curl -sS --cacert '$T/chain.pem' \
  '$MQPKID_URL/metrics' | grep -q 'mqpki_detect_alerts_total{rule=\"cloned_identity\"} 2'"
finish
