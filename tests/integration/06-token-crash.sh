#!/usr/bin/env bash
# 06-token-crash: SoftHSM's file store rewrites token.object in place on every login (ftruncate,
# then write, no fsync) and writes new object files when a key is generated. This test kills
# real processes (strace -e inject=SYSCALL:signal=KILL:when=N) at each of those writes, for
# write, ftruncate and openat, in `mqpki issue`, `mqpki token create`, mqpkid's start-up and the
# device library's pkcs11 store during key generation; after EVERY kill the next command must
# work and its certificate verify against the CA chain. Then token.object is damaged by hand
# (empty, half) and the next command must restore it. The N values are found by tracing the
# same command first, so they hit the token writes whatever else the command does.
. "$(dirname "$0")/lib.sh"

if ! command -v strace >/dev/null || ! strace -f -o /dev/null -e inject=getpid:error=EPERM:when=1 \
  true 2>/dev/null; then
  # Without fault injection this test proves nothing: fail rather than pass silently.
  not_ok "strace with syscall injection is available (scripts/install-deps.sh installs strace)"
  finish
  exit 1
fi

H=$MQPKI_HOME
check "mqpki init" init_ca
TOKENS=$H/hsm/tokens
assert "init left a good copy of the token" \
  bash -c "ls '$H'/hsm/tokens.good/*/token.object >/dev/null 2>&1"
check "asset add dev" mqpki asset add dev --kind device

# issue_ok: a fresh CSR for asset dev, issued, and the certificate verifies against the chain.
# What the commands say (the guard's repairs among it) goes to $T/after.log.
n_issued=0
issue_ok() {
  n_issued=$((n_issued + 1))
  local name=ok$n_issued
  make_csr "$name" &&
    mqpki issue --asset dev --csr "$T/$name.csr" --out "$T/$name.pem" 2>>"$T/after.log" &&
    openssl verify -CAfile "$T/chain.pem" "$T/$name.pem" >/dev/null
}

# hits_of TRACE SYSCALL DIRS: the invocation numbers (per thread, as strace counts them, in the
# first thread of the trace) of SYSCALL calls that change a file under one of DIRS ('|'
# separated): writes, truncations, opens for writing. The first four (C_Initialize's generation
# and the login's token.object rewrite) are always taken; a longer run (SoftHSM rewrites a new
# object file once per attribute while it generates a key) is sampled at SAMPLE points up to its
# last; the calls just before the first and after the last are added.
SAMPLE=${TOKEN_CRASH_SAMPLE:-8}
hits_of() {
  awk -v sys="$2" -v dirs="$3" -v sample="$SAMPLE" '
    BEGIN { nd = split(dirs, d, "|") }
    NR == 1 { main = $1 }
    $1 == main && index($2, sys "(") == 1 {
      n++
      if (sys == "openat" && $0 !~ /O_RDWR|O_WRONLY|O_CREAT/) next
      for (j = 1; j <= nd; j++) if (index($0, d[j])) { l[++m] = n; break }
    }
    END {
      if (m == 0) exit
      for (k = 1; k <= 4 && k <= m; k++)
        hit[l[k]] = 1
      for (k = 0; k < sample && k < m; k++)
        hit[l[1 + int(k * (m - 1) / (sample > 1 ? sample - 1 : 1))]] = 1
      hit[l[m]] = 1
      if (l[1] > 1) hit[l[1] - 1] = 1
      hit[l[m] + 1] = 1
      for (i in hit) print i
    }' "$1" | sort -n | tr '\n' ' '
}

# token_hits SYSCALL DIRS CMD...: traces CMD once and prints hits_of for it.
token_hits() {
  local sys=$1 dirs=$2; shift 2
  strace -f -qq -y -o "$T/trace.out" -e trace="$sys" "$@" >/dev/null 2>&1 || true
  hits_of "$T/trace.out" "$sys" "$dirs"
}

# kill_at SYSCALL N CMD...: runs CMD killed (SIGKILL) at its Nth SYSCALL; 0 if it was killed.
kill_at() {
  local sys=$1 n=$2; shift 2
  local rc=0
  # Braces with their own stderr: bash's "Killed" notice goes there, not into the test log.
  { strace -f -qq -o /dev/null -e trace="$sys" -e inject="$sys":signal=KILL:when="$n" "$@" \
    >/dev/null 2>&1; } 2>/dev/null || rc=$?
  [ "$rc" -eq 137 ]
}

kills=0
survived_all=1
# crash_cmd LABEL CMD...: for write, ftruncate and openat, kills CMD at every token write found
# by token_hits and checks after each kill that issue_ok works.
crash_cmd() {
  local label=$1 sys n hits killed; shift
  for sys in write ftruncate openat; do
    hits=$(token_hits "$sys" "$TOKENS|$TOKENS.good" "$@")
    # A command that never writes the token (token create today) is killed early instead.
    [ -n "$hits" ] || hits="1 2"
    killed=0
    for n in $hits; do
      if kill_at "$sys" "$n" "$@"; then killed=$((killed + 1)); fi
      if ! issue_ok; then
        not_ok "$label: issue after a kill at $sys #$n"
        survived_all=0
        ls -la "$TOKENS"/* | sed 's/^/#   /'
        return
      fi
    done
    kills=$((kills + killed))
    ok "$label: killed $killed time(s) at $sys #{${hits% }}; issue works after each"
  done
}

make_csr victim
crash_cmd "mqpki issue" mqpki issue --asset dev --csr "$T/victim.csr" --out "$T/victim.pem"
crash_cmd "mqpki token create" mqpki token create dev

# mqpkid's start-up: it is a server, so each run either dies at N (returns 0) or is stopped
# once it listens (returns 1).
daemon_run() {
  local sys=$1 n=$2 log=$T/d.log pid child i rc=0
  # In a subshell with its own stderr: bash's "Killed" notice goes there, not into the test log.
  if [ "$n" = trace ]; then
    (strace -f -qq -y -o "$T/trace.out" -e trace="$sys" mqpkid --listen 127.0.0.1:0 2>"$log"
      exit $?) 2>/dev/null &
  else
    (strace -f -qq -o /dev/null -e trace="$sys" -e inject="$sys":signal=KILL:when="$n" \
      mqpkid --listen 127.0.0.1:0 2>"$log"
      exit $?) 2>/dev/null &
  fi
  pid=$!
  for i in $(seq 1 100); do
    grep -q "listening on" "$log" 2>/dev/null && break
    alive "$pid" || break
    sleep 0.05
  done
  # strace detaches on SIGTERM, so the daemon (subshell -> strace -> mqpkid) is stopped by pid.
  child=$(pgrep -P "$pid" || true)
  [ -n "$child" ] && child=$(pgrep -P "$child" || true)
  [ -n "$child" ] && kill "$child" 2>/dev/null
  wait "$pid" 2>/dev/null || rc=$?
  cat "$log" >>"$T/after.log"
  [ "$rc" -eq 137 ]
}
for sys in write ftruncate openat; do
  daemon_run "$sys" trace || true
  hits=$(hits_of "$T/trace.out" "$sys" "$TOKENS|$TOKENS.good")
  [ -n "$hits" ] || { not_ok "mqpkid start-up: no token $sys found"; continue; }
  bad=""
  killed=0
  for n in $hits; do
    if daemon_run "$sys" "$n"; then killed=$((killed + 1)); fi
    issue_ok || bad="$bad $n"
  done
  kills=$((kills + killed))
  assert "mqpkid start-up killed $killed time(s) at $sys #{${hits% }}: issue works after each\
${bad:+ (failed:$bad)}" test -z "$bad"
done
MQPKID_PID=""
check "mqpkid starts after all that" start_mqpkid
[ -n "$MQPKID_PID" ] && stop_pid "$MQPKID_PID"

# By hand: token.object emptied, then cut in half; the next command restores it.
tobj=$(ls "$TOKENS"/*/token.object)
size=$(stat -c %s "$tobj")
: >"$tobj"
check "issue after token.object was emptied" issue_ok
assert "token.object restored ($size bytes)" test "$(stat -c %s "$tobj")" -eq "$size"
truncate -s $((size / 2)) "$tobj"
check "issue after token.object was cut to $((size / 2)) bytes" issue_ok
assert "token.object restored again" test "$(stat -c %s "$tobj")" -eq "$size"
assert "the repairs are logged" contains "$T/after.log" "was damaged (truncated at offset"

# The guard's own crash: killed while it restores (its atomic write), the next run restores.
: >"$tobj"
for n in 1 2 3; do kill_at write "$n" mqpki crl || true; done
check "issue after the restore itself was killed" issue_ok
assert "token.object whole after a killed restore" test "$(stat -c %s "$tobj")" -eq "$size"

# --- the device library's pkcs11 store, killed during key generation (renewal) ---
if [ -x "$MQPKI_BUILD/bin/mqpki-device" ]; then
  check "start mqpkid" start_mqpkid
  mkdir -p "$T/softhsm/tokens"
  printf 'directories.tokendir = %s\nobjectstore.backend = file\n' "$T/softhsm/tokens" \
    >"$T/softhsm/softhsm2.conf"
  export SOFTHSM2_CONF=$T/softhsm/softhsm2.conf
  check "SoftHSM token for the device" softhsm2-util --init-token --free --label device \
    --pin 1234 --so-pin 1234
  D=$T/dev-p11
  mkdir -m 700 "$D"
  (umask 077 && echo 1234 >"$D/pin")
  check "asset add d1" mqpki asset add d1 --kind device
  check "enroll d1 (pkcs11 store)" env MQPKI_DEVICE_TOKEN="$(mqpki token create d1)" \
    mqpki-device --dir "$D" enroll --server "${MQPKID_URL:-https://localhost:1}" \
    --ca "$T/chain.pem" --asset d1 --store pkcs11:/usr/lib/softhsm/libsofthsm2.so
  assert "the device token has good copies" test -d "$D/softhsm.good"
  dev_ok() {
    mqpki-device --dir "$D" renew --force >/dev/null 2>>"$T/after.log" &&
      openssl verify -CAfile "$T/chain.pem" "$D/cert.pem" >/dev/null
  }
  for sys in write ftruncate openat; do
    hits=$(token_hits "$sys" "$T/softhsm/tokens|$D/softhsm.good" mqpki-device --dir "$D" renew \
      --force)
    [ -n "$hits" ] || { not_ok "device renew: no token $sys found"; continue; }
    bad=""
    killed=0
    for n in $hits; do
      if kill_at "$sys" "$n" mqpki-device --dir "$D" renew --force; then
        killed=$((killed + 1))
      fi
      dev_ok || bad="$bad $n"
    done
    kills=$((kills + killed))
    assert "device renew killed $killed time(s) at $sys #{${hits% }}: renewal works after each\
${bad:+ (failed:$bad)}" test -z "$bad"
  done
  check "device identity loads" mqpki-device --dir "$D" status
  stop_pid "$MQPKID_PID"
fi

repairs=$(grep -c "restored from" "$T/after.log" || true)
assert "$kills kills in all, every one survived ($repairs repair(s) by the guard logged)" \
  test "$survived_all" -eq 1 -a "$kills" -gt 10 -a "$repairs" -gt 0
finish
