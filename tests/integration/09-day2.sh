#!/usr/bin/env bash
# 09-day2: the day-two commands. asset import (CSV and JSON, errors per line, nothing imported
# from a bad file or a refused batch), revoke by selector (confirmation, one CRL publication for
# every matching asset, 1,000 of them at once), unhold --asset, cert show, cert expiring, ca
# fingerprint.
. "$(dirname "$0")/lib.sh"
# A command outside the checks that fails ends the test (set -e): say which.
trap 'echo "# stopped at line $LINENO: $BASH_COMMAND" >&2' ERR

H=$MQPKI_HOME
check "mqpki init" init_ca
count() { mqpki asset list --json | jq length; }
base=$(count)

# ---- asset import
{
  echo "id,kind,model,serial,location,tags"
  for i in $(seq 1 2500); do echo "imp-$i,device,acme-7,HW$i,feeder-$((i % 4)),site=s1;role=meter"; done
} >"$T/assets.csv"
check "import 2,500 rows from CSV" mqpki asset import "$T/assets.csv"
assert "says how many" contains "$T/out" "2500 assets imported"
assert "all registered" test "$(count)" = $((base + 2500))
mqpki asset show imp-7 --json >"$T/imp7.json"
assert "fields and tags imported" test "$(jq -r '[.model,.serial,.location,.tags.role] | join(" ")' \
  "$T/imp7.json")" = "acme-7 HW7 feeder-3 meter"

printf 'id,kind,location\nok-1,device,x\nbad id,device,x\nok-2,gadget,x\nok-3,device\n' >"$T/bad.csv"
rc=0; mqpki asset import "$T/bad.csv" >"$T/out" 2>"$T/err" || rc=$?
assert "a bad file: exit 1" test "$rc" = 1
assert "line 3 reported" grep -q "bad.csv:3: asset id 'bad id'" "$T/err"
assert "line 4 reported" grep -q "bad.csv:4: kind 'gadget'" "$T/err"
assert "line 5 reported" grep -q "bad.csv:5: 2 fields, the header has 3" "$T/err"
assert "nothing imported from it" bash -c "! mqpki asset show ok-1 >/dev/null 2>&1"

# Quoting as RFC 4180 has it; hostile files refused with the line named.
printf 'id,location\nq-1,"feeder ""7"", east"\n' >"$T/quoted.csv"
check "a quoted field with a comma and quotes" mqpki asset import "$T/quoted.csv"
assert "imported as written" test "$(mqpki asset show q-1 --json | jq -r .location)" = \
  'feeder "7", east'
printf 'id,location\nq-2,"open quote\n' >"$T/unterminated.csv"
rc=0; mqpki asset import "$T/unterminated.csv" >"$T/out" 2>"$T/err" || rc=$?
assert "an unterminated quote refused by line" bash -c "[ $rc = 1 ] && \
  grep -q 'unterminated.csv:2: malformed CSV: a quote not closed' '$T/err'"
{ printf 'id,location\nq-3,'; head -c 10000 /dev/zero | tr '\0' x; printf '\n'; } >"$T/long.csv"
rc=0; mqpki asset import "$T/long.csv" >"$T/out" 2>"$T/err" || rc=$?
assert "a 10 kB line refused by line" bash -c "[ $rc = 1 ] && grep -q 'long.csv:2: line longer' \
  '$T/err'"
printf 'id\nq-4\0\n' >"$T/nul.csv"
expect_fail 1 "a file with a NUL byte" mqpki asset import "$T/nul.csv"
expect_fail 1 "not .csv or .json" mqpki asset import "$T/assets.txt"
expect_fail 1 "a missing file" mqpki asset import "$T/none.csv"
assert "nothing of them imported" bash -c "! mqpki asset show q-2 >/dev/null 2>&1 && \
  ! mqpki asset show q-3 >/dev/null 2>&1 && ! mqpki asset show q-4 >/dev/null 2>&1"

# A batch with an id the store already has is rolled back whole; the other batches stay.
{
  echo "id"
  for i in $(seq 1 1500); do echo "dup-$i"; done
  echo "imp-1"
} >"$T/dup.csv"
rc=0; mqpki asset import "$T/dup.csv" >"$T/out" 2>"$T/err" || rc=$?
assert "a refused row: exit 1" test "$rc" = 1
assert "its line is reported" grep -q "dup.csv:1502: .*imp-1" "$T/err"
assert "the first batch stays" bash -c "mqpki asset show dup-1000 >/dev/null"
assert "the refused row's batch is rolled back" bash -c "! mqpki asset show dup-1001 >/dev/null 2>&1"

cat >"$T/assets.json" <<'JSON'
[{"id": "js-1", "kind": "device", "model": "m9", "location": "feeder-12", "tags": {"ring": "b"}},
 {"id": "js-2", "location": "feeder-12", "firmware": "1.2"}]
JSON
check "import JSON" mqpki asset import "$T/assets.json"
assert "JSON tags" test "$(mqpki asset show js-1 --json | jq -r .tags.ring)" = b
printf '[{"id": "js-3", "kind": 7}]' >"$T/bad.json"
rc=0; mqpki asset import "$T/bad.json" >"$T/out" 2>"$T/err" || rc=$?
assert "a bad JSON entry: exit 1" test "$rc" = 1
assert "reported by entry" grep -q 'bad.json: entry 1: "kind": expected a string' "$T/err"

# ---- certificates for the selector tests
issue() {
  mqpki asset add "$1" --kind device --location "$2" --model "$3" ${4:+--tag "$4"} >/dev/null
  make_csr "$1"
  mqpki issue --asset "$1" --csr "$T/$1.csr" --out "$T/$1.pem" ${5:+--days "$5"} >/dev/null
  openssl x509 -in "$T/$1.pem" -noout -serial | cut -d= -f2
}
declare -A SERIAL
for d in f1 f2 f3 f4 f5; do SERIAL[$d]=$(issue "$d" feeder-12 acme-1 ring=a); done
SERIAL[far]=$(issue far feeder-99 acme-2 ring=b)
SERIAL[soon]=$(issue soon feeder-99 acme-3 "" 10)

# ---- cert show, cert expiring, ca fingerprint
check "cert show" mqpki cert show --serial "${SERIAL[f1]}"
assert "names the asset" grep -q "^asset  *f1$" "$T/out"
mqpki cert show --serial "${SERIAL[f1]}" --json >"$T/show.json"
assert "cert show --json" test "$(jq -r '.asset + " " + .state' "$T/show.json")" = "f1 valid"
expect_fail 1 "cert show of an unknown serial" mqpki cert show --serial 0BADBADBAD
mqpki cert expiring --within 30d --json >"$T/exp.json"
assert "the 10-day certificate expires within 30d" \
  test "$(jq -r '.[].asset' "$T/exp.json" | grep -c '^soon$')" = 1
assert "the 1-year ones do not" test "$(jq '[.[].asset | select(startswith("f"))] | length' \
  "$T/exp.json")" = 0
check "cert expiring --within 5d" mqpki cert expiring --within 5d
assert "nothing within 5 days" contains "$T/out" "no valid certificate expires within 5d"
expect_fail 1 "a bare number is refused" mqpki cert expiring --within 30
check "ca fingerprint" mqpki ca fingerprint --json
want=$(openssl x509 -in "$T/chain.pem" -noout -fingerprint -sha256 | cut -d= -f2)
assert "the issuing CA's fingerprint is openssl's" test "$(jq -r .issuing "$T/out")" = "$want"

# ---- revoke by selector
expect_fail 1 "no terminal and no --yes: refused" \
  mqpki revoke --selector location=feeder-12 --reason cessation </dev/null
assert "says to use --yes" contains "$T/err" "give --yes"
expect_fail 1 "an unknown field" mqpki revoke --selector colour=red --yes
expect_fail 1 "nothing matches" mqpki revoke --model no-such-model --yes
before=$(mqpki crl --json | jq '[.full.number, (.delta.number // 0)] | max')
check "revoke --selector location=feeder-12" \
  mqpki revoke --selector location=feeder-12 --reason cessation --yes
assert "counts the assets" contains "$T/out" "7 assets match --selector location=feeder-12"
assert "and the certificates" contains "$T/out" "5 certificates of 5 assets revoked"
after=$(mqpki crl --json | jq '[.full.number, (.delta.number // 0)] | max')
assert "one CRL publication (number $before -> $after)" test "$after" = $((before + 1))
mqpki crl --der --delta --out "$T/delta.crl" 2>/dev/null || mqpki crl --der --out "$T/delta.crl"
openssl crl -inform DER -in "$T/delta.crl" -noout -text >"$T/delta.txt"
for d in f1 f2 f3 f4 f5; do
  assert "$d's serial listed" grep -q "Serial Number: ${SERIAL[$d]}" "$T/delta.txt"
done
assert "far is not" bash -c "! grep -q 'Serial Number: ${SERIAL[far]}' '$T/delta.txt'"
check "revoke --tag ring=b --reason hold" mqpki revoke --tag ring=b --reason hold --yes
assert "far on hold" test "$(mqpki cert show --serial "${SERIAL[far]}" --json | jq -r .reason)" \
  = hold
check "revoke --model acme-3" mqpki revoke --model acme-3 --yes
assert "soon revoked" test "$(mqpki cert show --serial "${SERIAL[soon]}" --json | jq -r .state)" \
  = revoked

# ---- unhold --asset
check "unhold --asset far" mqpki unhold --asset far
assert "far valid again" test "$(mqpki cert show --serial "${SERIAL[far]}" --json | jq -r .state)" \
  = valid
expect_fail 1 "unhold --asset with nothing on hold" mqpki unhold --asset far

# ---- a site of 1,000 devices retired in one command: one transaction, one CRL publication
{
  echo "id,kind,model,location"
  for i in $(seq 1 1000); do echo "site-$i,device,acme-9,feeder-77"; done
} >"$T/site.csv"
check "import the site's 1,000 devices" mqpki asset import "$T/site.csv"
mkdir -p "$T/site"
for i in $(seq 1 1000); do
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=site-$i" \
    -keyout "$T/site/$i.key" -out "$T/site/$i.csr" 2>/dev/null &&
    mqpki issue --asset "site-$i" --csr "$T/site/$i.csr" --out "$T/site/$i.pem" >/dev/null ||
    echo "site-$i" >>"$T/site/failed"
done
assert "1,000 certificates issued" test ! -e "$T/site/failed"
before=$(mqpki crl --json | jq '[.full.number, (.delta.number // 0)] | max')
check "revoke --selector location=feeder-77 (1,000 assets)" \
  mqpki revoke --selector location=feeder-77 --reason cessation --yes
assert "1,000 certificates of 1,000 assets" \
  contains "$T/out" "1000 certificates of 1000 assets revoked"
after=$(mqpki crl --json | jq '[.full.number, (.delta.number // 0)] | max')
assert "one CRL publication for all of them (number $before -> $after)" \
  test "$after" = $((before + 1))
mqpki crl --der --delta --out "$T/site.crl"
assert "the delta CRL lists all 1,000" test "$(openssl crl -inform DER -in "$T/site.crl" \
  -noout -text | grep -c 'Serial Number: ')" -ge 1000
check "audit chain intact" mqpki audit verify
finish
