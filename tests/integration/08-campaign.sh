#!/usr/bin/env bash
# 08-campaign: a fleet-wide re-issue. Device agents connected to the bundled broker get
# {"op":"renew"} from `mqpki campaign renew` through mqpkid's feed, renew and reconnect;
# `campaign status` tracks them; `campaign finish --revoke-old` revokes the certificates they
# replaced (reason superseded) and the next CRL lists them, while the renewed devices stay on.
# A device whose agent does not run turns silent and is cut off by --revoke-old.
. "$(dirname "$0")/lib.sh"

N=5
P=$(free_port)
serial_of() { openssl x509 -in "$1" -noout -serial | cut -d= -f2; }

check "mqpki init" init_ca
check "broker init b1" mqpki broker init b1 --port "$P"
mqpki broker run b1 >"$T/broker.log" 2>&1 &
PIDS+=("$!")
check "broker b1 listening" wait_for 10 listening "$P"
check "start mqpkid" start_mqpkid
check "mqpkid's feed reaches b1" wait_for 15 grep -q "feed: connected to broker b1" "$MQPKID_LOG"
expect_fail 1 "a campaign with nothing to renew" mqpki campaign renew --all

for i in $(seq 1 $N); do
  mqpki asset add "dev$i" --kind device >/dev/null
  mqpki token create "dev$i" >"$T/tok$i"
  chmod 600 "$T/tok$i"
  mqpki-device --dir "$T/dev$i" enroll --server "$MQPKID_URL" --ca "$T/chain.pem" \
    --asset "dev$i" --token-file "$T/tok$i" >/dev/null
  serial_of "$T/dev$i/cert.pem" >"$T/old$i"
  mqpki-device --dir "$T/dev$i" run --broker "mqtts://localhost:$P" 2>"$T/agent$i.log" &
  PIDS+=("$!")
done
check "$N agents connected" wait_for 20 bash -c \
  "[ \$(grep -c 'as dev[0-9]* ' '$T/broker.log') -ge $N ]"
# dev0 is enrolled but its agent never runs.
mqpki asset add dev0 --kind device >/dev/null
mqpki token create dev0 >"$T/tok0"
chmod 600 "$T/tok0"
check "enroll dev0 (no agent)" mqpki-device --dir "$T/dev0" enroll --server "$MQPKID_URL" \
  --ca "$T/chain.pem" --asset dev0 --token-file "$T/tok0"
serial_of "$T/dev0/cert.pem" >"$T/old0"

expect_fail 1 "campaign renew needs one selector" mqpki campaign renew
check "campaign renew --all" mqpki campaign renew --all --rate 20 --silent-after 1s
assert "it sent the command to every device" contains "$T/out" "renew sent to $((N + 1)) assets, 0 failed"
renewed() { test "$(mqpki campaign status --json | jq .counts.renewed)" = "$N"; }
check "every device renewed" wait_for 60 renewed
silent() { test "$(mqpki campaign status --json | jq .counts.silent)" = 1; }
check "dev0 turns silent" wait_for 10 silent
mqpki campaign status --json >"$T/status.json"
assert "status lists $N assets renewed" \
  test "$(jq '[.assets[] | select(.state == "renewed")] | length' "$T/status.json")" = $N
assert "dev0 is silent" test "$(jq -r '.assets[] | select(.asset == "dev0") | .state' \
  "$T/status.json")" = silent
check "campaign status (text)" mqpki campaign status
assert "status text counts" contains "$T/out" "$N renewed"
for i in $(seq 1 $N); do
  [ "$(serial_of "$T/dev$i/cert.pem")" != "$(cat "$T/old$i")" ] || not_ok "dev$i kept its certificate"
done
check "every agent reconnected with its new certificate" wait_for 20 bash -c \
  "[ \$(grep -c 'as dev[0-9]* ' '$T/broker.log') -ge $((2 * N)) ]"

check "campaign finish --revoke-old" mqpki campaign finish --revoke-old
assert "it revoked the $((N + 1)) replaced certificates" contains "$T/out" \
  "$((N + 1)) old certificates revoked"
assert "dev0, silent, is cut off" test "$(mqpki cert list --asset dev0 --state valid --json | \
  jq length)" = 0
for i in $(seq 1 $N); do
  test "$(mqpki cert list --asset "dev$i" --state revoked --json | jq -r '.[0].serial')" = \
    "$(cat "$T/old$i")" || not_ok "dev$i: old certificate not revoked"
  test "$(mqpki cert list --asset "dev$i" --state revoked --json | jq -r '.[0].reason')" = \
    superseded || not_ok "dev$i: reason is not superseded"
done
ok "the old certificates are revoked (superseded)"
mqpki crl --delta --out "$T/delta.pem"
openssl crl -in "$T/delta.pem" -noout -text >"$T/delta.txt"
missing=0
for i in $(seq 0 $N); do grep -qi "$(cat "$T/old$i")" "$T/delta.txt" || missing=$((missing + 1)); done
assert "the delta CRL lists every replaced certificate" test "$missing" = 0
sleep 1
for i in $(seq 1 $N); do
  mqpki-sensor "$T/dev$i" "mqtts://localhost:$P" >/dev/null 2>&1 || not_ok "dev$i cannot connect"
done
ok "the renewed devices still connect"
assert "the campaign is finished" test "$(mqpki campaign status --json | jq .finished)" = true

finish
