#!/usr/bin/env bash
# The offline tour of mqpki on the embedded default (SoftHSM token + SQLite in one directory):
# the energy provider's field message bus from the OASIS note "MQTT and the NIST Cybersecurity
# Framework", registered, certified, one device compromised and revoked, the CRL checked with
# openssl. The data directory is build/demo, made fresh on every run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/build/bin:$PATH"
export MQPKI_HOME="$PWD/build/demo"
unset MQPKI_PIN
work=$(mktemp -d /tmp/mqpki-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
ms() { date +%s%3N; }

rm -rf "$MQPKI_HOME"
step "1. Create the CA: keys generated inside the SoftHSM token, never outside it"
run mqpki init --ca-name "Field Bus" 2>&1 | sed 's/^/  /'

step "2. Identify: register the field message bus assets"
run mqpki asset add tablet  --kind device --model "Operator tablet" --location control-room
run mqpki asset add meter   --kind device --model "Smart meter SM-200" --location feeder-12 --firmware 4.2.1
run mqpki asset add dms     --kind service --model "Distribution management system" --location datacenter
run mqpki asset add capbank --kind device --model "Cap bank controller" --location feeder-12
run mqpki asset add supply  --kind device --model "Power supply" --location substation-7

step "3. Protect: each asset makes its key and CSR; the CA issues from it"
for a in tablet meter capbank supply; do
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$a" \
    -keyout "$work/$a.key" -out "$work/$a.csr" 2>/dev/null
  t0=$(ms)
  mqpki issue --asset "$a" --csr "$work/$a.csr" --out "$work/$a.pem"
  t1=$(ms)
  printf '  %-8s serial %s  (%d ms)\n' "$a" \
    "$(openssl x509 -in "$work/$a.pem" -noout -serial | cut -d= -f2)" $((t1 - t0))
done
# The DMS is a service; its CSR even asks to be a CA, and gets a leaf all the same.
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=dms" \
  -addext "basicConstraints=critical,CA:TRUE" -keyout "$work/dms.key" -out "$work/dms.csr" 2>/dev/null
printf '  dms CSR asks for CA:TRUE; the certificate says: '
mqpki issue --asset dms --csr "$work/dms.csr" --out "$work/dms.pem" --profile device 2>&1 || true
mqpki ca export --out "$work/chain.pem"
printf '  mqpki refuses the wrong profile; with the right one: '
mqpki --home "$MQPKI_HOME" issue --asset dms --csr "$work/dms.csr" --out "$work/dms.pem"
openssl x509 -in "$work/dms.pem" -noout -ext basicConstraints | tail -1 | sed 's/^ *//'
run openssl verify -CAfile "$work/chain.pem" "$work/meter.pem"
run mqpki asset list

step "4. Respond: the meter's key is declared compromised"
t0=$(ms)
run mqpki revoke --asset meter --reason key-compromise
t1=$(ms)
echo "  revoked and new CRL signed in $((t1 - t0)) ms"
mqpki crl >"$work/crl.pem"
run openssl crl -in "$work/crl.pem" -CAfile "$work/chain.pem" -noout
cat "$work/chain.pem" "$work/crl.pem" >"$work/trust.pem"
printf '$ openssl verify -crl_check ... meter.pem\n  '
openssl verify -crl_check -CAfile "$work/trust.pem" "$work/meter.pem" 2>&1 | grep -m1 -o "certificate revoked" || true
printf '$ openssl verify -crl_check ... tablet.pem\n  '
openssl verify -crl_check -CAfile "$work/trust.pem" "$work/tablet.pem"

step "5. Recover: a fresh key for the meter (the compromised one is refused for good)"
printf '  re-using the stolen key: '
mqpki issue --asset meter --csr "$work/meter.csr" 2>&1 || true
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=meter" \
  -keyout "$work/meter2.key" -out "$work/meter2.csr" 2>/dev/null
mqpki issue --asset meter --csr "$work/meter2.csr" --out "$work/meter2.pem"
run openssl verify -CAfile "$work/chain.pem" "$work/meter2.pem"

step "6. Detect / audit: lifecycle and a tamper-evident log"
run mqpki asset show meter
run mqpki audit verify
run mqpki asset list
echo
echo "Data directory: $MQPKI_HOME (recreated on every run of 'make demo')."
