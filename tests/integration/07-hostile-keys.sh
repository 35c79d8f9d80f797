#!/usr/bin/env bash
# 07-hostile-keys: keys and credentials that must not come back. A key re-encoded with explicit
# curve parameters is refused (and would be fingerprinted as itself); a key-compromise
# revocation takes every live certificate of the key; a superseded certificate renews only in
# its grace window while its successor is unused; eight operators hitting the CA token at once
# never fail spuriously.
. "$(dirname "$0")/lib.sh"

H=$MQPKI_HOME
check "mqpki init" init_ca
check "start mqpkid" start_mqpkid
TLS=(--cacert "$T/chain.pem")

# 1. The same EC key, once named, once with explicit parameters (openssl ec -param_enc explicit).
openssl ecparam -name prime256v1 -genkey -noout -out "$T/k.key" 2>/dev/null
openssl ec -in "$T/k.key" -param_enc explicit -out "$T/k-explicit.key" 2>/dev/null
openssl req -new -key "$T/k.key" -subj /CN=k -out "$T/k-named.csr"
openssl req -new -key "$T/k-explicit.key" -subj /CN=k -out "$T/k-explicit.csr"
assert "the two CSRs really differ in their key encoding" bash -c \
  "openssl req -in '$T/k-explicit.csr' -noout -text | grep -q 'Field Type: prime-field'"
mqpki asset add e1 --kind device >/dev/null
mqpki asset add e2 --kind device >/dev/null
check "the named key is certified for e1" mqpki issue --asset e1 --csr "$T/k-named.csr" \
  --out "$T/e1.pem"
expect_fail 1 "the same key with explicit parameters is refused for e2" \
  mqpki issue --asset e2 --csr "$T/k-explicit.csr"
assert "the refusal names RFC 5480" contains "$T/err" "RFC 5480"
expect_fail 1 "... and for e1 itself" mqpki issue --asset e1 --csr "$T/k-explicit.csr"
token=$(mqpki token create e2)
openssl req -in "$T/k-explicit.csr" -outform DER | base64 >"$T/kx.b64"
code=$(curl -sS "${TLS[@]}" -u "e2:$token" -H "Content-Type: application/pkcs10" \
  --data-binary @"$T/kx.b64" -o "$T/kx.body" -w '%{http_code}' \
  "$MQPKID_URL/.well-known/est/simpleenroll")
assert "over EST: 403 (got $code: $(cat "$T/kx.body"))" test "$code" = 403
assert "the certified key never carries explicit parameters" bash -c \
  "! openssl x509 -in '$T/e1.pem' -noout -text | grep -q 'Field Type'"

# 2. A key compromise takes the key: renewals with the same key go too, and the command says so.
mqpki asset add kc --kind device >/dev/null
make_csr kc
check "kc: first certificate" mqpki issue --asset kc --csr "$T/kc.csr" --out "$T/kc1.pem"
check "kc: a second one, same key" mqpki issue --asset kc --csr "$T/kc.csr" --out "$T/kc2.pem"
s1=$(openssl x509 -in "$T/kc1.pem" -noout -serial | cut -d= -f2)
s2=$(openssl x509 -in "$T/kc2.pem" -noout -serial | cut -d= -f2)
check "revoke the first for key compromise" mqpki revoke --serial "$s1" --reason key-compromise
assert "it says the key's other certificate went too" contains "$T/out" "1 more with the same key"
assert "the second certificate is revoked for key compromise" test \
  "$(mqpki cert list --asset kc --json | jq -r --arg s "$s2" '.[] | select(.serial == $s)
  | .state + " " + .reason')" = "revoked key-compromise"
openssl crl -inform DER -in "$H/crl/issuing-delta.crl" -noout -text >"$T/delta.txt"
assert "the delta CRL lists both" bash -c "grep -q '$s1' '$T/delta.txt' && grep -q '$s2' \
  '$T/delta.txt'"
expect_fail 1 "and the key is never certified again" mqpki issue --asset kc --csr "$T/kc.csr"
# A compromise found out after an ordinary revocation: the reason changes, the key is refused.
mqpki asset add kl --kind device >/dev/null
make_csr kl
check "kl: a certificate" mqpki issue --asset kl --csr "$T/kl.csr" --out "$T/kl1.pem"
s3=$(openssl x509 -in "$T/kl1.pem" -noout -serial | cut -d= -f2)
check "revoked as superseded" mqpki revoke --serial "$s3" --reason superseded
check "then for key compromise" mqpki revoke --serial "$s3" --reason key-compromise
openssl crl -inform DER -in "$H/crl/issuing-delta.crl" -noout -text >"$T/delta.txt"
assert "the delta CRL says key compromise" bash -c "grep -A4 '$s3' '$T/delta.txt' |
  grep -q 'Key Compromise'"
expect_fail 1 "the key is refused on its own asset" mqpki issue --asset kl --csr "$T/kl.csr"

# 3. Re-enrollment: the newest certificate renews; the one before it only in its grace window
# and while the newer one is unused.
mqpki asset add r1 --kind device >/dev/null
token=$(mqpki token create r1)
est_csr r1
assert "r1 enrolls" test "$(est_enroll r1 "$token" r1)" = 200
cp "$T/r1.pem" "$T/c1.pem"
reenroll() { # CERT NAME: re-enroll with CERT (and r1's key); the answer in $T/NAME.pem
  local code
  code=$(curl -sS "${TLS[@]}" --cert "$T/$1.pem" --key "$T/r1.key" \
    -H "Content-Type: application/pkcs10" --data-binary @"$T/r1.b64" -o "$T/$2.p7" \
    -w '%{http_code}' "$MQPKID_URL/.well-known/est/simplereenroll") || true
  [ "$code" = 200 ] && base64 -d "$T/$2.p7" | openssl pkcs7 -inform DER -print_certs >"$T/$2.pem"
  echo "$code"
}
serial() { openssl x509 -in "$T/$1.pem" -noout -serial | cut -d= -f2; }
assert "the newest certificate renews (c1 -> c2)" test "$(reenroll c1 c2)" = 200
assert "the superseded c1 renews again while c2 is unused (a lost answer: c1 -> c3)" \
  test "$(reenroll c1 c3)" = 200
assert "and again while c3 is unused (two answers lost in a row: c1 -> c4)" \
  test "$(reenroll c1 c4)" = 200
assert "c2, superseded without asking for it, gets no grace window" test "$(reenroll c2 x)" = 401
assert "nor does c3" test "$(reenroll c3 x)" = 401
assert "the newest, c4, renews (c4 -> c5)" test "$(reenroll c4 c5)" = 200
assert "c1 renews no more: its successor c4 renewed itself" test "$(reenroll c1 x)" = 401
sqlite3 "$H/mqpki.db" "UPDATE certs SET seen_at = strftime('%s','now') \
  WHERE serial = '$(serial c5)'" || echo "# could not mark c5 as seen"
assert "c4 no more once its successor c5 connected to a broker" test "$(reenroll c4 x)" = 401
assert "the newest, c5, renews (c5 -> c6)" test "$(reenroll c5 c6)" = 200
sqlite3 "$H/mqpki.db" "UPDATE certs SET superseded_at = superseded_at - 90000 \
  WHERE serial = '$(serial c5)'" || echo "# could not age c5's supersession"
assert "c5 no more after the grace window (24 h)" test "$(reenroll c5 x)" = 401
assert "mqpkid says why" grep -q "beyond the grace" "$MQPKID_LOG"

# 6. Eight operators at once, 20 token operations each, with and without mqpkid: none fails.
hammer() { # I: 20 operations that need the CA key (issue, revoke, full CRL)
  local i=$1 n st fails=0
  mqpki asset add "h$i" --kind device >/dev/null 2>&1 || true
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=h$i" \
    -keyout "$T/h$i.key" -out "$T/h$i.csr" 2>/dev/null
  for n in $(seq 1 20); do
    st=0
    case $((n % 4)) in
      0) mqpki crl publish >/dev/null 2>>"$T/h$i.err" || st=$? ;;
      3) mqpki revoke --asset "h$i" --reason superseded >/dev/null 2>>"$T/h$i.err" || st=$? ;;
      *) mqpki issue --asset "h$i" --csr "$T/h$i.csr" --out "$T/h$i-$n.pem" 2>>"$T/h$i.err" ||
        st=$? ;;
    esac
    [ "$st" -eq 0 ] || fails=$((fails + 1))
  done
  echo "$fails" >"$T/h$i.fails"
}
storm() {
  local i pids=()
  for i in $(seq 1 8); do hammer "$1$i" & pids+=($!); done
  wait "${pids[@]}"
  cat "$T"/h"$1"?.fails | awk '{ n += $1 } END { print n + 0 }'
}
stop_pid "$MQPKID_PID"
f=$(storm a)
assert "8 x 20 operations on the token without mqpkid: $f failed" test "$f" -eq 0
[ "$f" -eq 0 ] || cat "$T"/ha?.err | sort | uniq -c | head -5
check "restart mqpkid" start_mqpkid
f=$(storm b)
assert "8 x 20 operations through mqpkid: $f failed" test "$f" -eq 0
[ "$f" -eq 0 ] || cat "$T"/hb?.err | sort | uniq -c | head -5
# Every hammer ends with a revocation (n = 19) and a full CRL: nothing of theirs is left valid.
assert "every revocation applied (no silent loss)" test "$(mqpki cert list --state valid --json |
  jq '[.[] | select(.asset | startswith("h"))] | length')" -eq 0
assert "and published" test "$(mqpki crl --json | jq '.open | length')" -eq 0
check "audit chain intact" mqpki audit verify
finish
