#!/usr/bin/env bash
# 03-revoke-crash: no revocation is ever lost. 100 revocations (some as `asset decommission`),
# each `mqpki` killed with SIGKILL at a different syscall (strace fault injection: rename, fsync,
# fdatasync, write, pwrite64, ftruncate, openat, sendto), with mqpkid running and with it
# stopped. For every revocation the store reports, the running bundled broker holds a CRL
# listing the serial within 5 s (while mqpkid runs) and refuses the certificate; no CRL number
# ever goes down in crl/ or at the broker; after every kill the CA still signs. Then 8 revokes
# in parallel with mqpkid publishing, and a full disk (injected ENOSPC).
. "$(dirname "$0")/lib.sh"

command -v strace >/dev/null || { echo "# strace missing (scripts/install-deps.sh)"; exit 1; }
ROUNDS=${REVOKE_CRASH_ROUNDS:-100}
H=$MQPKI_HOME
P=$(free_port)
P2=$(free_port)
TLS=(-h 127.0.0.1 -p "$P" --cafile "$T/chain.pem")
check "mqpki init" init_ca
# A full CRL follows deltas within 2 s here (default 60 s): the broker's full CRL lists every
# revocation too, not only its delta CRL.
sed -i 's/^crl_full_after = .*/crl_full_after = 2s/' "$H/mqpki.conf"
check "broker init b1" mqpki broker init b1 --port "$P"

start_broker() {
  mqpki broker run b1 >>"$T/broker.log" 2>&1 &
  BROKER=$!
  PIDS+=("$BROKER")
  wait_for 10 listening "$P"
}
MQPKID=""
start_daemon() {
  mqpkid --home "$H" --listen "127.0.0.1:$P2" >>"$T/mqpkid.log" 2>&1 &
  MQPKID=$!
  PIDS+=("$MQPKID")
  wait_for 10 listening "$P2" && wait_for 10 test -S "$H/run/mqpkid.sock"
}
stop_daemon() { stop_pid "$MQPKID"; MQPKID=""; }

# Watches the CRL numbers in crl/ and at the broker (its kept CRLs) and writes any step down.
cat >"$T/watch.py" <<'EOF'
import os, sys, time
OIDS = {b"\x06\x03\x55\x1d\x14": "number"}
def number(path):
    try:
        der = open(path, "rb").read()
    except OSError:
        return None
    i = der.rfind(b"\x06\x03\x55\x1d\x14")  # cRLNumber, among the CRL extensions at the end
    if i < 0:
        return None
    j = i + 5
    if der[j:j + 3] == b"\x01\x01\xff":
        j += 3
    if der[j] != 0x04 or der[j + 2] != 0x02:
        return None
    n = der[j + 3]
    return int.from_bytes(der[j + 4:j + 4 + n], "big")
files = sys.argv[2:]
seen = {f: -1 for f in files}
with open(sys.argv[1], "w") as out:
    while not os.path.exists(sys.argv[1] + ".stop"):
        for f in files:
            n = number(f)
            if n is None or n == seen[f]:
                continue
            if n < seen[f]:
                out.write("%s went from %d down to %d\n" % (f, seen[f], n))
                out.flush()
            seen[f] = n
        time.sleep(0.01)
    out.write("watched %s\n" % " ".join("%s=%d" % (os.path.basename(f), seen[f]) for f in files))
EOF
python3 "$T/watch.py" "$T/watch.txt" "$H/crl/issuing.crl" "$H/crl/issuing-delta.crl" \
  "$H/brokers/b1/state/full.der" "$H/brokers/b1/state/delta.der" &
WATCH=$!
PIDS+=("$WATCH")

check "broker b1 listening" start_broker
check "mqpkid running" start_daemon

# The serials a running broker holds: its kept full and delta CRLs.
held() {
  local f
  for f in "$H/brokers/b1/state/full.der" "$H/brokers/b1/state/delta.der"; do
    if [ -s "$f" ]; then openssl crl -inform DER -in "$f" -noout -text 2>/dev/null || true; fi
  done | sed -n 's/^ *Serial Number: *//p'
}
held_has() { held >"$T/held.now"; grep -qx "$1" "$T/held.now"; }
store_revoked() { mqpki cert list --state revoked --json | jq -r '.[].serial' | sort -u; }

# issue_one NAME: a fresh asset and certificate ($T/NAME.pem, .key); the CA must still sign.
issue_one() {
  mqpki asset add "$1" --kind device >/dev/null 2>>"$T/issue.err" || return 1
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$T/$1.key" -out "$T/$1.csr" 2>/dev/null
  mqpki issue --asset "$1" --csr "$T/$1.csr" --out "$T/$1.pem" 2>>"$T/issue.err"
}
serial_of() { openssl x509 -in "$T/$1.pem" -noout -serial | cut -d= -f2; }

# How many times a revoke makes each syscall, with and without mqpkid, to spread the kills.
SYSCALLS_DAEMON=(pwrite64 fdatasync write sendto openat ftruncate connect)
SYSCALLS_LOCAL=(rename fsync fdatasync write pwrite64 ftruncate openat)
count_calls() { # MODE NAME...: strace -c of one revoke
  issue_one "probe-$1" || return 1
  strace -f -c -o "$T/count-$1.txt" mqpki revoke --asset "probe-$1" --reason superseded >/dev/null
}
calls() { awk -v s="$2" '$NF == s { print $4 }' "$T/count-$1.txt"; }
check "count a revoke's syscalls with mqpkid" count_calls daemon

failed_issue=0
killed=0
completed=0
late=0
# round I MODE: issue a certificate, then revoke (or decommission) it under a kill at one syscall.
round() {
  local i=$1 mode=$2 name="r$1" sys n max cmd st
  if ! issue_one "$name"; then
    failed_issue=$((failed_issue + 1)); echo "# $name: issue failed: $(tail -1 "$T/issue.err")"
    return
  fi
  if [ "$mode" = daemon ]; then
    sys=${SYSCALLS_DAEMON[$((i % ${#SYSCALLS_DAEMON[@]}))]}
  else
    sys=${SYSCALLS_LOCAL[$((i % ${#SYSCALLS_LOCAL[@]}))]}
  fi
  max=$(calls "$mode" "$sys")
  [ -n "$max" ] && [ "$max" -gt 0 ] || max=1
  n=$((1 + (i * 7 + i / 7) % max))
  if [ $((i % 5)) -eq 0 ]; then
    cmd=(mqpki asset decommission "$name")
  else
    cmd=(mqpki revoke --serial "$(serial_of "$name")" --reason key-compromise)
  fi
  st=0
  strace -f -o /dev/null -e trace="$sys" -e inject="$sys":signal=KILL:when="$n" "${cmd[@]}" \
    >/dev/null 2>&1 || st=$?
  if [ "$st" -eq 0 ]; then completed=$((completed + 1)); echo "$name" >>"$T/returned"; else
    killed=$((killed + 1)); fi
  echo "$name $sys $n $st" >>"$T/rounds"
  # While mqpkid runs, a revocation the store holds reaches the broker within 5 s.
  if [ "$mode" = daemon ]; then
    local s
    s=$(serial_of "$name")
    if mqpki cert list --asset "$name" --json | jq -e '.[0].state == "revoked"' >/dev/null; then
      wait_for 5 held_has "$s" || { late=$((late + 1)); echo "# $name ($s) not at the broker in 5 s"; }
    fi
  fi
}

A=$((ROUNDS * 7 / 10))
start=$(date +%s)
for i in $(seq 1 "$A"); do round "$i" daemon; done
ok "$A rounds with mqpkid running: $killed killed, $completed completed, $(($(date +%s) - start)) s"
assert "the CA signed after every kill (issuance never failed)" test "$failed_issue" -eq 0
assert "every revocation the store holds reached the broker within 5 s ($late late)" \
  test "$late" -eq 0

# Without mqpkid: commands publish themselves (token, files); kills hit those steps too.
stop_daemon
check "count a revoke's syscalls without mqpkid" count_calls local
k0=$killed
for i in $(seq $((A + 1)) "$ROUNDS"); do round "$i" local; done
ok "$((ROUNDS - A)) rounds without mqpkid: $((killed - k0)) killed"
assert "the CA signed after every kill here too" test "$failed_issue" -eq 0
check "mqpkid restarts" start_daemon

# Every revocation the store reports is held by the broker within 5 s, and refused there.
store_revoked >"$T/store-revoked"
all_held() { held | sort -u >"$T/held"; comm -23 "$T/store-revoked" "$T/held" >"$T/missing"; \
  [ ! -s "$T/missing" ]; }
check "the broker holds every one of $(wc -l <"$T/store-revoked") revoked serials within 5 s" \
  wait_for 5 all_held
[ -s "$T/missing" ] && sed 's/^/#   missing at the broker: /' "$T/missing" | head -5
lost=0
while read -r name; do
  mqpki cert list --asset "$name" --json | jq -e '.[0].state == "revoked"' >/dev/null ||
    { lost=$((lost + 1)); echo "# $name: the command returned 0 but it is not revoked"; }
done <"$T/returned"
assert "no revocation lost ($completed returned 0, $lost not revoked)" test "$lost" -eq 0
in_full() {
  openssl crl -inform DER -in "$H/brokers/b1/state/full.der" -noout -text >"$T/full.txt" || return 1
  sed -n 's/^ *Serial Number: *//p' "$T/full.txt" | sort -u >"$T/full"
  comm -23 "$T/store-revoked" "$T/full" >"$T/not-in-full"
  [ ! -s "$T/not-in-full" ]
}
check "and the broker's full CRL lists them all after crl_full_after" wait_for 10 in_full
refused() {
  ! mosquitto_pub "${TLS[@]}" --cert "$T/$1.pem" --key "$T/$1.key" -i "$1" -q 1 \
    -t "fleet/$1/t" -m x >/dev/null 2>&1
}
accepted=0
for f in "$T"/r*.pem; do
  name=$(basename "$f" .pem)
  s=$(serial_of "$name")
  grep -qx "$s" "$T/store-revoked" || continue
  refused "$name" || { accepted=$((accepted + 1)); echo "# $name accepted"; }
done
assert "the broker refuses every revoked certificate ($accepted accepted)" test "$accepted" -eq 0
assert "no publication left open" test "$(mqpki crl --json | jq '.open | length')" -eq 0
check "audit chain intact" mqpki audit verify
assert "store passes integrity_check" test "$(sqlite3 "$H/mqpki.db" 'PRAGMA integrity_check')" = ok

# 8 revokes at once while mqpkid publishes (deltas, and the full CRLs crl_full_after asks for).
for i in $(seq 1 8); do issue_one "p$i" || not_ok "issue p$i"; done
revs=()
for i in $(seq 1 8); do
  mqpki revoke --asset "p$i" --reason key-compromise >"$T/p$i.out" 2>&1 &
  revs+=($!)
done
wait "${revs[@]}" || true
par=0
for i in $(seq 1 8); do grep -q "revoked" "$T/p$i.out" && par=$((par + 1)); done
assert "8 parallel revokes all succeed ($par)" test "$par" -eq 8
store_revoked >"$T/store-revoked"
check "the broker holds all of them" wait_for 5 all_held
# The same while mqpkid starts: some commands publish themselves, then mqpkid takes over.
stop_daemon
for i in $(seq 1 8); do issue_one "q$i" || not_ok "issue q$i"; done
revs=()
for i in $(seq 1 8); do
  mqpki revoke --asset "q$i" --reason key-compromise >"$T/q$i.out" 2>&1 &
  revs+=($!)
done
start_daemon || not_ok "mqpkid restarts among the revokes"
wait "${revs[@]}" || true
par=0
for i in $(seq 1 8); do grep -q "revoked" "$T/q$i.out" && par=$((par + 1)); done
assert "8 revokes racing mqpkid's start all succeed ($par)" test "$par" -eq 8
store_revoked >"$T/store-revoked"
check "the broker holds all of them" wait_for 5 all_held

# A full disk (injected ENOSPC). In the store: the revocation fails whole, saying so.
issue_one full1
st=0
strace -f -o /dev/null -e trace=pwrite64 -e inject=pwrite64:error=ENOSPC:when=3+ \
  mqpki revoke --asset full1 --reason key-compromise >"$T/out" 2>"$T/err" || st=$?
assert "revoke on a full disk exits 2 (got $st)" test "$st" -eq 2
assert "and says the disk is full: $(cat "$T/err")" grep -q "disk full" "$T/err"
assert "and nothing changed" test "$(mqpki cert list --asset full1 --json | jq -r '.[0].state')" = valid
# Writing the CRL file (ENOSPC at its fsync, where a full disk shows with delayed allocation):
# the revocation is recorded, and published once space is back.
stop_daemon
issue_one full2
st=0
strace -f -o /dev/null -e trace=fsync -e inject=fsync:error=ENOSPC \
  mqpki revoke --asset full2 --reason key-compromise >"$T/out" 2>"$T/err" || st=$?
assert "revoke whose CRL file cannot be written exits 2 (got $st)" test "$st" -eq 2
assert "and says the revocation is recorded and the disk full: $(cat "$T/err")" \
  bash -c "grep -q 'recorded' '$T/err' && grep -q 'disk full' '$T/err'"
assert "the revocation is in the store" \
  test "$(mqpki cert list --asset full2 --json | jq -r '.[0].state')" = revoked
check "mqpkid restarts (space is back)" start_daemon
s=$(serial_of full2)
check "the broker holds the full disk's revocation within 5 s" wait_for 5 held_has "$s"
assert "and refuses the certificate" refused full2

touch "$T/watch.txt.stop"
wait "$WATCH" 2>/dev/null || true
sed 's/^/# /' "$T/watch.txt"
assert "no CRL number went down in crl/ or at the broker" \
  bash -c "! grep -q 'down' '$T/watch.txt'"
accepted_order() { # KIND: the numbers the broker accepted, in order, strictly increasing
  sed -n "s/.*mqpki: $1 CRL \([0-9]*\) accepted.*/\1/p" "$T/broker.log" |
    awk 'NR > 1 && $1 <= prev { bad = 1 } { prev = $1 } END { exit bad }'
}
assert "the broker accepted full CRLs in strictly increasing order" accepted_order full
assert "the broker accepted delta CRLs in strictly increasing order" accepted_order delta
finish
