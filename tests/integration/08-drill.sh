#!/usr/bin/env bash
# 08-drill: `make drill` (scripts/drill.sh) passes: backup, loss of the CA host, restore on
# another path, campaign, old certificates revoked; it reports every phase's time.
. "$(dirname "$0")/lib.sh"

check "the recovery drill passes" env MQPKI_BUILD="$MQPKI_BUILD" MQPKI_DRILL_DIR="$T/drill" \
  bash "$MQPKI_SOURCE/scripts/drill.sh"
cp "$T/out" "$T/drill.out"
assert "it says so" contains "$T/drill.out" "drill passed: 5 devices back in service"
for p in "online backup" "restore on site-b" "campaign: every device renews" \
  "old certificates revoked"; do
  assert "it times the phase '$p'" grep -Eq "^$p +[0-9.]+ s$" "$T/drill.out"
done
assert "the restored store records the drill" bash -c "sqlite3 '$T/drill/site-b/pki/mqpki.db' \
  \"SELECT value FROM meta WHERE key = 'drill.last_at'\" | grep -q Z"

finish
