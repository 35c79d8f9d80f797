#!/usr/bin/env bash
# 02-enroll: EST (RFC 7030) against the real mqpkid with curl and openssl, as a user would.
. "$(dirname "$0")/lib.sh"

check "mqpki init" init_ca
check "start mqpkid" start_mqpkid
check "asset add dev1" mqpki asset add dev1 --kind device
check "asset add gw1 (broker)" mqpki asset add gw1 --kind broker

# /cacerts: base64 PKCS#7 certs-only with the issuing CA and the root.
curl -sS --cacert "$T/chain.pem" -D "$T/h" "$MQPKID_URL/.well-known/est/cacerts" -o "$T/cacerts.b64"
base64 -d "$T/cacerts.b64" | openssl pkcs7 -inform DER -print_certs >"$T/cacerts.pem" 2>&1
assert "cacerts decodes with openssl pkcs7 -print_certs" contains "$T/cacerts.pem" "Root CA"
assert "cacerts holds the issuing CA" contains "$T/cacerts.pem" "Issuing CA"
assert "cacerts content type" grep -qi "content-type: application/pkcs7-mime" "$T/h"
assert "cacerts is base64 encoded" grep -qi "content-transfer-encoding: base64" "$T/h"
curl -sS --cacert "$T/chain.pem" "$MQPKID_URL/.well-known/est/csrattrs" | base64 -d \
  | openssl asn1parse -inform DER >"$T/attrs.txt"
assert "csrattrs asks for EC P-256" contains "$T/attrs.txt" "prime256v1"

# simpleenroll with a fresh token.
token=$(mqpki token create dev1)
est_csr dev1
assert "simpleenroll with a fresh token: 200" test "$(est_enroll dev1 "$token" dev1)" = 200
check "issued certificate verifies" openssl verify -CAfile "$T/chain.pem" "$T/dev1.pem"
openssl x509 -in "$T/dev1.pem" -noout -text >"$T/dev1.txt"
assert "certificate names the asset" contains "$T/dev1.txt" "URI:urn:mqpki:asset:dev1"
assert "asset is enrolled" test "$(mqpki asset show dev1 --json | jq -r .state)" = enrolled
serial1=$(openssl x509 -in "$T/dev1.pem" -noout -serial | cut -d= -f2)
# (The same token with the same CSR is a lost answer's retry: 07-hostile-est.sh.)
est_csr dev1b
assert "the same token a second time, another CSR: 401" \
  test "$(est_enroll dev1 "$token" dev1b)" = 401

# simplereenroll with the issued certificate.
openssl req -new -key "$T/dev1.key" -subj /CN=dev1 -outform DER | base64 >"$T/re.b64"
code=$(curl -sS --cacert "$T/chain.pem" --cert "$T/dev1.pem" --key "$T/dev1.key" \
  -H "Content-Type: application/pkcs10" --data-binary @"$T/re.b64" -o "$T/re.p7" \
  -w '%{http_code}' "$MQPKID_URL/.well-known/est/simplereenroll")
assert "simplereenroll with the certificate: 200" test "$code" = 200
base64 -d "$T/re.p7" | openssl pkcs7 -inform DER -print_certs >"$T/re.pem"
serial2=$(openssl x509 -in "$T/re.pem" -noout -serial | cut -d= -f2)
assert "re-enrollment gives a new serial" test -n "$serial2" -a "$serial2" != "$serial1"
assert "same asset" bash -c "openssl x509 -in '$T/re.pem' -noout -ext subjectAltName | grep -q urn:mqpki:asset:dev1"
assert "old certificate superseded" \
  test "$(mqpki cert list --asset dev1 --state superseded --json | jq -r '.[0].serial')" = "$serial1"
code=$(curl -sS --cacert "$T/chain.pem" -H "Content-Type: application/pkcs10" \
  --data-binary @"$T/re.b64" -o /dev/null -w '%{http_code}' "$MQPKID_URL/.well-known/est/simplereenroll")
assert "simplereenroll without a client certificate: 401" test "$code" = 401

# A revoked certificate cannot re-enroll.
check "revoke dev1" mqpki revoke --asset dev1 --reason key-compromise
code=$(curl -sS --cacert "$T/chain.pem" --cert "$T/re.pem" --key "$T/dev1.key" \
  -H "Content-Type: application/pkcs10" --data-binary @"$T/re.b64" -o /dev/null \
  -w '%{http_code}' "$MQPKID_URL/.well-known/est/simplereenroll")
assert "revoked certificate cannot re-enroll (got $code)" test "$code" = 401 -o "$code" = 403

# Profile labels.
token=$(mqpki token create gw1)
est_csr gw1
assert "broker label: 200" test "$(est_enroll gw1 "$token" gw1 /.well-known/est/broker/simpleenroll)" = 200
assert "broker certificate has serverAuth" \
  bash -c "openssl x509 -in '$T/gw1.pem' -noout -ext extendedKeyUsage | grep -q 'Server Authentication'"
assert "unknown label: 404" test "$(est_enroll gw1 x gw1 /.well-known/est/toaster/simpleenroll)" = 404

# Hostile bodies.
check "asset add dev2" mqpki asset add dev2 --kind device
token=$(mqpki token create dev2)
head -c 2000 /dev/urandom | base64 >"$T/garbage.b64"
assert "garbage body: 400" test "$(est_enroll dev2 "$token" garbage)" = 400
est_csr trunc
head -c 100 "$T/trunc.b64" >"$T/trunc2.b64"
assert "truncated CSR: 400" test "$(est_enroll dev2 "$token" trunc2)" = 400
head -c 300000 /dev/zero | base64 >"$T/huge.b64"
assert "oversized body: 413" test "$(est_enroll dev2 "$token" huge)" = 413
est_csr dev2
assert "the token still works after refused bodies: 200" test "$(est_enroll dev2 "$token" dev2)" = 200
code=$(curl -sS --cacert "$T/chain.pem" -u "dev2:$token" -H "Content-Type: text/plain" \
  --data-binary @"$T/dev2.b64" -o /dev/null -w '%{http_code}' "$MQPKID_URL/.well-known/est/simpleenroll")
assert "wrong content type: 415" test "$code" = 415

# A burst of wrong tokens is rate limited with Retry-After.
check "asset add dev3" mqpki asset add dev3 --kind device
est_csr dev3
codes=""
for i in $(seq 1 8); do codes="$codes $(est_enroll dev3 "wrong-token-$i" dev3)"; done
assert "burst of wrong tokens ends in 429 ($codes)" bash -c "echo '$codes' | grep -q 429"
curl -sS --cacert "$T/chain.pem" -u dev3:wrong -H "Content-Type: application/pkcs10" \
  --data-binary @"$T/dev3.b64" -D "$T/h429" -o /dev/null "$MQPKID_URL/.well-known/est/simpleenroll"
assert "429 carries Retry-After" grep -qi "^retry-after: [0-9]" "$T/h429"

# CRLs, health, metrics.
curl -sS --cacert "$T/chain.pem" "$MQPKID_URL/crl/issuing.crl" -o "$T/crl.der"
check "GET /crl/issuing.crl verifies" openssl crl -inform DER -in "$T/crl.der" -CAfile "$T/chain.pem" -noout
curl -sS --cacert "$T/chain.pem" "$MQPKID_URL/crl/issuing-delta.crl" -o "$T/delta.der"
assert "GET /crl/issuing-delta.crl lists the revoked serial at once" \
  bash -c "openssl crl -inform DER -in '$T/delta.der' -noout -text | grep -q '$serial2'"
check "mqpki crl publish through mqpkid" mqpki crl publish
curl -sS --cacert "$T/chain.pem" "$MQPKID_URL/crl/issuing.pem" -o "$T/crl.pem"
assert "GET /crl/issuing.pem lists the revoked serial" \
  bash -c "openssl crl -in '$T/crl.pem' -noout -text | grep -q '$serial2'"
curl -sS --cacert "$T/chain.pem" "$MQPKID_URL/healthz" >"$T/health.json"
assert "/healthz ok" test "$(jq -r .status "$T/health.json")" = ok
curl -sS --cacert "$T/chain.pem" "$MQPKID_URL/metrics" >"$T/metrics.txt"
assert "/metrics counts enrollments" grep -q 'mqpki_enrollments_total{result="ok"} [1-9]' "$T/metrics.txt"
assert "/metrics has the latency histogram" grep -q 'mqpki_enrollment_seconds_bucket' "$T/metrics.txt"
assert "/metrics has the CRL number" grep -q '^mqpki_crl_number [0-9]' "$T/metrics.txt"

# TLS 1.2+ only; plain HTTP refused.
assert "TLS 1.1 refused" bash -c "! curl -sS --cacert '$T/chain.pem' --tlsv1.0 --tls-max 1.1 '$MQPKID_URL/healthz' -o /dev/null 2>/dev/null"
assert "plain HTTP refused" bash -c "! curl -sS --max-time 5 'http://localhost:$MQPKID_PORT/healthz' -o /dev/null 2>/dev/null"

# Audit trail: enrollments and refusals recorded; SIGTERM stops cleanly.
check "audit log verifies" mqpki audit verify
stop_pid "$MQPKID_PID" TERM
assert "mqpkid logged its stop" grep -q "stopped" "$MQPKID_LOG"
assert "the token never reached the log" bash -c "! grep -q '$token' '$MQPKID_LOG'"
finish
