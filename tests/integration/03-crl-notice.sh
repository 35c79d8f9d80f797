#!/usr/bin/env bash
# 03-crl-notice: a full CRL at or above [feed] crl_inline_max goes to the brokers as a notice
# (number, size, SHA-256, URL) and the plugin's worker fetches it from mqpkid over HTTPS, off
# Mosquitto's thread (docs/broker.md, "Large CRLs"). Here every full CRL does (crl_inline_max
# = 1): the broker takes the first one and each new one, a revocation still kicks at once (the
# delta comes whole), crl-sync fetches too, the retained copy on the topic is the notice. A
# broker restarted finds its CRL in state/ and takes the notice as the one it holds. Hostile
# notices (published with mqpkid's identity): malformed, pointing at nothing, at a server with
# another CA's CRL: refused or retried, the CRL in force stays; a real notice replaces a bad
# fetch of the same number. crl-sync fetches notices off its MQTT loop: deltas keep coming.
. "$(dirname "$0")/lib.sh"

P=$(free_port)
TLS=(-h localhost -p "$P" --cafile "$T/chain.pem")
SVC=(--cert "$MQPKI_HOME/tls/mqpkid.pem" --key "$MQPKI_HOME/tls/mqpkid.key")
crlnum() { openssl crl -inform "${2:-PEM}" -in "$1" -noout -crlnumber | sed 's/crlNumber=0x//'; }

check "mqpki init" init_ca
printf '\n[feed]\ncrl_inline_max = 1\n' >>"$MQPKI_HOME/mqpki.conf"
check "broker init b1" mqpki broker init b1 --port "$P"
mqpki broker run b1 >"$T/broker.log" 2>&1 &
BROKER=$!
PIDS+=("$BROKER")
check "broker b1 listening" wait_for 10 listening "$P"
check "start mqpkid" start_mqpkid
check "the broker is told of the full CRL by a notice" wait_for 15 grep -q \
  "announced: fetching it from https://localhost:$MQPKID_PORT/crl/issuing.crl" "$T/broker.log"
check "and fetches and takes it" wait_for 15 grep -Eq "full CRL [0-9]+ (accepted|swapped in)" \
  "$T/broker.log"
mosquitto_sub "${TLS[@]}" "${SVC[@]}" -i notice-reader -t mqpki/v1/crl/full -C 1 -W 5 \
  >"$T/retained" 2>/dev/null || true
assert "the retained copy on the topic is the notice" test \
  "$(jq -r '[.crl_ref, (.url | test("/crl/issuing.crl$"))] | @csv' "$T/retained" 2>/dev/null)" = '1,true'

# A revocation: the delta comes whole, the kick at once; the next full CRL is fetched.
mqpki asset add dev1 --kind device >/dev/null
make_csr dev1
mqpki issue --asset dev1 --csr "$T/dev1.csr" --out "$T/dev1.pem" >/dev/null
mosquitto_sub "${TLS[@]}" --cert "$T/dev1.pem" --key "$T/dev1.key" -i dev1 -t fleet/dev1/x \
  >/dev/null 2>&1 &
SUB=$!
PIDS+=("$SUB")
check "dev1 connected" wait_for 10 grep -q "as dev1 " "$T/broker.log"
check "revoke dev1" mqpki revoke --asset dev1 --reason key-compromise
check "dev1 is disconnected" wait_for 10 gone "$SUB"
check "crl publish" mqpki crl publish
N=$(crlnum "$MQPKI_HOME/crl/issuing.pem")
check "the broker fetches the new full CRL" wait_for 15 grep -Eiq \
  "full CRL $((16#$N)) (accepted|swapped in)" "$T/broker.log"

check "crl-sync --once fetches it too" mqpki crl-sync --broker "mqtts://localhost:$P" \
  --out "$T/sync.pem" --once --timeout 20s
assert "crl-sync's file is that CRL" test "$(crlnum "$T/sync.pem")" = "$N"

# Restart: the CRL from state/, the notice taken as the one held.
stop_pid "$BROKER"
mqpki broker run b1 >"$T/broker2.log" 2>&1 &
BROKER=$!
PIDS+=("$BROKER")
check "broker b1 back" wait_for 10 listening "$P"
check "mqpkid's feed reconnects" wait_for 40 bash -c \
  "[ \$(grep -c 'feed: connected to broker b1' '$MQPKID_LOG') -ge 2 ]"
assert "the restarted broker holds the CRL from state/" grep -Eq \
  "holding full CRL $((16#$N))" "$T/broker2.log"
sleep 1
assert "and takes the notice sent again as the one it holds (no fetch)" bash -c \
  "! grep -q 'full CRL $((16#$N)) .*announced' '$T/broker2.log'"

check "mqpkid serves no generation copy before a rollover" bash -c \
  "[ \$(curl -s -o /dev/null -w '%{http_code}' --cacert '$T/chain.pem' \
     '$MQPKID_URL/crl/generation/1/issuing.crl') = 404 ]"
check "nor a path outside crl/" bash -c \
  "[ \$(curl -s -o /dev/null -w '%{http_code}' --path-as-is --cacert '$T/chain.pem' \
     '$MQPKID_URL/crl/generation/1/../../mqpki.conf') = 404 ]"

# Hostile notices, as only the service identity could publish them.
pub_notice() {
  mosquitto_pub "${TLS[@]}" "${SVC[@]}" -i forger -q 1 -r -t mqpki/v1/crl/full -m "$1" 2>/dev/null || true
}
pub_notice '{"crl_ref":1,"number":"x"}'
check "a malformed notice is refused" wait_for 10 grep -q "ignored: CRL notice" "$T/broker2.log"
pub_notice "{\"crl_ref\":1,\"number\":1,\"size\":100,\"sha256\":\"$(printf '%064d' 0)\",\"url\":\"https://localhost:1/crl/issuing.crl\"}"
check "a notice older than the CRL held is refused" wait_for 10 grep -q \
  "CRL 1 refused: CRL number lower than held" "$T/broker2.log"
NEXT=$(( 16#$N + 1 ))
DEAD=$(free_port)
pub_notice "{\"crl_ref\":1,\"number\":$NEXT,\"size\":100,\"sha256\":\"$(printf '%064d' 0)\",\"url\":\"https://localhost:$DEAD/crl/issuing.crl\"}"
check "a notice pointing at nothing is retried" wait_for 10 grep -q \
  "full CRL $NEXT, attempt 1: https://localhost:$DEAD" "$T/broker2.log"
check "the real next full CRL replaces that fetch" mqpki crl publish
check "and is taken" wait_for 20 grep -Eq "full CRL $NEXT (accepted|swapped in)" "$T/broker2.log"

# A server with another CA's CRL behind a notice: fetched, refused (the signature counts).
mkdir -p "$T/other/crl"
mqpki --home "$T/other-ca" init >/dev/null 2>&1
cp "$T/other-ca/crl/issuing.crl" "$T/other/crl/issuing.crl"
HP=$(free_port)
(cd "$T/other" && exec python3 -m http.server "$HP" --bind 127.0.0.1) >/dev/null 2>&1 &
PIDS+=("$!")
check "a plain HTTP server is up" wait_for 10 listening "$HP"
SIZE=$(stat -c %s "$T/other/crl/issuing.crl")
SHA=$(sha256sum "$T/other/crl/issuing.crl" | cut -d' ' -f1)
pub_notice "{\"crl_ref\":1,\"number\":$((NEXT + 5)),\"size\":$SIZE,\"sha256\":\"$SHA\",\"url\":\"http://127.0.0.1:$HP/crl/issuing.crl\"}"
check "another CA's CRL behind a notice is refused, and retried" wait_for 10 grep -q \
  "full CRL $((NEXT + 5)), attempt 2: .*unknown CA" "$T/broker2.log"
assert "the CRL in force stays" bash -c "! grep -Eq 'full CRL $((NEXT + 5)) (accepted|swapped in)' '$T/broker2.log'"

# A URL that accepts and never answers: stopping the broker cuts the fetch short.
SP=$(free_port)
python3 -c "import socket,time;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('127.0.0.1',$SP));s.listen(5);time.sleep(120)" &
PIDS+=("$!")
check "a silent server is up" wait_for 10 listening "$SP"
pub_notice "{\"crl_ref\":1,\"number\":$((NEXT + 9)),\"size\":$SIZE,\"sha256\":\"$SHA\",\"url\":\"http://127.0.0.1:$SP/crl/issuing.crl\"}"
check "the broker fetches from it" wait_for 10 grep -q "full CRL $((NEXT + 9)) .*announced" "$T/broker2.log"

# crl-sync fetches on a thread of its own: a fetch hanging on that server holds no revocation
# back, and stopping crl-sync cuts it short. It starts from the full CRL in force.
cp "$MQPKI_HOME/crl/issuing.pem" "$T/sync2.pem"
mqpki crl-sync --broker "mqtts://localhost:$P" --out "$T/sync2.pem" \
  --delta-out "$T/sync2-delta.pem" >"$T/sync2.log" 2>&1 &
SYNC=$!
PIDS+=("$SYNC")
check "crl-sync fetches the notice from the silent server" wait_for 10 grep -q \
  "full CRL $((NEXT + 9)) announced" "$T/sync2.log"
mqpki asset add dev2 --kind device >/dev/null
make_csr dev2
mqpki issue --asset dev2 --csr "$T/dev2.csr" --out "$T/dev2.pem" >/dev/null
check "revoke dev2 meanwhile" mqpki revoke --asset dev2 --reason key-compromise
check "its delta CRL reaches crl-sync's file while the fetch hangs" wait_for 10 grep -q \
  "delta CRL .* verified and written to $T/sync2-delta.pem" "$T/sync2.log"
assert "... listing dev2's certificate" bash -c "openssl crl -in '$T/sync2-delta.pem' -noout \
  -text | grep -qi \"$(openssl x509 -in "$T/dev2.pem" -noout -serial | cut -d= -f2)\""
kill -TERM "$SYNC"
check "crl-sync stops within 5 s, its fetch in flight cut short" wait_for 5 gone "$SYNC"

sleep 1
kill -TERM "$BROKER"
check "the broker stops within 5 s, the fetch in flight cut short" wait_for 5 gone "$BROKER"
finish
