#!/usr/bin/env bash
# 08-offline-root: the key ceremony of docs/operations.md, "Key ceremony". The root lives in a
# token of its own (`mqpki root init`), certifies the CA's keys at `mqpki init --root-home`, and
# is taken away: the CA's token never holds the root key, so a plain `ca rollover` is refused.
# A rollover then takes three steps: `ca rollover --csr-out` (mqpkid makes the key), `root sign`
# where the root is, `ca rollover --cert`. Certificates for another key, by another root, weak
# keys and forged requests are refused; the root imposes its own profile whatever the request
# asks. A gen-1 client stays connected to the bundled broker through it, and a gen-2 client
# connects after. `ca rollover --cert` killed at each of its first renames is finished by a
# rerun.
. "$(dirname "$0")/lib.sh"

R="$T/root"
AWAY="$T/root-away"
P=$(free_port)
TLS=(-h localhost -p "$P" --cafile "$T/chain.pem")
skid_of() { openssl x509 -in "$1" -noout -ext subjectKeyIdentifier | sed -n 's/^ *\([0-9A-F:]*\)$/\1/p'; }
akid_of() { openssl x509 -in "$1" -noout -ext authorityKeyIdentifier | sed -n 's/^ *\(keyid:\)\{0,1\}\([0-9A-F:]*\)$/\2/p'; }
pubkey_of() { openssl req -in "$1" -noout -pubkey; }
# The key SHA-256 mqpki shows for a request's (named-curve) key.
key_fp() { openssl req -in "$1" -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1; }
mode_of() { stat -c %a "$1"; }

# The ceremony's first step, on the offline machine.
check "root init" mqpki root init --root-home "$R" --ca-name Grid --json
assert "root.pem is the self-signed root" openssl verify -CAfile "$R/root.pem" "$R/root.pem"
assert "root home 0700, PIN 0600" test "$(mode_of "$R")$(mode_of "$R/secrets/pin")" = 700600
assert "--json names the root's key" test "$(jq -r .key_sha256 "$T/out" | wc -c)" = 65
expect_fail 1 "a second root init in the same place is refused" \
  mqpki root init --root-home "$R" --ca-name Grid

check "mqpki init --root-home" init_ca --root-home "$R" --ca-name Grid
assert "the CA's root is the root home's" cmp -s "$R/root.pem" "$MQPKI_HOME/ca/root.pem"
assert "the issuing CA chains to it" openssl verify -CAfile "$R/root.pem" "$MQPKI_HOME/ca/issuing.pem"
assert "the audit key's certificate chains to it" \
  openssl verify -CAfile "$R/root.pem" "$MQPKI_HOME/ca/audit.pem"
assert "ceremony.log: root, issuing CA, audit key" test \
  "$(jq -r .op "$R/ceremony.log" | tr '\n' ' ')" = "root.init issuing.certify audit.certify "
# The root medium goes back to the safe.
mv "$R" "$AWAY"

check "broker init b1" mqpki broker init b1 --port "$P"
echo "new1 fleet/old1/in write" >"$MQPKI_HOME/brokers/b1/acl.conf"
sed -i 's/^#plugin_opt_acl_file/plugin_opt_acl_file/' "$MQPKI_HOME/brokers/b1/mosquitto.conf"
mqpki broker run b1 >"$T/broker.log" 2>&1 &
PIDS+=("$!")
check "broker b1 listening" wait_for 10 listening "$P"
check "start mqpkid" start_mqpkid
check "mqpkid's feed reaches b1" wait_for 15 grep -q "feed: connected to broker b1" "$MQPKID_LOG"
mqpki asset add old1 --kind device >/dev/null
make_csr old1
check "issue a generation-1 certificate" mqpki issue --asset old1 --csr "$T/old1.csr" --out "$T/old1.pem"
mosquitto_sub "${TLS[@]}" --cert "$T/old1.pem" --key "$T/old1.key" -i old1 -q 1 \
  -t fleet/old1/in >"$T/sub.out" 2>"$T/sub.err" &
SUB=$!
PIDS+=("$SUB")
check "a generation-1 client is connected" wait_for 10 grep -q "as old1 " "$T/broker.log"

expect_fail 1 "a plain rollover is refused: the root key is not in the CA's token" \
  mqpki ca rollover
assert "the refusal says how to go on" contains "$T/err" "ca rollover --csr-out"
check "ca list" mqpki ca list --json
assert "still one generation" test "$(jq length "$T/out")" = 1

check "ca rollover --csr-out (mqpkid makes the key)" mqpki ca rollover --csr-out "$T/g2.csr" --json
assert "the request is for generation 2" test "$(jq .generation "$T/out")" = 2
FP2=$(jq -r .key_sha256 "$T/out")
assert "the key SHA-256 shown is the request's" test "$FP2" = "$(key_fp "$T/g2.csr")"
assert "the request's signature verifies" openssl req -in "$T/g2.csr" -noout -verify
assert "the request names the issuing CA" test \
  "$(openssl req -in "$T/g2.csr" -noout -subject | sed 's/^subject=//')" = \
  "$(openssl x509 -in "$MQPKI_HOME/ca/issuing.pem" -noout -subject | sed 's/^subject=//')"
check "ca rollover --csr-out again" mqpki ca rollover --csr-out "$T/g2b.csr"
assert "it is the same key" test "$(pubkey_of "$T/g2.csr")" = "$(pubkey_of "$T/g2b.csr")"
expect_fail 1 "--csr-out with --cert is refused" mqpki ca rollover --csr-out "$T/x" --cert "$T/x"
expect_fail 1 "--days with --cert is refused (the root sets the validity)" \
  mqpki ca rollover --cert "$T/x" --days 30
echo garbage >"$T/garbage.pem"
expect_fail 1 "--cert with no certificate in it is refused" mqpki ca rollover --cert "$T/garbage.pem"

# Strangers at the root: another root, another key, a request asking too much, a forgery.
check "another root" mqpki root init --root-home "$T/other" --ca-name Grid
expect_fail 1 "a root signs no name it never certified" mqpki root sign --root-home "$T/other" \
  --csr "$T/g2.csr" --expect-key "$FP2" --out "$T/other.pem"
check "another CA of the same name under the other root" \
  mqpki --home "$T/other-ca" init --root-home "$T/other" --ca-name Grid
# A root's log after a long life: its record behind 17 MB of other lines, right after one
# longer than any line the root writes and one a torn write left with NUL bytes (read whole
# before, a log over 16 MiB refused every name).
{
  head -1 "$T/other/ceremony.log"
  awk 'BEGIN { for (i = 0; i < 400000; i++) print "{\"op\":\"padding\",\"subject\":\"Grid Issuing CA\"}" }'
  printf '%5000s\n' "" | tr ' ' a
  printf '{"op":"iss\0\0\n'
  tail -n +2 "$T/other/ceremony.log"
} >"$T/log.new"
mv "$T/log.new" "$T/other/ceremony.log"
check "the other root signs the request now" mqpki root sign --root-home "$T/other" \
  --csr "$T/g2.csr" --expect-key "$FP2" --out "$T/other.pem"
expect_fail 1 "a certificate by another root is refused" mqpki ca rollover --cert "$T/other.pem"
assert "the refusal names the root" contains "$T/err" "not signed by this CA's root"
mv "$AWAY" "$R"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/O=mqpki/CN=Grid Issuing CA" -addext "basicConstraints=critical,CA:TRUE,pathlen:5" \
  -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
  -addext "subjectAltName=DNS:evil.example" -keyout "$T/x.key" -out "$T/x.csr" 2>/dev/null
expect_fail 1 "the root signs nothing when the key is not the one expected" \
  mqpki root sign --root-home "$R" --csr "$T/x.csr" --expect-key "$FP2" --out "$T/x.pem"
assert "the refusal shows the request's key" contains "$T/err" "$(key_fp "$T/x.csr")"
assert "and nothing was written" test ! -e "$T/x.pem"
check "the root signs a request asking pathlen 5 and a SAN" mqpki root sign --root-home "$R" \
  --csr "$T/x.csr" --expect-key "$(key_fp "$T/x.csr")" --out "$T/x.pem"
assert "it gets pathlen 0 and no SAN" bash -c "openssl x509 -in '$T/x.pem' -noout -text \
  | grep -q 'CA:TRUE, pathlen:0' && ! openssl x509 -in '$T/x.pem' -noout -text | grep -q evil"
expect_fail 1 "a certificate for a key that is not generation 2's is refused" \
  mqpki ca rollover --cert "$T/x.pem"
openssl req -new -newkey rsa:2048 -nodes -subj "/CN=Grid Issuing CA" -keyout "$T/w.key" \
  -out "$T/w.csr" 2>/dev/null
expect_fail 1 "the root refuses an RSA-2048 request" \
  mqpki root sign --root-home "$R" --csr "$T/w.csr" --expect-key "$FP2" --out "$T/w.pem"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:secp256k1 -nodes \
  -subj "/CN=Grid Issuing CA" -keyout "$T/k1.key" -out "$T/k1.csr" 2>/dev/null
expect_fail 1 "the root refuses a key on another 256-bit curve" mqpki root sign \
  --root-home "$R" --csr "$T/k1.csr" --expect-key "$(key_fp "$T/k1.csr")" --out "$T/w.pem"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=Evil Issuing CA" -keyout "$T/e.key" -out "$T/e.csr" 2>/dev/null
expect_fail 1 "the root refuses a name it never certified" mqpki root sign \
  --root-home "$R" --csr "$T/e.csr" --expect-key "$(key_fp "$T/e.csr")" --out "$T/w.pem"
openssl req -in "$T/g2.csr" -outform DER -out "$T/forged.der"
python3 -c "import sys;b=bytearray(open(sys.argv[1],'rb').read());b[-3]^=1;open(sys.argv[1],'wb').write(b)" "$T/forged.der"
expect_fail 1 "the root refuses a request whose signature does not verify" \
  mqpki root sign --root-home "$R" --csr "$T/forged.der" --expect-key "$FP2" --out "$T/forged.pem"
assert "no certificate was written for the refused ones" test ! -e "$T/w.pem" -a ! -e "$T/forged.pem"

check "root sign the generation-2 request" mqpki root sign --root-home "$R" \
  --csr "$T/g2.csr" --expect-key "$FP2" --out "$T/g2.pem" --json
assert "the root shows the key the CA printed" test "$(jq -r .key_sha256 "$T/out")" = "$FP2"
assert "ceremony.log has every signature" test "$(wc -l <"$R/ceremony.log")" = 5
mv "$R" "$AWAY"
check "ca rollover --cert (mqpkid rolls over)" mqpki ca rollover --cert "$T/g2.pem" --json
assert "generation 2 is current" test "$(jq .generation "$T/out")" = 2
assert "ca/issuing.pem is the certificate the root signed" \
  cmp -s <(openssl x509 -in "$T/g2.pem") <(openssl x509 -in "$MQPKI_HOME/ca/issuing.pem")
check "ca rollover --cert again: already done" mqpki ca rollover --cert "$T/g2.pem" --json
assert "still generation 2, nothing done" test "$(jq -c '[.generation, .already]' "$T/out")" = '[2,true]' 
check "the broker learned generation 2 from the feed" wait_for 10 grep -q \
  "trusting 2 issuing CA keys" "$T/broker.log"

mqpki asset add new1 --kind device >/dev/null
make_csr new1
check "issue a certificate after the rollover" \
  mqpki issue --asset new1 --csr "$T/new1.csr" --out "$T/new1.pem"
assert "it comes from generation 2" test "$(akid_of "$T/new1.pem")" = "$(skid_of "$T/g2.pem")"
check "ca export" mqpki ca export --out "$T/chain2.pem"
assert "openssl verifies it with the exported chain" \
  openssl verify -CAfile "$T/chain2.pem" "$T/new1.pem"
check "a generation-2 client publishes to the generation-1 one" mosquitto_pub -h localhost \
  -p "$P" --cafile "$T/chain2.pem" --cert "$T/new1.pem" --key "$T/new1.key" -i new1 -q 1 \
  -t fleet/old1/in -m hello-from-gen2
check "the generation-1 client got it, still connected" wait_for 10 grep -qx hello-from-gen2 "$T/sub.out"
assert "it never reconnected" test "$(grep -c "as old1 " "$T/broker.log")" = 1
check "audit verify" mqpki audit verify
assert "the audit log has the request and the rollover" test \
  "$(sqlite3 "$MQPKI_HOME/mqpki.db" "SELECT action FROM audit WHERE action LIKE 'ca.%'" | tr '\n' ' ')" = \
  "ca.rollover.request ca.rollover.request ca.rollover "

# Crashes: `ca rollover --cert` (no mqpkid) killed at its first, second and third file
# replacement; a rerun finishes it.
stop_pid "$MQPKID_PID"
command -v strace >/dev/null || { echo "# strace missing (scripts/install-deps.sh)"; exit 1; }
gen=2
for n in 1 2 3; do
  gen=$((gen + 1))
  fp=$(mqpki ca rollover --csr-out "$T/g$gen.csr" --json | jq -r .key_sha256)
  mv "$AWAY" "$R"
  mqpki root sign --root-home "$R" --csr "$T/g$gen.csr" --expect-key "$fp" --out "$T/g$gen.pem" >/dev/null
  mv "$R" "$AWAY"
  rc=0
  strace -f -qq -o /dev/null -e trace=rename -e inject=rename:signal=KILL:when=$n \
    mqpki ca rollover --cert "$T/g$gen.pem" >/dev/null 2>&1 || rc=$?
  assert "rollover to $gen killed at rename $n" test "$rc" = 137
  check "the rerun finishes it" mqpki ca rollover --cert "$T/g$gen.pem" --json
  assert "generation $gen is current" test "$(jq .generation "$T/out")" = "$gen" -a \
    "$(openssl x509 -in "$MQPKI_HOME/ca/issuing.pem" -noout -fingerprint)" = \
    "$(openssl x509 -in "$T/g$gen.pem" -noout -fingerprint)"
  assert "the chain starts with it" test \
    "$(openssl x509 -in "$MQPKI_HOME/ca/chain.pem" -noout -fingerprint)" = \
    "$(openssl x509 -in "$T/g$gen.pem" -noout -fingerprint)"
done
mqpki asset add new2 --kind device >/dev/null
make_csr new2
check "the CA issues after the crashes" \
  mqpki issue --asset new2 --csr "$T/new2.csr" --out "$T/new2.pem"
check "ca export" mqpki ca export --out "$T/chain3.pem"
assert "and openssl verifies it" openssl verify -CAfile "$T/chain3.pem" "$T/new2.pem"
check "audit verify after the crashes" mqpki audit verify

# PINs held by people, never on disk: MQPKI_ROOT_PIN at `root init`, MQPKI_PIN at `init`; one
# process opens both tokens, each with its own.
RP="$T/root-pin"
expect_fail 1 "root init refuses a PIN SoftHSM would not take" env MQPKI_ROOT_PIN=abc \
  mqpki root init --root-home "$RP"
assert "before making anything" test ! -e "$RP"
check "root init with MQPKI_ROOT_PIN" env MQPKI_ROOT_PIN=officers-pin-1 \
  mqpki root init --root-home "$RP" --ca-name Pin
assert "no PIN file, no SO PIN file on the root medium" test -z "$(ls -A "$RP/secrets")"
check "init with MQPKI_PIN, and MQPKI_ROOT_PIN for that root" env MQPKI_PIN=ca-pin-2 \
  MQPKI_ROOT_PIN=officers-pin-1 mqpki --home "$T/pin-home" init --root-home "$RP" --ca-name Pin
assert "the CA keeps no PIN file, no SO PIN file either" test -z "$(ls -A "$T/pin-home/secrets")"
mqpki --home "$T/pin-home" asset add p1 --kind device >/dev/null
make_csr p1
expect_fail 1 "the CA's token does not open without MQPKI_PIN" \
  mqpki --home "$T/pin-home" issue --asset p1 --csr "$T/p1.csr" --out "$T/p1.pem"
expect_fail 1 "nor with the root's PIN" env MQPKI_PIN=officers-pin-1 \
  mqpki --home "$T/pin-home" issue --asset p1 --csr "$T/p1.csr" --out "$T/p1.pem"
check "and issues with its own" env MQPKI_PIN=ca-pin-2 \
  mqpki --home "$T/pin-home" issue --asset p1 --csr "$T/p1.csr" --out "$T/p1.pem"
assert "a certificate under that root" openssl verify -CAfile "$RP/root.pem" \
  -untrusted "$T/pin-home/ca/issuing.pem" "$T/p1.pem"
check "a request for the next generation" env MQPKI_PIN=ca-pin-2 \
  mqpki --home "$T/pin-home" ca rollover --csr-out "$T/pin2.csr" --json
FPP=$(jq -r .key_sha256 "$T/out")
expect_fail 1 "root sign without the root's PIN is refused" \
  mqpki root sign --root-home "$RP" --csr "$T/pin2.csr" --expect-key "$FPP" --out "$T/rp.pem"
expect_fail 1 "root sign with the CA's variable is refused too" env MQPKI_PIN=officers-pin-1 \
  mqpki root sign --root-home "$RP" --csr "$T/pin2.csr" --expect-key "$FPP" --out "$T/rp.pem"
check "root sign with MQPKI_ROOT_PIN" env MQPKI_ROOT_PIN=officers-pin-1 \
  mqpki root sign --root-home "$RP" --csr "$T/pin2.csr" --expect-key "$FPP" --out "$T/rp.pem"
check "ca rollover --cert with MQPKI_PIN" env MQPKI_PIN=ca-pin-2 \
  mqpki --home "$T/pin-home" ca rollover --cert "$T/rp.pem" --json
assert "generation 2 under the officers' root" test "$(jq .generation "$T/out")" = 2
finish
