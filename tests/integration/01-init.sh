#!/usr/bin/env bash
# 01-init: `mqpki init` builds a complete data directory with the CA keys inside the token.
. "$(dirname "$0")/lib.sh"

check "mqpki init" init_ca --ca-name "Test Grid" --hostname broker.example
for f in mqpki.conf mqpki.db secrets/pin ca/root.pem ca/issuing.pem ca/chain.pem \
         tls/mqpkid.pem tls/mqpkid.key crl/issuing.crl hsm/softhsm2.conf; do
  assert "data directory has $f" test -s "$MQPKI_HOME/$f"
done
assert "secrets/ is 0700" test "$(stat -c %a "$MQPKI_HOME/secrets")" = 700
assert "secrets/pin is 0600" test "$(stat -c %a "$MQPKI_HOME/secrets/pin")" = 600
assert "tls/mqpkid.key is 0600" test "$(stat -c %a "$MQPKI_HOME/tls/mqpkid.key")" = 600

# No CA private key outside the token: the only PEM private key is mqpkid's TLS key.
keys=$(grep -rl -- "PRIVATE KEY" "$MQPKI_HOME" | grep -v "/tls/" || true)
assert "no PEM private key outside tls/ (found: ${keys:-none})" test -z "$keys"

# The chain is what a user would check with openssl.
openssl x509 -in "$MQPKI_HOME/ca/root.pem" -noout -text >"$T/root.txt"
openssl x509 -in "$MQPKI_HOME/ca/issuing.pem" -noout -text >"$T/issuing.txt"
assert "root is a CA" contains "$T/root.txt" "CA:TRUE"
assert "root key is EC P-256" contains "$T/root.txt" "prime256v1"
assert "issuing CA has pathlen 0" contains "$T/issuing.txt" "pathlen:0"
assert "issuing CA name" contains "$T/issuing.txt" "Test Grid Issuing CA"
check "issuing CA verifies against root" \
  openssl verify -CAfile "$MQPKI_HOME/ca/root.pem" "$MQPKI_HOME/ca/issuing.pem"
check "mqpkid TLS cert verifies against the chain" \
  openssl verify -CAfile "$MQPKI_HOME/ca/root.pem" -untrusted "$MQPKI_HOME/ca/issuing.pem" \
  "$MQPKI_HOME/tls/mqpkid.pem"
openssl x509 -in "$MQPKI_HOME/tls/mqpkid.pem" -noout -ext subjectAltName >"$T/san.txt"
assert "mqpkid cert names localhost" contains "$T/san.txt" "DNS:localhost"
assert "mqpkid cert names 127.0.0.1" contains "$T/san.txt" "IP Address:127.0.0.1"
assert "mqpkid cert names --hostname" contains "$T/san.txt" "DNS:broker.example"
check "first CRL verifies" openssl crl -inform DER -in "$MQPKI_HOME/crl/issuing.crl" \
  -CAfile "$T/chain.pem" -noout
check "the mqpkid service asset exists" mqpki asset show mqpkid
check "audit log verifies" mqpki audit verify

expect_fail 1 "second init refused" mqpki init
expect_fail 1 "unknown key type refused" mqpki --home "$T/other" init --key rsa-1024
expect_fail 1 "commands on a missing CA say so" mqpki --home "$T/none" asset list
expect_fail 1 "unknown command" mqpki frobnicate

for cmd in "init" "ca export" "asset add" "asset list" "asset show" "asset set" \
           "asset decommission" "token create" "issue" "cert list" "revoke" "unhold" "crl" \
           "audit verify"; do
  # shellcheck disable=SC2086
  check "mqpki $cmd --help" mqpki $cmd --help
done

# Other key types.
for key in ec-p384 rsa-3072; do
  check "init with --key $key" mqpki --home "$T/$key" init --key "$key"
  openssl x509 -in "$T/$key/ca/issuing.pem" -noout -text >"$T/$key.txt"
  case $key in
    ec-p384) assert "P-384 CA signs with SHA-384" contains "$T/$key.txt" "ecdsa-with-SHA384" ;;
    rsa-3072) assert "RSA CA key is 3072 bits" contains "$T/$key.txt" "3072 bit" ;;
  esac
done
finish
