#!/usr/bin/env bash
# 07-hostile-files: what mqpki does with the files and environment it is handed. The PIN leaves
# the environment of mqpkid, of the broker `mqpki broker run` starts and of crl-sync --exec
# children (from MQPKI_PIN as from the PIN file); --out writes devices, FIFOs and links instead
# of renaming over them, accepts '-' and stays atomic for regular files; an output that cannot be
# written is refused before anything is signed; `cert get` hands out any recorded certificate;
# a FIFO as --csr is refused at once; killed runs' temporary files are swept; a full disk names
# its directory; a --home SoftHSM cannot be pointed at is refused with nothing left behind.
. "$(dirname "$0")/lib.sh"

H=$MQPKI_HOME
P=$(free_port)
check "mqpki init" init_ca
check "asset add dev1" mqpki asset add dev1 --kind device
check "broker init b1" mqpki broker init b1 --port "$P"
make_csr dev1
chain=$(cat "$T/chain.pem")
ncerts() { mqpki cert list --json | jq length; }
serial_of() { openssl x509 -in "$1" -noout -serial | cut -d= -f2; }
same() { cmp -s "$1" "$2"; }

# ---- the PIN leaves the environment (item 7) -------------------------------------------------
pin=$(cat "$H/secrets/pin")
no_pin_in() { ! tr '\0' '\n' <"$1" | grep -qF -- "$pin"; }

# One round: mqpkid, the bundled broker and a crl-sync --exec child, all started with ENV (e.g.
# MQPKI_PIN=...); none may show the PIN in its environment.
pin_round() {
  local how=$1; shift
  env "$@" mqpki broker run b1 >"$T/broker-$how.log" 2>&1 &
  BROKER=$!
  PIDS+=("$BROKER")
  check "$how: broker b1 listening" wait_for 10 listening "$P"
  env "$@" mqpkid --listen 127.0.0.1:0 2>"$T/mqpkid-$how.log" &
  MQPKID_PID=$!
  PIDS+=("$MQPKID_PID")
  check "$how: mqpkid listens" wait_for 15 grep -q "listening on" "$T/mqpkid-$how.log"
  check "$how: mqpkid signs with the PIN it was given" mqpki issue --asset dev1 \
    --csr "$T/dev1.csr" --out "$T/dev1-$how.pem"
  check "$how: the feed reaches b1" wait_for 15 grep -q "full CRL .* accepted" \
    "$T/broker-$how.log"
  rm -f "$T/exec-$how.env" "$T/parent-$how.env"
  # The child's own environment, and its parent's (crl-sync itself) as /proc shows it.
  local exec="cat /proc/self/environ >'$T/exec-$how.env';"
  exec+=" cat /proc/\$PPID/environ >'$T/parent-$how.env'"
  check "$how: crl-sync --once runs its --exec" env "$@" mqpki crl-sync \
    --broker "mqtts://127.0.0.1:$P" --out "$T/sync-$how.pem" --once --timeout 15s --exec "$exec"
  assert "$how: the --exec child ran" test -s "$T/exec-$how.env"
  assert "$how: mqpkid's /proc/PID/environ holds no PIN" no_pin_in "/proc/$MQPKID_PID/environ"
  assert "$how: the broker's (Mosquitto's) environ holds no PIN" no_pin_in "/proc/$BROKER/environ"
  assert "$how: the crl-sync --exec child's environ holds no PIN" no_pin_in "$T/exec-$how.env"
  assert "$how: crl-sync's own environ holds no PIN" no_pin_in "$T/parent-$how.env"
  # Children never get the variable; mqpkid and crl-sync keep at most its emptied name.
  assert "$how: the children were not given MQPKI_PIN" bash -c "! cat '/proc/$BROKER/environ' \
    '$T/exec-$how.env' | tr '\\0' '\\n' | grep -q '^MQPKI_PIN='"
  assert "$how: mqpkid and crl-sync hold no MQPKI_PIN value" bash -c "! cat \
    '/proc/$MQPKID_PID/environ' '$T/parent-$how.env' | tr '\\0' '\\n' | grep -q '^MQPKI_PIN=.'"
  stop_pid "$MQPKID_PID"
  stop_pid "$BROKER"
}

pin_round pin-file MQPKI_UNUSED=1
# MQPKI_PIN alone: the PIN file is moved away, so only the variable can open the token.
mv "$H/secrets/pin" "$T/pin.away"
pin_round env MQPKI_PIN="$pin"
mv "$T/pin.away" "$H/secrets/pin"

# ---- --out never renames over what it did not create (item 11) ---------------------------------
# A character device: a private one first (mknod needs root and CAP_MKNOD); /dev/null itself only
# once the private one survived, and put back should it ever be replaced.
if mknod "$T/null" c 1 3 2>/dev/null; then
  check "ca export --out a character device" mqpki ca export --out "$T/null"
  check "crl --out a character device" mqpki crl --der --out "$T/null"
  assert "the device is still a character device" test -c "$T/null" -a ! -L "$T/null"
  if [ -c "$T/null" ] && [ "$(id -u)" = 0 ]; then
    check "ca export --out /dev/null" mqpki ca export --out /dev/null
    check "issue --out /dev/null" mqpki issue --asset dev1 --csr "$T/dev1.csr" --out /dev/null
    if [ -c /dev/null ]; then ok "/dev/null is still a character device"; else
      not_ok "/dev/null was replaced: restoring it"
      rm -f /dev/null && mknod -m 666 /dev/null c 1 3
    fi
  fi
else
  echo "# skipped: cannot mknod (not root); /dev/null left untested, FIFOs below"
fi

mkfifo "$T/pipe"
timeout 15 cat "$T/pipe" >"$T/pipe.out" &
reader=$!
PIDS+=("$reader")
check "ca export --out a FIFO (with its reader)" timeout 10 mqpki ca export --out "$T/pipe"
wait "$reader" || true
assert "the FIFO is still a FIFO" test -p "$T/pipe"
assert "its reader got the chain" same "$T/pipe.out" "$T/chain.pem"

echo old >"$T/target.pem"
ln -s target.pem "$T/link.pem"
check "ca export --out a link to a regular file" mqpki ca export --out "$T/link.pem"
assert "the link is still a link to target.pem" test "$(readlink "$T/link.pem")" = target.pem
assert "its target holds the chain" same "$T/target.pem" "$T/chain.pem"
assert "its target is 0644" test "$(stat -c %a "$T/target.pem")" = 644
ln -s nowhere.pem "$T/dangling.pem"
expect_fail 1 "a link to nothing is refused" mqpki ca export --out "$T/dangling.pem"
assert "and left as it was, nothing created" \
  bash -c "test -L '$T/dangling.pem' && test ! -e '$T/nowhere.pem'"
expect_fail 1 "a directory is refused" mqpki ca export --out "$T"

mqpki ca export --out - >"$T/dash.out" 2>"$T/err" && st=0 || st=$?
assert "ca export --out - writes to stdout (exit $st)" same "$T/dash.out" "$T/chain.pem"
assert "and creates no file named '-'" test ! -e ./-

echo old >"$T/regular.pem"
chmod 600 "$T/regular.pem"
ino=$(stat -c %i "$T/regular.pem")
check "ca export --out a regular file" mqpki ca export --out "$T/regular.pem"
assert "it holds the chain" same "$T/regular.pem" "$T/chain.pem"
assert "it is 0644 ($(stat -c %a "$T/regular.pem"))" test "$(stat -c %a "$T/regular.pem")" = 644
assert "it was replaced by rename, not rewritten in place" \
  test "$(stat -c %i "$T/regular.pem")" != "$ino"
assert "no temporary file is left beside it" \
  bash -c "! ls '$T' | grep -q 'regular.pem.tmp'"

# ---- outputs checked before signing, cert get, inputs that are not files (item 10) --------------
before=$(ncerts)
expect_fail 1 "issue --out into a missing directory" mqpki issue --asset dev1 \
  --csr "$T/dev1.csr" --out "$T/missing/x.pem"
assert "it names the missing directory" contains "$T/err" "$T/missing"
assert "and issued nothing ($before certificates before, $(ncerts) after)" \
  test "$(ncerts)" = "$before"
expect_fail 1 "issue --out a directory" mqpki issue --asset dev1 --csr "$T/dev1.csr" --out "$T"
assert "nothing issued either" test "$(ncerts)" = "$before"

mkfifo "$T/csr.fifo"
expect_fail 1 "a FIFO as --csr is refused, not waited on" timeout 10 mqpki issue \
  --asset dev1 --csr "$T/csr.fifo"
assert "the refusal says what it is" contains "$T/err" "FIFO"
expect_fail 1 "a device as --csr is refused" timeout 10 mqpki issue --asset dev1 --csr /dev/zero

check "issue --out FILE" mqpki issue --asset dev1 --csr "$T/dev1.csr" --out "$T/dev1.pem"
s=$(serial_of "$T/dev1.pem")
check "cert get --serial" mqpki cert get --serial "$s"
assert "prints the recorded certificate" same "$T/out" "$T/dev1.pem"
lower=$(echo "$s" | tr 'A-F' 'a-f' | sed 's/../&:/g; s/:$//')
check "cert get --serial in lower case with colons --out FILE" mqpki cert get --serial "$lower" \
  --out "$T/got.pem"
assert "writes the same certificate" same "$T/got.pem" "$T/dev1.pem"
check "revoke it" mqpki revoke --serial "$s"
check "cert get of a revoked certificate" mqpki cert get --serial "$s" --out -
assert "still prints it" same "$T/out" "$T/dev1.pem"
expect_fail 1 "cert get of an unknown serial" mqpki cert get --serial 0A0B0C
expect_fail 1 "cert get without --serial" mqpki cert get
check "cert get --help" mqpki cert get --help
assert "the help names --serial and --out" bash -c "grep -q -- --serial '$T/out' && \
  grep -q -- --out '$T/out'"

# crl-sync: '-' is refused (stdout carries progress), a missing directory before connecting.
expect_fail 1 "crl-sync --out - is refused" mqpki crl-sync --broker "mqtts://127.0.0.1:$P" \
  --out - --once --timeout 2s
expect_fail 1 "crl-sync --out into a missing directory" mqpki crl-sync \
  --broker "mqtts://127.0.0.1:$P" --out "$T/missing/crl.pem" --once --timeout 2s

# ---- killed runs leave no temporary files --------------------------------------------------
# A real one: mqpki killed right after writing a temporary file in crl/, before its rename.
check "revoke a second certificate" bash -c "mqpki issue --asset dev1 --csr '$T/dev1.csr' \
  --out '$T/dev1b.pem' && mqpki revoke --serial \$(openssl x509 -in '$T/dev1b.pem' -noout \
  -serial | cut -d= -f2)"
strace -f -o /dev/null -e trace=fsync -e inject=fsync:signal=KILL:when=1 \
  mqpki crl publish >/dev/null 2>&1 || true
killed=$(find "$H" -name '*.tmp.[0-9]*' -type f | grep -v '/hsm/tokens' | wc -l)
assert "the killed run left a temporary file ($killed)" test "$killed" -ge 1
# Made-up ones of dead pids (above any pid_max) in every directory swept, one of a live pid.
for f in crl/issuing.crl ca/chain.pem tls/mqpkid.pem secrets/pin brokers/b1/broker.pem \
         brokers/b1/state/full.der mqpki.conf hsm/softhsm2.conf; do
  echo junk >"$H/$f.tmp.999999999"
done
echo live >"$H/crl/issuing.crl.tmp.$$"
check "the next command runs" mqpki cert list
left=$(find "$H" -name '*.tmp.[0-9]*' -type f | grep -v '/hsm/tokens' | sort)
assert "only the live process's temporary file is left: $(echo $left)" \
  test "$left" = "$H/crl/issuing.crl.tmp.$$"
rm -f "$H/crl/issuing.crl.tmp.$$"
check "the publication the kill left open is finished" mqpki crl publish

# ---- a full disk names its directory -----------------------------------------------------------
expect_fail 2 "store full at commit (ENOSPC at fdatasync)" strace -f -o /dev/null \
  -e trace=fdatasync -e inject=fdatasync:error=ENOSPC mqpki asset add dev9 --kind device
assert "says no space left on the device holding the data directory" \
  contains "$T/err" "no space left on the device holding $H"
expect_fail 2 "store full while growing (ENOSPC at pwrite)" strace -f -o /dev/null \
  -e trace=pwrite64 -e inject=pwrite64:error=ENOSPC mqpki asset add dev9 --kind device
assert "says the same" contains "$T/err" "no space left on the device holding $H"
expect_fail 2 "--out on a full disk (ENOSPC at fsync)" strace -f -o /dev/null -e trace=fsync \
  -e inject=fsync:error=ENOSPC mqpki ca export --out "$T/full.pem"
assert "names the output's directory" contains "$T/err" "no space left on the device holding $T"

# ---- a --home SoftHSM cannot be pointed at ------------------------------------------------------
for name in 'a#b' 'a=b' "$(printf 'a\nb')"; do
  expect_fail 1 "init in --home $(printf %q "$name") is refused" \
    mqpki --home "$T/homes/$name" init
  assert "nothing is left behind" test ! -e "$T/homes"
done
mkdir "$T/x#y"
ln -s "$T/x#y" "$T/plain"
expect_fail 1 "init through a link to such a directory is refused" mqpki --home "$T/plain/ca" init
assert "nothing is left behind there" test -z "$(ls -A "$T/x#y")"
finish
