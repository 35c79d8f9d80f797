#!/usr/bin/env bash
# 08-relocate: the data directory is relocatable. A copy made with `cp -a` while the original
# still exists signs with its own token and never opens a file of the original (strace); a
# directory moved with `mv` works at its new path; derived files (hsm/softhsm2.conf, each
# broker's mosquitto.conf) follow the current location; a token directory that leads out of
# the data directory is refused.
. "$(dirname "$0")/lib.sh"

H=$MQPKI_HOME
C=$T/copy
M=$T/moved
P=$(free_port)

check "mqpki init" init_ca
check "broker init b1" mqpki broker init b1 --port "$P"
check "asset add dev1" mqpki asset add dev1 --kind device
make_csr dev1
check "issue dev1 in the original" mqpki issue --asset dev1 --csr "$T/dev1.csr" --out "$T/dev1.pem"

# Stored files name no path of the directory (the derived softhsm2.conf aside).
assert "no stored file names the data directory" \
  bash -c "! grep -rlaF '$H' '$H' --exclude=softhsm2.conf"
assert "mosquitto.conf paths are relative" bash -c "! grep -q '$T' '$H/brokers/b1/mosquitto.conf'"

# A copy beside its original: every file it opens is its own.
check "cp -a of the data directory" cp -a "$H" "$C"
check "copy: issue a certificate, traced" strace -f -qq -e trace=open,openat,openat2 \
  -o "$T/copy.trace" mqpki --home "$C" issue --asset dev1 --csr "$T/dev1.csr" --out "$T/dev1-c.pem"
assert "the trace saw the copy's token" grep -q "$C/hsm/tokens" "$T/copy.trace"
assert "the copy never opened a file of the original" bash -c "! grep -F '$H/' '$T/copy.trace'"
assert "softhsm2.conf of the copy names its own token" \
  grep -q "^directories.tokendir = $C/hsm/tokens$" "$C/hsm/softhsm2.conf"
check "the copy's certificate verifies against its chain" \
  openssl verify -CAfile "$T/chain.pem" "$T/dev1-c.pem"
assert "the original does not know the copy's certificate" \
  test "$(mqpki cert list --asset dev1 --json | jq length)" = 1
assert "the copy knows both" test "$(mqpki --home "$C" cert list --asset dev1 --json | jq length)" = 2

# mqpkid on the copy, traced: it starts, serves, and opens nothing of the original.
MQPKID_LOG=$T/mqpkid-copy.log
strace -f -qq -e trace=open,openat,openat2 -o "$T/mqpkid.trace" \
  mqpkid --home "$C" --listen 127.0.0.1:0 2>"$MQPKID_LOG" &
TRACED=$!
PIDS+=("$TRACED")
check "mqpkid starts on the copy" wait_for 30 grep -q "listening on https://" "$MQPKID_LOG"
MQPKID_PORT=$(grep -o 'listening on https://[^ ]*' "$MQPKID_LOG" | sed 's/.*://')
check "mqpkid on the copy serves /cacerts" curl -sSf --cacert "$T/chain.pem" -o /dev/null \
  "https://localhost:$MQPKID_PORT/.well-known/est/cacerts"
check "copy: issue through mqpkid" mqpki --home "$C" issue --asset dev1 --csr "$T/dev1.csr"
# strace ends with its tracee: stop mqpkid itself.
stop_pid "$(cat "$C/run/mqpkid.lock")"
wait "$TRACED" 2>/dev/null || true
assert "mqpkid on the copy never opened a file of the original" \
  bash -c "! grep -F '$H/' '$T/mqpkid.trace'"

# The broker of the copy runs from the copy.
mqpki --home "$C" broker run b1 >"$T/broker.log" 2>&1 &
BROKER=$!
PIDS+=("$BROKER")
check "the copy's broker listens" wait_for 10 listening "$P"
stop_pid "$BROKER"
assert "the copy's mosquitto.conf names no data directory" \
  bash -c "! grep -qF '$T' '$C/brokers/b1/mosquitto.conf'"

# mv: the original moved away; its old path is gone and everything works at the new one.
check "mv of the data directory" mv "$H" "$M"
check "moved: sign a CRL (token opened)" mqpki --home "$M" crl publish
check "moved: issue" mqpki --home "$M" issue --asset dev1 --csr "$T/dev1.csr"
check "moved: audit verify" mqpki --home "$M" audit verify
assert "softhsm2.conf follows the move" \
  grep -q "^directories.tokendir = $M/hsm/tokens$" "$M/hsm/softhsm2.conf"
check "mqpkid starts on the moved directory" start_mqpkid --home "$M"
check "mqpkid on the moved directory serves /cacerts" curl -sSf --cacert "$T/chain.pem" -o /dev/null \
  "$MQPKID_URL/.well-known/est/cacerts"
stop_pid "$MQPKID_PID"

# A data directory written before the files were derived: old absolute paths are replaced.
sed -i "s#^directories.tokendir = .*#directories.tokendir = /nonexistent/hsm/tokens#" \
  "$M/hsm/softhsm2.conf"
check "an old softhsm2.conf is rewritten at the first opening" mqpki --home "$M" crl publish
assert "... naming the current token" grep -q "^directories.tokendir = $M/hsm/tokens$" \
  "$M/hsm/softhsm2.conf"

# A token directory that leads out of the data directory is refused, never followed.
check "second copy" cp -a "$M" "$T/linked"
rm -rf "$T/linked/hsm/tokens"
ln -s "$M/hsm/tokens" "$T/linked/hsm/tokens"
expect_fail 1 "a token directory linked to another data directory" \
  mqpki --home "$T/linked" crl publish
tok=$(ls "$M/hsm/tokens" | head -1)
rm -rf "$T/linked/hsm/tokens"
mkdir -m 700 "$T/linked/hsm/tokens"
ln -s "$M/hsm/tokens/$tok" "$T/linked/hsm/tokens/$tok"
expect_fail 1 "a token linked to another data directory's" \
  mqpki --home "$T/linked" crl publish

finish
