#!/usr/bin/env bash
# 01-issue-revoke: issue from an openssl CSR, check the leaf as a user would, revoke it and see
# the CRL name it revoked.
. "$(dirname "$0")/lib.sh"

check "mqpki init" init_ca
check "asset add meter" mqpki asset add meter --kind device --model SM-200 --serial SN123 \
  --firmware 1.0.3 --location substation-7 --tag feeder=F12
check "asset add other" mqpki asset add other --kind device

# A CSR that asks to be a CA and for odd extensions gets a plain leaf.
make_csr meter -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=keyCertSign" \
  -addext "subjectAltName=DNS:evil.example" -subj "/CN=root-of-all/O=Evil"
check "issue for meter" mqpki issue --asset meter --csr "$T/meter.csr" --out "$T/meter.pem"
openssl x509 -in "$T/meter.pem" -noout -text >"$T/meter.txt"
check "leaf verifies against the exported chain" openssl verify -CAfile "$T/chain.pem" "$T/meter.pem"
assert "leaf is CA:FALSE" contains "$T/meter.txt" "CA:FALSE"
assert "leaf has EKU clientAuth" contains "$T/meter.txt" "TLS Web Client Authentication"
assert "leaf names the asset in SAN" contains "$T/meter.txt" "URI:urn:mqpki:asset:meter"
assert "leaf subject is the asset" contains "$T/meter.txt" "Subject: .*CN = meter"
assert "leaf has a CRL distribution point" contains "$T/meter.txt" "crl/issuing.crl"
assert "CSR's SAN not copied" bash -c "! grep -q evil.example '$T/meter.txt'"
assert "CSR's keyCertSign not copied" bash -c "! grep -q 'Certificate Sign' '$T/meter.txt'"
serial=$(openssl x509 -in "$T/meter.pem" -noout -serial | cut -d= -f2)
assert "serial is 128-bit (32 hex digits)" test "${#serial}" -eq 32

mqpki asset show meter --json >"$T/show.json"
assert "asset is enrolled after its first certificate" \
  test "$(jq -r .state "$T/show.json")" = enrolled
mqpki cert list --asset meter --json >"$T/certs.json"
assert "cert list shows the serial" test "$(jq -r '.[0].serial' "$T/certs.json")" = "$serial"

# The same key for another asset is refused; the same asset may renew with it.
expect_fail 1 "key certified for meter refused for other" \
  mqpki issue --asset other --csr "$T/meter.csr"
check "meter renews with the same key" mqpki issue --asset meter --csr "$T/meter.csr" \
  --out "$T/meter2.pem"

# Revocation.
check "revoke meter for key compromise" mqpki revoke --asset meter --reason key-compromise
assert "revoke names the reason" contains "$T/out" "key-compromise"
assert "revoke says which delta CRL it published" contains "$T/out" "delta CRL [0-9]* published"
full_before=$(mqpki crl --json | jq .full.number)
check "the delta CRL verifies" openssl crl -inform DER -in "$MQPKI_HOME/crl/issuing-delta.crl" \
  -CAfile "$T/chain.pem" -noout
openssl crl -inform DER -in "$MQPKI_HOME/crl/issuing-delta.crl" -noout -text >"$T/delta.txt"
assert "the delta CRL lists the serial at once" contains "$T/delta.txt" "$serial"
assert "the delta names its base CRL" contains "$T/delta.txt" "Delta CRL Indicator"
check "mqpki crl shows the CRLs" mqpki crl
assert "mqpki crl names the full and the delta CRL" bash -c \
  "grep -q '^full   CRL' '$T/out' && grep -q '^delta  CRL' '$T/out'"
mqpki crl >/dev/null && mqpki crl --json >/dev/null && mqpki crl --pem >/dev/null
assert "mqpki crl, run 3 times, signs nothing (full CRL $full_before)" \
  test "$(mqpki crl --json | jq -c '[.full.number, .delta.number]')" = \
  "$(sqlite3 "$MQPKI_HOME/mqpki.db" "SELECT json_array(MAX(CASE kind WHEN 'full' THEN number END),
    MAX(CASE kind WHEN 'delta' THEN number END)) FROM crls")"
assert "and reserved no CRL number" test "$(sqlite3 "$MQPKI_HOME/mqpki.db" \
  "SELECT value FROM counters WHERE name = 'crl_number'")" = \
  "$(mqpki crl --json | jq '[.full.number, .delta.number] | max')"
check "mqpki crl publish signs a new full CRL" mqpki crl publish
assert "the full CRL number went up" test "$(mqpki crl --json | jq .full.number)" -gt "$full_before"
check "mqpki crl --pem" bash -c "mqpki crl --pem > '$T/crl.pem'"
check "CRL verifies against the chain" openssl crl -in "$T/crl.pem" -CAfile "$T/chain.pem" -noout
openssl crl -in "$T/crl.pem" -noout -text >"$T/crl.txt"
assert "CRL lists the serial" contains "$T/crl.txt" "$serial"
assert "CRL gives the reason" contains "$T/crl.txt" "Key Compromise"
assert "CRL has a CRL number" contains "$T/crl.txt" "X509v3 CRL Number"
cat "$T/chain.pem" "$T/crl.pem" >"$T/chain+crl.pem"
openssl verify -crl_check -CAfile "$T/chain+crl.pem" "$T/meter.pem" >"$T/verify.out" 2>&1 || true
assert "openssl verify -crl_check reports it revoked" contains "$T/verify.out" "certificate revoked"
mqpki asset show meter --json >"$T/show.json"
assert "asset state is revoked" test "$(jq -r .state "$T/show.json")" = revoked
assert "history records the revocation" \
  test "$(jq '[.history[] | select(.action == "cert.revoke")] | length' "$T/show.json")" -ge 1
events=$(mqpki asset show meter --json | jq '.history | length')
check "revoking again is safe" mqpki revoke --serial "$serial" --reason key-compromise
assert "revoking again says so" contains "$T/out" "already revoked"
assert "revoking again changes nothing" \
  test "$(mqpki asset show meter --json | jq '.history | length')" = "$events"
expect_fail 1 "a compromised key is never certified again" \
  mqpki issue --asset meter --csr "$T/meter.csr"

# Hold and unhold.
make_csr other
check "issue for other" mqpki issue --asset other --csr "$T/other.csr" --out "$T/other.pem"
oserial=$(openssl x509 -in "$T/other.pem" -noout -serial | cut -d= -f2)
check "hold other" mqpki revoke --serial "$oserial" --reason hold
assert "held asset is suspended" \
  test "$(mqpki asset show other --json | jq -r .state)" = suspended
mqpki crl --pem --delta >"$T/crl2.pem"
openssl crl -in "$T/crl2.pem" -noout -text >"$T/crl2.txt"
assert "the delta CRL says certificateHold" contains "$T/crl2.txt" "Certificate Hold"
check "unhold other" mqpki unhold --serial "$oserial"
mqpki crl --pem --delta >"$T/crl3.pem"
openssl crl -in "$T/crl3.pem" -noout -text >"$T/crl3.txt"
assert "the next delta CRL says removeFromCRL" contains "$T/crl3.txt" "Remove From CRL"
mqpki crl publish >/dev/null
mqpki crl --pem >"$T/crl4.pem"
openssl crl -in "$T/crl4.pem" -noout -text >"$T/crl4.txt"
assert "unheld serial leaves the full CRL" bash -c "! grep -q '$oserial' '$T/crl4.txt'"

# Decommission.
check "decommission other" mqpki asset decommission other
assert "decommissioned" test "$(mqpki asset show other --json | jq -r .state)" = decommissioned
expect_fail 1 "no token for a decommissioned asset" mqpki token create other

# Listings.
mqpki asset list --json >"$T/list.json"
assert "asset list --json is a JSON array of 3" test "$(jq length "$T/list.json")" -eq 3
assert "asset list --state revoked" \
  test "$(mqpki asset list --state revoked --json | jq -r '.[0].id')" = meter
check "token create prints the token alone" mqpki token create meter --ttl 1h
assert "token is one line of url-safe base64" \
  bash -c "[ \$(wc -l < '$T/out') -eq 1 ] && grep -Eq '^[A-Za-z0-9_-]{22,}$' '$T/out'"
check "audit log verifies" mqpki audit verify

# Tampering with the audit log is detected.
sqlite3 "$MQPKI_HOME/mqpki.db" "UPDATE audit SET actor='mallory' WHERE seq=3"
expect_fail 1 "edited audit event detected" mqpki audit verify
finish
