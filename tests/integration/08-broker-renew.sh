#!/usr/bin/env bash
# 08-broker-renew: the bundled broker's certificate is renewed with its DNS and IP names and a
# fresh key; Mosquitto reloads it (SIGHUP) for new connections while a connected subscriber
# stays connected and keeps receiving.
. "$(dirname "$0")/lib.sh"

P=$(free_port)
H=$MQPKI_HOME
TLS=(-h localhost -p "$P" --cafile "$T/chain.pem")
served() { (echo | openssl s_client -connect "127.0.0.1:$P" 2>/dev/null || true) | openssl x509 -noout -serial; }
names() { openssl x509 -in "$1" -noout -ext subjectAltName | tail -n +2 | tr -d ' '; }

check "mqpki init" init_ca
check "broker init b1 --host localhost" mqpki broker init b1 --host localhost --port "$P"
cp "$H/brokers/b1/broker.pem" "$T/old.pem"
mqpki broker run b1 >"$T/broker.log" 2>&1 &
PIDS+=("$!")
check "broker b1 listening" wait_for 10 listening "$P"
check "start mqpkid" start_mqpkid
check "mqpkid's feed reaches b1" wait_for 15 grep -q "feed: connected to broker b1" "$MQPKID_LOG"
old=$(served)
assert "the broker serves its certificate" test "$old" = "$(openssl x509 -in "$T/old.pem" -noout -serial)"

mqpki asset add dev1 --kind device >/dev/null
make_csr dev1
check "issue dev1" mqpki issue --asset dev1 --csr "$T/dev1.csr" --out "$T/dev1.pem"
mosquitto_sub "${TLS[@]}" --cert "$T/dev1.pem" --key "$T/dev1.key" -i dev1:sub -t "fleet/dev1/#" \
  >"$T/sub.out" 2>"$T/sub.err" &
SUB=$!
PIDS+=("$SUB")
check "the subscriber is connected" wait_for 10 grep -q "as dev1:sub " "$T/broker.log"
pub() { mosquitto_pub "${TLS[@]}" --cert "$T/dev1.pem" --key "$T/dev1.key" -i dev1:pub -q 1 \
  -t fleet/dev1/x -m "$1"; }
check "a message before the renewal" pub before
check "... arrives" wait_for 10 grep -qx before "$T/sub.out"

check "broker renew without --force: not due" mqpki broker renew b1
assert "... says so" contains "$T/out" "not due"
check "broker renew --force (through mqpkid)" mqpki broker renew b1 --force
assert "Mosquitto was told to reload" contains "$T/out" "reloaded"
assert "the new certificate names what the old one did" \
  test "$(names "$H/brokers/b1/broker.pem")" = "$(names "$T/old.pem")"
assert "a new key" test "$(openssl x509 -in "$H/brokers/b1/broker.pem" -noout -pubkey)" != \
  "$(openssl x509 -in "$T/old.pem" -noout -pubkey)"
assert "the key is 0600" test "$(stat -c %a "$H/brokers/b1/broker.key")" = 600
new=$(openssl x509 -in "$H/brokers/b1/broker.pem" -noout -serial)
served_is() { test "$(served)" = "$1"; }
check "new connections get the new certificate" wait_for 10 served_is "$new"
check "the new certificate verifies for localhost" openssl verify -CAfile "$T/chain.pem" \
  -untrusted "$H/brokers/b1/broker.pem" -verify_hostname localhost "$H/brokers/b1/broker.pem"
assert "the subscriber is still connected" alive "$SUB"
check "a message after the renewal" pub after
check "... reaches the same subscriber" wait_for 10 grep -qx after "$T/sub.out"
assert "the subscriber never disconnected" bash -c "! grep -q 'Client dev1:sub .*disconnect' '$T/broker.log'"
assert "the old broker certificate is superseded" \
  test "$(mqpki cert list --asset b1 --state superseded --json | jq length)" = 1

finish
