#!/usr/bin/env bash
# 03-revoke-kick: the bundled broker (Mosquitto + mqpki plugin) fed by mqpkid. Revoking a device
# disconnects its live subscriber, its certificate is refused afterwards, also after a broker
# restart, another device stays connected; forged, older and garbage CRLs and device publishes
# on the control plane are ignored with a log line; crl-sync follows the feed.
. "$(dirname "$0")/lib.sh"

P=$(free_port)
P2=$(free_port)
H=$MQPKI_HOME
TLS=(-h 127.0.0.1 -p "$P" --cafile "$T/chain.pem")

start_broker() {
  mqpki broker run b1 >"$T/broker$1.log" 2>&1 &
  BROKER=$!
  PIDS+=("$BROKER")
  wait_for 10 listening "$P"
}

# The service identity publishes a CRL payload itself (another client id than the feed's).
service_pub() {
  mosquitto_pub "${TLS[@]}" --cert "$H/tls/mqpkid.pem" --key "$H/tls/mqpkid.key" -i test-pub \
    -q 1 "$@"
}

subscribe() {
  mosquitto_sub "${TLS[@]}" --cert "$T/$1.pem" --key "$T/$1.key" -i "$1" -t "fleet/$1/#" \
    >"$T/sub-$1.out" 2>&1 &
  PIDS+=($!)
  eval "SUB_$1=$!"
}

check "mqpki init" init_ca
cp "$H/crl/issuing.crl" "$T/crl-first.der"
# A full CRL follows a delta within a second here (default 60 s), for crl-sync below.
sed -i 's/^crl_full_after = .*/crl_full_after = 1s/' "$H/mqpki.conf"
check "broker init b1" mqpki broker init b1 --port "$P"
for f in broker.key broker.pem ca.pem broker.conf mosquitto.conf; do
  assert "brokers/b1/$f written" test -s "$H/brokers/b1/$f"
done
assert "broker key is 0600" test "$(stat -c %a "$H/brokers/b1/broker.key")" = 600
assert "broker is an asset of kind broker" \
  test "$(mqpki asset show b1 --json | jq -r .kind)" = broker
openssl x509 -in "$H/brokers/b1/broker.pem" -noout -text >"$T/broker-cert.txt"
assert "broker certificate names 127.0.0.1" contains "$T/broker-cert.txt" "IP Address:127.0.0.1"
assert "mosquitto.conf requires client certificates" \
  contains "$H/brokers/b1/mosquitto.conf" "require_certificate true"
expect_fail 1 "broker init refuses an existing broker" mqpki broker init b1 --port "$P"
expect_fail 1 "broker init refuses a bad name" mqpki broker init "../x"
expect_fail 1 "broker run of an unknown broker" mqpki broker run nosuch

check "broker b1 listening" start_broker 1

for d in dev1 dev2; do
  mqpki asset add "$d" --kind device >/dev/null
  make_csr "$d"
  check "issue $d" mqpki issue --asset "$d" --csr "$T/$d.csr" --out "$T/$d.pem"
done
serial1=$(openssl x509 -in "$T/dev1.pem" -noout -serial | cut -d= -f2)

# The feed: mqpkid when it is built, else the test publishes as the service identity.
MQPKID=0
if [ -x "$MQPKI_BUILD/bin/mqpkid" ]; then
  MQPKID=1
  mqpkid --home "$H" --listen "127.0.0.1:$P2" >"$T/mqpkid.log" 2>&1 &
  PIDS+=($!)
  check "mqpkid's feed connects to b1" \
    wait_for 15 grep -q "feed: connected to broker b1" "$T/mqpkid.log"
  check "b1 accepts mqpkid's CRL" wait_for 10 grep -q "full CRL .* accepted" "$T/broker1.log"
else
  echo "# no mqpkid built: publishing the CRLs as the service identity"
  check "publish the CRL" service_pub -t mqpki/v1/crl/full -r -f "$H/crl/issuing.crl"
fi

subscribe dev1
subscribe dev2
check "dev1 and dev2 connected" wait_for 10 bash -c \
  "grep -q 'as dev1 ' '$T/broker1.log' && grep -q 'as dev2 ' '$T/broker1.log'"
if [ "$MQPKID" = 1 ]; then
  check "the connect event makes dev1 active" \
    wait_for 10 bash -c "[ \"\$(mqpki asset show dev1 --json | jq -r .state)\" = active ]"
  assert "last seen on broker b1" test "$(mqpki asset show dev1 --json | jq -r .last_broker)" = b1
  # The certificate in use is recorded: the one it superseded may renew no more.
  check "the connect event marks dev2's certificate as seen" wait_for 10 test \
    "$(sqlite3 "$H/mqpki.db" "SELECT COUNT(*) FROM certs WHERE asset_id = 'dev2' \
    AND seen_at IS NOT NULL")" = 1
fi

# A device cannot take over another device's session by using its client id.
expect_fail 5 "dev2 cannot connect as client id dev1" bash -c "mosquitto_sub ${TLS[*]} \
  --cert '$T/dev2.pem' --key '$T/dev2.key' -i dev1 -t 'fleet/dev2/#' -C 1 -W 5 2>&1 >/dev/null \
  | head -1 >&2; exit \${PIPESTATUS[0]}"
assert "the broker names the client id rule" contains "$T/broker1.log" "is not its own"
assert "dev1's subscriber was not thrown off" alive "$SUB_dev1"

# Revocation cuts dev1 off; dev2 stays.
check "revoke dev1 for key compromise" mqpki revoke --asset dev1 --reason key-compromise
[ "$MQPKID" = 1 ] || service_pub -t mqpki/v1/crl/full -r -f "$H/crl/issuing.crl"
check "b1 disconnects dev1" wait_for 10 grep -q "disconnecting dev1 .*certificate revoked" \
  "$T/broker1.log"
check "dev1's subscriber ends (its reconnect is refused)" wait_for 10 gone "$SUB_dev1"
assert "dev2's subscriber is still connected" alive "$SUB_dev2"
assert "dev2 was not disconnected" bash -c "! grep -q 'dev2 been disconnected' '$T/broker1.log'"
if [ "$MQPKID" = 1 ]; then
  check "a full CRL follows the delta (crl_full_after)" wait_for 10 bash -c \
    "mqpki crl --json | jq -e '.full.number > .delta.number' >/dev/null"
  check "mqpki crl shows b1 holding the newest full CRL" wait_for 10 bash -c \
    "mqpki crl --json | jq -e '.brokers[0].broker == \"b1\" and .brokers[0].full == .full.number' \
    >/dev/null"
  check "revoking dev1 again is safe" mqpki revoke --asset dev1 --reason key-compromise
  assert "and says every CRL lists it already" contains "$T/out" "already revoked; the published"
  # A broker that reported an older CRL (as after a lost message) gets the newest ones again.
  sqlite3 "$H/mqpki.db" "UPDATE broker_crls SET full_number = 1, delta_number = -1"
  check "revoking again with b1 behind" mqpki revoke --asset dev1 --reason key-compromise
  assert "names the broker that lags and publishes again" contains "$T/out" "b1 (CRL 1) holds an older"
  check "b1 reports the newest CRL again" wait_for 10 bash -c \
    "mqpki crl --json | jq -e '.brokers[0].full == .full.number' >/dev/null"
fi
expect_fail 5 "dev1 cannot reconnect" bash -c "mosquitto_sub ${TLS[*]} --cert '$T/dev1.pem' \
  --key '$T/dev1.key' -i dev1 -t 'fleet/dev1/#' -C 1 -W 5 2>&1 >/dev/null | head -1 >&2; \
  exit \${PIPESTATUS[0]}"
assert "the broker says why" contains "$T/broker1.log" "dev1 (certificate $serial1) refused"

# Hostile feed input is ignored with a log line and leaves the held CRL in place.
mosquitto_pub "${TLS[@]}" --cert "$T/dev2.pem" --key "$T/dev2.key" -i dev2:pub -q 1 \
  -t mqpki/v1/crl/full -f "$T/crl-first.der" >/dev/null 2>&1 || true
check "a device's publish under mqpki/v1/ is denied" \
  wait_for 5 grep -q "acl denied: dev2 may not publish on mqpki/v1/crl/full" "$T/broker1.log"
service_pub -t mqpki/v1/crl/full -f "$T/crl-first.der"
check "an older CRL is refused (no rollback)" \
  wait_for 5 grep -q "refused: CRL number lower than held" "$T/broker1.log"
service_pub -t mqpki/v1/crl/full -m "garbage, not a CRL"
check "a garbage payload is ignored" wait_for 5 grep -q "not a DER CRL" "$T/broker1.log"
head -c 100 "$H/crl/issuing.crl" >"$T/truncated.der"
service_pub -t mqpki/v1/crl/full -f "$T/truncated.der"
check "a truncated CRL is ignored" wait_for 5 bash -c \
  "[ \$(grep -c 'not a DER CRL' '$T/broker1.log') -ge 2 ]"
mqpki --home "$T/other" init >/dev/null 2>&1
service_pub -t mqpki/v1/crl/full -f "$T/other/crl/issuing.crl"
check "a CRL of another CA is ignored" \
  wait_for 5 grep -q "ignored: CRL signed by an unknown CA" "$T/broker1.log"

# crl-sync follows the same feed for other brokers.
check "crl-sync --once writes the verified CRL" mqpki crl-sync --broker "mqtts://127.0.0.1:$P" \
  --out "$T/sync.pem" --exec "touch '$T/reloaded'" --once --timeout 10s
assert "crl-sync ran --exec" test -f "$T/reloaded"
check "the synced CRL verifies" openssl crl -in "$T/sync.pem" -CAfile "$T/chain.pem" -noout
assert "the synced CRL lists dev1" bash -c \
  "openssl crl -in '$T/sync.pem' -noout -text | grep -q '$serial1'"

# After a restart the broker still refuses dev1, from the CRL it kept.
kill "$BROKER"
check "broker b1 stopped" wait_for 10 gone "$BROKER"
check "broker b1 restarted" start_broker 2
assert "the kept CRL is loaded at start" grep -q "holding full CRL [0-9]*, .*: 1 serials" \
  "$T/broker2.log"
expect_fail 5 "dev1 still cannot connect" bash -c "mosquitto_sub ${TLS[*]} --cert '$T/dev1.pem' \
  --key '$T/dev1.key' -i dev1 -t 'fleet/dev1/#' -C 1 -W 5 2>&1 >/dev/null | head -1 >&2; \
  exit \${PIPESTATUS[0]}"
check "dev2's subscriber reconnects" wait_for 15 grep -q "as dev2 " "$T/broker2.log"
assert "dev2's subscriber is alive" alive "$SUB_dev2"
finish
