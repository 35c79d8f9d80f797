#!/usr/bin/env bash
# 08-rollover: the issuing CA gets a new key while the fleet stays on (docs/operations.md, "CA
# rollover"). Twenty device agents are connected to the bundled broker and a probe publishes a
# sequence through it; `mqpki ca rollover` makes generation 2 (mqpkid does it, it holds the
# token), the broker and crl-sync learn it from the feed, `campaign renew --issuer 1` moves
# every agent onto it, and the subscriber misses no message. `ca retire 1` is refused while the
# probe (no agent) holds a valid certificate of generation 1; `campaign finish --revoke-old`
# revokes it and the superseded ones. The CRL, signed by generation 2, lists them and covers
# generation 1 (RFC 5280 6.3.3 (f), openssl -extended_crl); generation 1's own copy of it
# (crl/generation-1/, the feed, crl-sync's file) serves openssl's default check. Then
# `ca retire 1` takes it out of the chain, the broker and crl-sync.
. "$(dirname "$0")/lib.sh"

N=${ROLLOVER_AGENTS:-20}
P=$(free_port)
TLS=(-h localhost -p "$P" --cafile "$T/chain.pem")
serial_of() { openssl x509 -in "$1" -noout -serial | cut -d= -f2; }
akid_of() { openssl x509 -in "$1" -noout -ext authorityKeyIdentifier | sed -n 's/^ *\(keyid:\)\{0,1\}\([0-9A-F:]*\)$/\2/p'; }
skid_of() { openssl x509 -in "$1" -noout -ext subjectKeyIdentifier | sed -n 's/^ *\([0-9A-F:]*\)$/\1/p'; }

check "mqpki init" init_ca
check "broker init b1" mqpki broker init b1 --port "$P"
mqpki broker run b1 >"$T/broker.log" 2>&1 &
PIDS+=("$!")
check "broker b1 listening" wait_for 10 listening "$P"
check "start mqpkid" start_mqpkid
check "mqpkid's feed reaches b1" wait_for 15 grep -q "feed: connected to broker b1" "$MQPKID_LOG"
# crl-sync feeds another broker's crlfile: it must follow the rollover on its own.
mqpki crl-sync --broker "mqtts://localhost:$P" --out "$T/synced.pem" \
  --delta-out "$T/synced-delta.pem" >"$T/sync.log" 2>&1 &
PIDS+=("$!")
check "crl-sync holds a CRL" wait_for 15 test -s "$T/synced.pem"
check "ca list before any rollover" mqpki ca list --json
assert "one generation, current" test "$(jq -c '[.[] | [.generation, .state]]' "$T/out")" = '[[1,"current"]]'

for i in $(seq 1 "$N"); do
  mqpki asset add "dev$i" --kind device --tag fleet=drill >/dev/null
  mqpki token create "dev$i" >"$T/tok$i"
  chmod 600 "$T/tok$i"
  mqpki-device --dir "$T/dev$i" enroll --server "$MQPKID_URL" --ca "$T/chain.pem" \
    --asset "dev$i" --token-file "$T/tok$i" >/dev/null
  serial_of "$T/dev$i/cert.pem" >"$T/old$i"
  mqpki-device --dir "$T/dev$i" run --broker "mqtts://localhost:$P" 2>"$T/agent$i.log" &
  PIDS+=("$!")
done
check "$N agents connected" wait_for 60 bash -c \
  "[ \$(grep -c 'as dev[0-9]* ' '$T/broker.log') -ge $N ]"

# The probe: a sequence published every 20 ms over one connection, and a subscriber.
mqpki asset add probe --kind device >/dev/null
make_csr probe
mqpki issue --asset probe --csr "$T/probe.csr" --out "$T/probe.pem" >/dev/null
mosquitto_sub "${TLS[@]}" --cert "$T/probe.pem" --key "$T/probe.key" -i probe:sub -q 1 \
  -t fleet/probe/seq >"$T/seq.out" 2>"$T/sub.err" &
SUB=$!
PIDS+=("$SUB")
check "the subscriber is connected" wait_for 10 grep -q "as probe:sub " "$T/broker.log"
(for s in $(seq 1 100000); do echo "$s"; sleep 0.02; done) | mosquitto_pub "${TLS[@]}" \
  --cert "$T/probe.pem" --key "$T/probe.key" -i probe:pub -q 1 -t fleet/probe/seq -l \
  2>"$T/pub.err" &
PUB=$!
PIDS+=("$PUB")
check "the sequence flows" wait_for 10 test -s "$T/seq.out"

cp "$MQPKI_HOME/ca/issuing.pem" "$T/gen1.pem"
check "ca rollover (mqpkid makes the key)" mqpki ca rollover --json
assert "generation 2 is current" test "$(jq .generation "$T/out")" = 2
assert "ca/issuers/1.pem is the old issuing CA" cmp -s "$T/gen1.pem" "$MQPKI_HOME/ca/issuers/1.pem"
assert "ca/issuing.pem is generation 2" cmp -s "$MQPKI_HOME/ca/issuing.pem" "$MQPKI_HOME/ca/issuers/2.pem"
assert "same subject, another key" test \
  "$(openssl x509 -in "$T/gen1.pem" -noout -subject)" = \
  "$(openssl x509 -in "$MQPKI_HOME/ca/issuing.pem" -noout -subject)" -a \
  "$(skid_of "$T/gen1.pem")" != "$(skid_of "$MQPKI_HOME/ca/issuing.pem")"
check "ca export" mqpki ca export --out "$T/chain2.pem"
assert "ca export gives both generations and the root" test "$(grep -c 'BEGIN CERTIFICATE' "$T/chain2.pem")" = 3
check "/cacerts serves both generations" bash -c "curl -sS --cacert '$T/chain.pem' \
  '$MQPKID_URL/.well-known/est/cacerts' | base64 -d | openssl pkcs7 -inform DER -print_certs \
  | grep -c 'BEGIN CERTIFICATE' | grep -qx 3"
check "the broker learned the new generation from the feed" wait_for 10 grep -q \
  "trusting 2 issuing CA keys" "$T/broker.log"
check "ca list" mqpki ca list --json
assert "generation 1 live, 2 current" test \
  "$(jq -c '[.[] | [.generation, .state]]' "$T/out")" = '[[1,"live"],[2,"current"]]'

# A certificate issued now comes from generation 2; a revocation's CRL is signed by it.
mqpki asset add late --kind device >/dev/null
make_csr late
mqpki issue --asset late --csr "$T/late.csr" --out "$T/late.pem" >/dev/null
assert "a new certificate comes from generation 2" test \
  "$(akid_of "$T/late.pem")" = "$(skid_of "$MQPKI_HOME/ca/issuers/2.pem")"

check "campaign renew --issuer 1 (generation 1's certificates)" mqpki campaign renew --issuer 1 \
  --rate 20
assert "it names the $N agents and the probe" contains "$T/out" "renew sent to $((N + 1)) assets"
renewed() { test "$(mqpki campaign status --json | jq .counts.renewed)" = "$N"; }
check "all $N agents renewed" wait_for 120 renewed
on_gen2=0
for i in $(seq 1 "$N"); do
  [ "$(akid_of "$T/dev$i/cert.pem")" = "$(skid_of "$MQPKI_HOME/ca/issuers/2.pem")" ] &&
    on_gen2=$((on_gen2 + 1))
done
assert "every agent holds a generation 2 certificate ($on_gen2/$N)" test "$on_gen2" = "$N"
check "every agent reconnected with it" wait_for 60 bash -c \
  "[ \$(grep -c 'as dev[0-9]* ' '$T/broker.log') -ge $((2 * N)) ]"
sleep 1
kill "$PUB" 2>/dev/null || true
wait "$PUB" 2>/dev/null || true
sleep 1
last=$(tail -n 1 "$T/seq.out")
assert "the subscriber got every message of the drill, in order, no gap (1..$last)" \
  test "$(seq 1 "$last" | cmp -s - "$T/seq.out" && echo same)" = same
assert "the drill ran while messages flowed (>= 50)" test "$last" -ge 50

check "ca list after the renewals" mqpki ca list --json
assert "generation 1 has one valid certificate left: the probe's (no agent)" test \
  "$(jq '.[] | select(.generation == 1) | .valid_certificates' "$T/out")" = 1
expect_fail 1 "ca retire 1 refused while the probe's certificate lives" mqpki ca retire 1
expect_fail 1 "ca retire 2 refused: it is current" mqpki ca retire 2
check "campaign finish --revoke-old" mqpki campaign finish --revoke-old
assert "it revoked the $N superseded certificates and the probe's" contains "$T/out" \
  "$((N + 1)) old certificates revoked"
check "ca list: nothing valid left of generation 1" mqpki ca list --json
assert "generation 1: 0 valid" test \
  "$(jq '.[] | select(.generation == 1) | .valid_certificates' "$T/out")" = 0

# The CRLs, signed by generation 2, cover every generation (RFC 5280 6.3.3 (f)); for relying
# parties that take a certificate's CRL from its own issuing key only (OpenSSL by default),
# crl/generation-1/ holds the same CRLs signed by generation 1.
check "crl publish" mqpki crl publish
mqpki crl --out "$T/full.pem"
crl_akid() { openssl crl -in "$1" -noout -text | grep -A1 'Authority Key Identifier' | tail -n 1 | tr -d ' '; }
crl_number() { openssl crl -in "$1" -noout -crlnumber | cut -d= -f2; }
assert "the CRL is signed by generation 2" test "$(crl_akid "$T/full.pem")" = \
  "$(skid_of "$MQPKI_HOME/ca/issuers/2.pem")"
missing=0
for i in $(seq 1 "$N"); do
  grep -qi "$(cat "$T/old$i")" <(openssl crl -in "$T/full.pem" -noout -text) || missing=$((missing + 1))
done
assert "it lists the $N superseded certificates of generation 1" test "$missing" = 0
G1=$MQPKI_HOME/crl/generation-1/issuing.pem
assert "crl/generation-1/ holds the same CRL signed by generation 1" test \
  "$(crl_akid "$G1"):$(crl_number "$G1")" = \
  "$(skid_of "$MQPKI_HOME/ca/issuers/1.pem"):$(crl_number "$T/full.pem")"
assert "it verifies under generation 1" bash -c \
  "openssl crl -in '$G1' -noout -CAfile '$MQPKI_HOME/ca/issuers/1.pem' 2>&1 | grep -q 'verify OK'"
mqpki cert get --serial "$(cat "$T/old1")" --out "$T/dev1-old.pem"
cat "$T/chain2.pem" "$T/full.pem" "$G1" >"$T/trust+crls.pem"
assert "openssl verify -crl_check: a generation 1 certificate is revoked" bash -c \
  "openssl verify -crl_check -CAfile '$T/trust+crls.pem' '$T/dev1-old.pem' 2>&1 | grep -q 'certificate revoked'"
assert "openssl verify -crl_check: a generation 2 certificate is good" bash -c \
  "openssl verify -crl_check -CAfile '$T/trust+crls.pem' '$T/late.pem' | grep -q ': OK'"
cat "$T/gen1.pem" "$MQPKI_HOME/ca/root.pem" >"$T/gen1+root.pem"
assert "openssl -extended_crl takes generation 2's CRL for generation 1" bash -c \
  "openssl verify -crl_check -extended_crl -CAfile '$T/gen1+root.pem' \
   -untrusted '$MQPKI_HOME/ca/issuers/2.pem' -CRLfile '$T/full.pem' '$T/dev1-old.pem' 2>&1 \
   | grep -q 'certificate revoked'"

crls_in() { grep -c 'BEGIN X509 CRL' "$1"; }
synced_both() {
  [ "$(crls_in "$T/synced.pem")" = 2 ] &&
    [ "$(openssl crl -in "$T/synced.pem" -noout -crlnumber | cut -d= -f2)" = "$(crl_number "$T/full.pem")" ]
}
check "crl-sync writes both keys' CRLs of the newest number" wait_for 15 synced_both
check "crl-sync --once from scratch waits for both keys' CRLs" mqpki crl-sync --once \
  --broker "mqtts://localhost:$P" --out "$T/once.pem" --timeout 20s
assert "the file it wrote holds both" test "$(crls_in "$T/once.pem")" = 2

# A stale list (a replica not brought up to date) cannot undo the rollover.
ones=$(grep -c 'trusting 1 issuing CA key' "$T/broker.log" || true)
mosquitto_pub "${TLS[@]}" --cert "$MQPKI_HOME/tls/mqpkid.pem" --key "$MQPKI_HOME/tls/mqpkid.key" \
  -i stale-replica -q 1 -r -t mqpki/v1/ca/issuers -f "$T/chain.pem" 2>/dev/null || true
check "the broker refuses a list older than the one in force" wait_for 10 grep -q \
  "older than the list in force" "$T/broker.log"
assert "and keeps trusting both keys" test "$(grep -c 'trusting 1 issuing CA key' "$T/broker.log")" = "$ones"
assert "crl-sync learned generation 2 from the feed" contains "$T/sync.log" "trusting 2 issuing CA keys"
cat "$T/chain.pem" "$T/synced.pem" >"$T/ext-broker.pem"
assert "with crl-sync's file, openssl revokes a generation 1 certificate" bash -c \
  "openssl verify -crl_check -CAfile '$T/ext-broker.pem' '$T/dev1-old.pem' 2>&1 | grep -q 'certificate revoked'"

check "ca retire 1" mqpki ca retire 1
assert "mqpkid was told" contains "$T/out" "no longer trusts it"
check "ca export: generation 2 and the root" mqpki ca export --out "$T/chain3.pem"
assert "two certificates left" test "$(grep -c 'BEGIN CERTIFICATE' "$T/chain3.pem")" = 2
check "the broker trusts one issuing CA key now" wait_for 10 grep -q \
  "trusting 1 issuing CA key" "$T/broker.log"
check "crl-sync drops generation 1's CRL" wait_for 10 bash -c "[ \$(grep -c 'BEGIN X509 CRL' '$T/synced.pem') = 1 ]"
for i in 1 2 3; do
  mqpki-sensor "$T/dev$i" "mqtts://localhost:$P" >/dev/null 2>&1 || not_ok "dev$i cannot connect"
done
ok "the renewed devices still connect"
check "audit verify" mqpki audit verify
assert "the audit log has the rollover and the retirement" test \
  "$(sqlite3 "$MQPKI_HOME/mqpki.db" "SELECT action FROM audit WHERE action LIKE 'ca.%'" | tr '\n' ' ')" = \
  "ca.rollover ca.retire "

finish
