#!/usr/bin/env bash
# 01-hostile-cli: bad input gets exit 1 and one clear line, never a crash.
. "$(dirname "$0")/lib.sh"

check "mqpki init" init_ca
check "asset add dev1" mqpki asset add dev1 --kind device

expect_fail 1 "duplicate asset id" mqpki asset add dev1 --kind device
for id in "a/b" "a+b" "a#b" "$(printf 'a\tb')" "$(printf 'a\033b')" ".hidden" \
          "$(head -c 65 /dev/zero | tr '\0' x)" ""; do
  expect_fail 1 "asset id $(printf %q "$id") refused" mqpki asset add "$id" --kind device
done
expect_fail 1 "missing --kind" mqpki asset add dev2
expect_fail 1 "bad --kind" mqpki asset add dev2 --kind toaster
expect_fail 1 "bad --state" mqpki asset list --state happy

make_csr good
head -c 3000 /dev/urandom >"$T/garbage.csr"
openssl req -in "$T/good.csr" -outform DER -out "$T/good.der"
head -c 100 "$T/good.der" >"$T/truncated.der"
openssl req -new -newkey rsa:1024 -nodes -subj /CN=x -keyout "$T/rsa1024.key" \
  -out "$T/rsa1024.csr" 2>/dev/null
# Flip one byte inside the signature (the last bytes of the DER).
cp "$T/good.der" "$T/badsig.der"
size=$(stat -c %s "$T/badsig.der")
printf '\x01' | dd of="$T/badsig.der" bs=1 seek=$((size - 5)) conv=notrunc 2>/dev/null
head -c 10485760 /dev/zero >"$T/huge.csr"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:secp256k1 -nodes -subj /CN=x \
  -keyout "$T/k1.key" -out "$T/k1.csr" 2>/dev/null

expect_fail 1 "garbage CSR" mqpki issue --asset dev1 --csr "$T/garbage.csr"
expect_fail 1 "truncated DER CSR" mqpki issue --asset dev1 --csr "$T/truncated.der"
expect_fail 1 "RSA-1024 CSR" mqpki issue --asset dev1 --csr "$T/rsa1024.csr"
assert "RSA-1024 refusal names the rule" contains "$T/err" "2048"
expect_fail 1 "CSR with a bad signature" mqpki issue --asset dev1 --csr "$T/badsig.der"
expect_fail 1 "secp256k1 CSR" mqpki issue --asset dev1 --csr "$T/k1.csr"
expect_fail 1 "10 MB file" mqpki issue --asset dev1 --csr "$T/huge.csr"
expect_fail 1 "missing file" mqpki issue --asset dev1 --csr "$T/nope.csr"
expect_fail 1 "unknown asset" mqpki issue --asset ghost --csr "$T/good.csr"
expect_fail 1 "broker profile for a device" mqpki issue --asset dev1 --csr "$T/good.csr" \
  --profile broker
expect_fail 1 "bad --days" mqpki issue --asset dev1 --csr "$T/good.csr" --days 0
expect_fail 1 "unknown serial" mqpki revoke --serial 0A0B --reason key-compromise
expect_fail 1 "non-hex serial" mqpki revoke --serial xyz
expect_fail 1 "bad reason" mqpki revoke --asset dev1 --reason bored
expect_fail 1 "revoke without live certificate" mqpki revoke --asset dev1
expect_fail 1 "token for unknown asset" mqpki token create ghost
expect_fail 1 "bad ttl" mqpki token create dev1 --ttl forever
expect_fail 1 "unhold of a certificate not on hold" mqpki unhold --serial 0A0B

# The PIN never shows in error output even when it is wrong.
MQPKI_PIN=wrong-pin-1234 mqpki crl publish >"$T/out" 2>"$T/err" && st=0 || st=$?
assert "wrong PIN fails with status 1 or 2 (got $st)" test "$st" -ne 0
assert "wrong PIN is not echoed" bash -c "! grep -q wrong-pin-1234 '$T/err'"

# A corrupt store is reported, not crashed on.
cp -r "$MQPKI_HOME" "$T/corrupt"
head -c 8192 /dev/urandom >"$T/corrupt/mqpki.db"
rm -f "$T/corrupt/mqpki.db-wal" "$T/corrupt/mqpki.db-shm"
expect_fail 2 "corrupt database" mqpki --home "$T/corrupt" asset list
check "the good CSR still issues" mqpki issue --asset dev1 --csr "$T/good.csr"
finish
