#!/usr/bin/env bash
# 08-backup: `mqpki backup` while mqpkid runs 100 enrollments, `mqpki restore` into a directory
# on another path: every certificate issued before the backup began is there (and nothing the
# original does not know), audit verify passes, mqpkid starts on it, and its next CRL number is
# above every one the original published. A tampered, hostile or misplaced restore is refused.
. "$(dirname "$0")/lib.sh"

H=$MQPKI_HOME
R=$T/elsewhere/restored
N=100

check "mqpki init" init_ca
check "start mqpkid" start_mqpkid
for i in $(seq 1 $N); do mqpki asset add "d$i" --kind device >/dev/null; done
for i in $(seq 1 $N); do mqpki token create "d$i" >"$T/tok$i"; done
for i in $(seq 1 $N); do est_csr "d$i"; done
assert "$N assets with tokens" test "$(ls "$T"/tok* | wc -l)" = $N

# The enrollments run in the background; the backup is taken in the middle of them.
(
  for i in $(seq 1 $N); do
    [ "$(est_enroll "d$i" "$(cat "$T/tok$i")" "d$i")" = 200 ] && echo "d$i" >>"$T/enrolled"
  done
) &
ENROLL=$!
PIDS+=("$ENROLL")
check "enrollments under way" wait_for 60 bash -c "[ -s '$T/enrolled' ] && [ \$(wc -l <'$T/enrolled') -ge 20 ]"
cp "$T/enrolled" "$T/before"
check "backup while enrollments run" mqpki backup --out "$T/backup.tar"
wait "$ENROLL"
assert "all $N enrollments succeeded" test "$(wc -l <"$T/enrolled")" = $N
assert "the backup file is 0600" test "$(stat -c %a "$T/backup.tar")" = 600
assert "backup.last_at recorded" bash -c "sqlite3 '$H/mqpki.db' \
  \"SELECT value FROM meta WHERE key = 'backup.last_at'\" | grep -Eq '^[0-9-]{10}T[0-9:]{8}Z$'"
tar -tf "$T/backup.tar" >"$T/members"
assert "the archive ends with its manifest" test "$(tail -1 "$T/members")" = MANIFEST
assert "the PIN is not in the archive" bash -c "! grep -q '^secrets/' '$T/members'"
assert "the token's objects are" grep -q '^hsm/tokens.good/.*/token.object$' "$T/members"

# The original goes on: revocations publish CRLs the backup does not know of.
check "revoke d1 after the backup" mqpki revoke --asset d1 --reason superseded
check "publish a full CRL after the backup" mqpki crl publish
old=$(mqpki crl --json | jq '[.full.number, (.delta.number // 0)] | max')

# Restore elsewhere; the PIN comes from the environment (it is not in the backup).
mkdir -p "$T/elsewhere"
expect_fail 1 "restore without the PIN" mqpki restore "$T/backup.tar" --home "$R"
assert "... leaves nothing behind" bash -c "[ ! -e '$R' ] && [ -z \"\$(ls -A '$T/elsewhere')\" ]"
expect_fail 1 "restore over a live data directory" env MQPKI_PIN="$(cat "$H/secrets/pin")" \
  mqpki restore "$T/backup.tar" --home "$H"
check "restore into a new directory" env MQPKI_PIN="$(cat "$H/secrets/pin")" \
  mqpki restore "$T/backup.tar" --home "$R"
cp "$T/out" "$T/restore.out"
assert "restore ran the token self-test" grep -q "self-test" "$T/restore.out"
assert "the restored directory keeps the PIN it was given" test -s "$R/secrets/pin"

mqpki --home "$R" cert list --json | jq -r '.[].asset' | sort -u >"$T/restored-assets"
missing=0
while read -r d; do grep -qx "$d" "$T/restored-assets" || missing=$((missing + 1)); done <"$T/before"
assert "every certificate issued before the backup is restored ($(wc -l <"$T/before") of them)" \
  test "$missing" = 0
mqpki cert list --json | jq -r '.[].serial' | sort >"$T/orig-serials"
mqpki --home "$R" cert list --json | jq -r '.[].serial' | sort >"$T/rest-serials"
assert "the restored store knows no certificate the original does not" \
  test -z "$(comm -13 "$T/orig-serials" "$T/rest-serials")"
check "audit verify on the restored directory" mqpki --home "$R" audit verify
assert "drill.last_at recorded in the restored store" bash -c "sqlite3 '$R/mqpki.db' \
  \"SELECT value FROM meta WHERE key = 'drill.last_at'\" | grep -q Z"

stop_pid "$MQPKID_PID"
check "mqpkid starts on the restored directory" start_mqpkid --home "$R"
check "it serves /cacerts" curl -sSf --cacert "$T/chain.pem" -o /dev/null \
  "$MQPKID_URL/.well-known/est/cacerts"
token=$(mqpki --home "$R" token create "d$N")
est_csr again
assert "the restored CA enrolls" test "$(est_enroll "d$N" "$token" again)" = 200
check "the restored CA publishes a full CRL" mqpki --home "$R" crl publish
new=$(mqpki --home "$R" crl --json | jq '.full.number')
assert "its CRL number $new is above the original's $old" test "$new" -gt "$old"
stop_pid "$MQPKID_PID"

# With --include-secrets the PIN travels in the archive: no MQPKI_PIN needed.
check "backup --include-secrets" mqpki backup --out "$T/with-pin.tar" --include-secrets
assert "... holds the PIN" bash -c "tar -tf '$T/with-pin.tar' | grep -qx secrets/pin"
check "restore of it without MQPKI_PIN" mqpki restore "$T/with-pin.tar" --home "$T/with-pin"
expect_fail 1 "restore refuses a non-empty directory" mqpki restore "$T/with-pin.tar" \
  --home "$T/with-pin"

# A directory run on MQPKI_PIN alone (no secrets/pin) is restored as one: no PIN file appears.
E=$T/env-only
PIN_E=env-only-pin-1234
check "init with MQPKI_PIN only" env MQPKI_PIN=$PIN_E mqpki --home "$E" init
check "backup of it" env MQPKI_PIN=$PIN_E mqpki --home "$E" backup --out "$T/env-only.tar"
expect_fail 1 "its restore without MQPKI_PIN says to set it" mqpki restore "$T/env-only.tar" \
  --home "$T/env-restored"
assert "... naming MQPKI_PIN: $(cat "$T/err")" grep -q MQPKI_PIN "$T/err"
check "its restore with MQPKI_PIN" env MQPKI_PIN=$PIN_E mqpki restore "$T/env-only.tar" \
  --home "$T/env-restored"
assert "... writes no PIN file" test ! -e "$T/env-restored/secrets/pin"
check "... and the restored CA signs with MQPKI_PIN" env MQPKI_PIN=$PIN_E \
  mqpki --home "$T/env-restored" crl publish

# Hostile archives: a byte changed, a name escaping the directory, a truncated file.
python3 - "$T/backup.tar" "$T" <<'EOF'
import io, sys, tarfile
src, t = sys.argv[1], sys.argv[2]
data = bytearray(open(src, "rb").read())
with tarfile.open(src) as tf:
    m = tf.getmember("ca/chain.pem")
    data[m.offset_data + 10] ^= 1
open(t + "/tampered.tar", "wb").write(data)
with tarfile.open(t + "/escape.tar", "w", format=tarfile.PAX_FORMAT) as tf:
    body = b"x"
    ti = tarfile.TarInfo("../escape")
    ti.size = len(body)
    tf.addfile(ti, io.BytesIO(body))
open(t + "/truncated.tar", "wb").write(bytes(data[: len(data) // 2]))
EOF
for f in tampered escape truncated; do
  expect_fail 1 "restore of the $f archive" env MQPKI_PIN=x mqpki restore "$T/$f.tar" --home "$T/$f"
  assert "... leaves no $f directory" test ! -e "$T/$f"
done
assert "nothing escaped" test ! -e "$T/escape"

finish
