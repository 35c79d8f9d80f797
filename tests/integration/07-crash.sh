#!/usr/bin/env bash
# 07-crash: kill -9 of mqpkid and of the bundled broker at random points during bursts of
# enrollments and revocations (a bounded number of rounds). Afterwards the store passes
# integrity_check and the audit chain verifies, every certificate a client received is in the
# store, every revocation the command reported is recorded, and the restarted broker refuses every
# revoked certificate. A revocation whose mqpkid is killed before it answers is published by the
# command itself.
. "$(dirname "$0")/lib.sh"

ROUNDS=${CRASH_ROUNDS:-5}
PER_ROUND=6
N=$((ROUNDS * PER_ROUND))
H=$MQPKI_HOME
P=$(free_port)
P2=$(free_port)
check "mqpki init" init_ca
sed -i 's/^rate = .*/rate = 0/' "$H/mqpki.conf"
check "broker init b1" mqpki broker init b1 --port "$P"
for i in $(seq 1 "$N"); do
  mqpki asset add "d$i" --kind device >/dev/null
  mqpki token create "d$i" >"$T/d$i.token"
  est_csr "d$i"
  base64 -d "$T/d$i.b64" >/dev/null
done
ok "registered $N assets with tokens and CSRs"

BROKER=""
MQPKID=""
start_broker() {
  mqpki broker run b1 >>"$T/broker.log" 2>&1 &
  BROKER=$!
  PIDS+=("$BROKER")
  wait_for 10 listening "$P"
}
start_daemon() {
  mqpkid --home "$H" --listen "127.0.0.1:$P2" >>"$T/mqpkid.log" 2>&1 &
  MQPKID=$!
  PIDS+=("$MQPKID")
  wait_for 10 listening "$P2"
}
MQPKID_URL="https://localhost:$P2"

# enroll_burst FIRST LAST: enrolls dFIRST..dLAST, two at a time.
enroll_burst() {
  local i
  for i in $(seq "$1" "$2"); do
    est_enroll "d$i" "$(cat "$T/d$i.token")" "d$i" >"$T/d$i.code" 2>/dev/null &
    [ $((i % 2)) -eq 0 ] && wait
  done
  wait
}
# revoke_burst: revokes up to 3 received certificates not revoked yet; records each revocation
# the command reported.
revoke_burst() {
  local f name serial n=0
  for f in $(grep -l '^200$' "$T"/d*.code 2>/dev/null | shuf); do
    name=$(basename "$f" .code)
    [ -e "$T/$name.revoked" ] && continue
    serial=$(openssl x509 -in "$T/$name.pem" -noout -serial | cut -d= -f2)
    # A command that failed after "recorded" (its publication cut short) revoked it too.
    if mqpki revoke --serial "$serial" --reason key-compromise >/dev/null 2>"$T/$name.rerr" ||
      grep -q "and recorded, but" "$T/$name.rerr"; then
      echo "$serial" >"$T/$name.revoked"
    fi
    n=$((n + 1)); [ "$n" -ge 3 ] && break
  done
}

start=$(date +%s)
for r in $(seq 1 "$ROUNDS"); do
  [ -n "$BROKER" ] && kill -0 "$BROKER" 2>/dev/null || start_broker || true
  [ -n "$MQPKID" ] && kill -0 "$MQPKID" 2>/dev/null || start_daemon || true
  first=$(((r - 1) * PER_ROUND + 1))
  enroll_burst "$first" $((first + PER_ROUND - 1)) &
  burst=$!
  revoke_burst &
  rburst=$!
  sleep "$((RANDOM % 2)).$((RANDOM % 9 + 1))"
  case $((RANDOM % 3)) in
    0) victims="$MQPKID" ;;
    1) victims="$BROKER" ;;
    *) victims="$MQPKID $BROKER" ;;
  esac
  for v in $victims; do kill -9 "$v" 2>/dev/null || true; wait "$v" 2>/dev/null || true; done
  wait "$burst" "$rburst" 2>/dev/null || true
done
ok "$ROUNDS rounds of kill -9 in $(($(date +%s) - start)) s"

# After the storm: both restart.
kill -0 "$BROKER" 2>/dev/null || check "broker restarts" start_broker
kill -0 "$MQPKID" 2>/dev/null || check "mqpkid restarts" start_daemon

# mqpkid killed while a revocation waits for its answer: the command finishes the publication.
has_socket() { ls -l "/proc/$1/fd" 2>/dev/null | grep -q 'socket:'; }
victim=""
for f in $(grep -l '^200$' "$T"/d*.code | shuf); do
  name=$(basename "$f" .code)
  [ -e "$T/$name.revoked" ] || { victim=$name; break; }
done
assert "a valid certificate is left to revoke" test -n "$victim"
if [ -n "$victim" ]; then
  serial=$(openssl x509 -in "$T/$victim.pem" -noout -serial | cut -d= -f2)
  kill -STOP "$MQPKID"
  mqpki revoke --serial "$serial" --reason key-compromise >"$T/out" 2>"$T/err" &
  rpid=$!
  # Its transaction committed, it waits on mqpkid's control socket.
  check "the revocation waits for the stopped mqpkid" wait_for 10 has_socket "$rpid"
  kill -9 "$MQPKID"; wait "$MQPKID" 2>/dev/null || true
  rc=0; wait "$rpid" || rc=$?
  [ "$rc" -eq 0 ] && echo "$serial" >"$T/$victim.revoked"
  assert "mqpkid killed then: the command publishes itself (exit $rc: $(head -c 300 "$T/err"))" \
    bash -c "[ $rc -eq 0 ] && grep -q 'finishes the publication' '$T/err' && \
      grep -q 'published to crl/' '$T/out'"
  assert "... its delta CRL lists the certificate" bash -c "openssl crl -inform DER -in \
    '$H/crl/issuing-delta.crl' -noout -text | grep -qi '$serial'"
  check "mqpkid restarts after it" start_daemon
fi
assert "store passes integrity_check" \
  test "$(sqlite3 "$H/mqpki.db" 'PRAGMA integrity_check')" = ok
check "audit chain intact" mqpki audit verify

mqpki cert list --json >"$T/certs.json"
received=0
missing=0
for f in $(grep -l '^200$' "$T"/d*.code); do
  name=$(basename "$f" .code)
  serial=$(openssl x509 -in "$T/$name.pem" -noout -serial | cut -d= -f2)
  received=$((received + 1))
  jq -e --arg s "$serial" 'any(.[]; .serial == $s)' "$T/certs.json" >/dev/null ||
    missing=$((missing + 1))
done
assert "every certificate a client received is in the store ($received received, $missing \
missing)" test "$missing" -eq 0
assert "some enrollments succeeded" test "$received" -gt 0
lost=0
revoked=0
for f in "$T"/*.revoked; do
  [ -e "$f" ] || continue
  revoked=$((revoked + 1))
  jq -e --arg s "$(cat "$f")" 'any(.[]; .serial == $s and .state == "revoked")' \
    "$T/certs.json" >/dev/null || lost=$((lost + 1))
done
assert "no revocation lost ($revoked revoked, $lost lost)" test "$lost" -eq 0

# The restarted broker refuses every revoked certificate (it may need a moment for the feed).
TLS=(-h 127.0.0.1 -p "$P" --cafile "$T/chain.pem")
refused() {
  ! mosquitto_pub "${TLS[@]}" --cert "$T/$1.pem" --key "$T/$1.key" -i "$1:probe" -q 1 \
    -t "fleet/$1/t" -m x >/dev/null 2>&1
}
connects() { ! refused "$1"; }
accepted=0
for f in "$T"/*.revoked; do
  [ -e "$f" ] || continue
  name=$(basename "$f" .revoked)
  wait_for 15 refused "$name" || { accepted=$((accepted + 1)); echo "# $name accepted"; }
done
assert "the broker refuses all $revoked revoked certificates ($accepted accepted)" \
  test "$accepted" -eq 0
for f in $(grep -l '^200$' "$T"/d*.code | head -20); do
  name=$(basename "$f" .code)
  [ -e "$T/$name.revoked" ] && continue
  check "a valid certificate ($name) still connects" connects "$name"
  if [ "$FAILED" -gt 0 ]; then
    serial=$(openssl x509 -in "$T/$name.pem" -noout -serial | cut -d= -f2)
    echo "# in the store: $(jq -c --arg s "$serial" '.[] | select(.serial == $s)' "$T/certs.json")"
    [ -s "$T/$name.rerr" ] && sed 's/^/# revoke said: /' "$T/$name.rerr"
    mosquitto_pub "${TLS[@]}" --cert "$T/$name.pem" --key "$T/$name.key" -i "$name:probe" -q 1 \
      -t "fleet/$name/t" -m x 2>&1 | sed 's/^/# mosquitto_pub: /' | head -3
    grep -- "$name" "$T/broker.log" | tail -5 | sed 's/^/# broker: /'
  fi
  break
done
finish
