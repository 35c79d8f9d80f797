#!/usr/bin/env bash
# 11-crl-http: CRLs over plain HTTP on the optional [http] crl_listen listener (GET and HEAD of
# /crl/<file> only, read-only), and `mqpki init`'s warning about a localhost CDP.
. "$(dirname "$0")/lib.sh"

H=$MQPKI_HOME
check "mqpki init (default URL)" init_ca
assert "init warns about the localhost CDP" contains "$T/init.err" \
  "warning: certificates name the CRL distribution point https://localhost:8443"
CP=$(free_port)
check "init with an http:// CDP elsewhere" mqpki --home "$T/other" init --url "http://pki.example.net:$CP"
assert "and no warning" bash -c "! grep -q warning '$T/err'"

printf '\n[http]\ncrl_listen = 127.0.0.1:%s\n' "$CP" >>"$H/mqpki.conf"
check "mqpkid starts" start_mqpkid
check "the plain listener is up" wait_for 10 listening "$CP"
U=http://127.0.0.1:$CP
check "GET /crl/issuing.crl" curl -sSf -o "$T/got.crl" "$U/crl/issuing.crl"
assert "the file mqpkid holds" cmp -s "$T/got.crl" "$H/crl/issuing.crl"
assert "a DER CRL of our CA" bash -c "openssl crl -inform DER -in '$T/got.crl' -noout \
  -CAfile '$T/chain.pem' 2>&1 | grep -q 'verify OK'"
check "GET /crl/issuing.pem" bash -c "curl -sSf '$U/crl/issuing.pem' | grep -q 'BEGIN X509 CRL'"
code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
assert "HEAD works" test "$(code -I "$U/crl/issuing.crl")" = 200
assert "content type" bash -c "curl -sI '$U/crl/issuing.crl' | grep -qi 'content-type: application/pkix-crl'"
assert "POST refused (405)" test "$(code -X POST --data x "$U/crl/issuing.crl")" = 405
assert "PUT refused (405)" test "$(code -X PUT --data x "$U/crl/issuing.crl")" = 405
assert "EST is not served here (404)" test "$(code "$U/.well-known/est/cacerts")" = 404
assert "nor metrics (404)" test "$(code "$U/metrics")" = 404
assert "nor other files (404)" test "$(code "$U/crl/../mqpki.db")" = 404
assert "nor /crl/ itself (404)" test "$(code "$U/crl/")" = 404
# A new CRL is served at once.
mqpki asset add d1 --kind device >/dev/null
make_csr d1
mqpki issue --asset d1 --csr "$T/d1.csr" --out "$T/d1.pem" >/dev/null
check "revoke d1" mqpki revoke --asset d1
check "the delta CRL over HTTP lists it" bash -c "curl -sSf '$U/crl/issuing-delta.crl' | \
  openssl crl -inform DER -noout -text | grep -q \"\$(openssl x509 -in '$T/d1.pem' -noout \
  -serial | cut -d= -f2)\""
assert "HTTPS still serves the CRL" test "$(code --cacert "$T/chain.pem" \
  "$MQPKID_URL/crl/issuing.crl")" = 200
finish
