#!/usr/bin/env bash
# 10-tidy: retention. `mqpki tidy` removes certificates expired longer than
# [retention] expired_cert_days and tokens dead longer than token_days, in one audited step; the
# store shrinks (an older store is switched to incremental vacuum once), `audit verify` passes,
# and the CRLs are unchanged.
. "$(dirname "$0")/lib.sh"

H=$MQPKI_HOME
DB=$H/mqpki.db
check "mqpki init" init_ca
assert "a new store uses incremental vacuum" test "$(sqlite3 "$DB" 'PRAGMA auto_vacuum')" = 2
for d in d1 d2 d3; do
  mqpki asset add "$d" --kind device >/dev/null
  make_csr "$d"
  mqpki issue --asset "$d" --csr "$T/$d.csr" --out "$T/$d.pem" >/dev/null
done
check "revoke d1" mqpki revoke --asset d1
mqpki token create d3 >/dev/null
check "revoke d3's token" mqpki token revoke --asset d3
mqpki token create d2 >/dev/null

# A store as older versions made it (no incremental vacuum), then 20,000 certificates that
# expired 200 days ago, one 10 days ago (kept: within 90 days) and a token revoked 100 days ago.
sqlite3 "$DB" "PRAGMA auto_vacuum = NONE; VACUUM;"
assert "an older store's mode" test "$(sqlite3 "$DB" 'PRAGMA auto_vacuum')" = 0
now=$(date +%s)
sqlite3 "$DB" "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
  INSERT INTO certs(serial, asset_id, profile, not_before, not_after, state, key_fp, pem,
  issued_seq) SELECT printf('EE%08X', i), 'd2', 'device', $now - 300 * 86400,
  $now - 200 * 86400, 'valid', printf('%064x', i + 1000), (SELECT pem FROM certs LIMIT 1),
  1000000 + i FROM n;
  INSERT INTO certs(serial, asset_id, profile, not_before, not_after, state, key_fp, pem,
  issued_seq) VALUES ('EF000001', 'd2', 'device', $now - 100 * 86400, $now - 10 * 86400, 'valid',
  printf('%064x', 99), '-', 2000000);
  INSERT INTO certs(serial, asset_id, profile, not_before, not_after, state, key_fp, pem,
  issued_seq, revoked_at, reason) VALUES ('EC000001', 'd2', 'device', $now - 400 * 86400,
  $now - 300 * 86400, 'revoked', printf('%064x', 98), '-', 2000001, $now - 350 * 86400, 1);
  UPDATE tokens SET revoked_at = $now - 100 * 86400 WHERE asset_id = 'd3';"
sqlite3 "$DB" "PRAGMA wal_checkpoint(TRUNCATE)" >/dev/null
cp "$H/crl/issuing.crl" "$T/full-before.crl"
cp "$H/crl/issuing-delta.crl" "$T/delta-before.crl"
crl_before=$(mqpki crl --json | jq -c '[.full.number, .delta.number]')
size_before=$(($(stat -c %s "$DB") + $(stat -c %s "$DB-wal" 2>/dev/null || echo 0)))

check "tidy --dry-run" mqpki tidy --dry-run --json
assert "would remove 20,000 certificates" test "$(jq .certs "$T/out")" = 20000
assert "and one token" test "$(jq .tokens "$T/out")" = 1
assert "a dry run removes nothing" \
  test "$(sqlite3 "$DB" "SELECT COUNT(*) FROM certs WHERE serial LIKE 'EE%'")" = 20000

check "tidy" mqpki tidy --json
cp "$T/out" "$T/tidy.json"
assert "removed 20,000 certificates" test "$(jq .certs "$T/tidy.json")" = 20000
assert "and the dead token" test "$(jq .tokens "$T/tidy.json")" = 1
assert "switched the older store once" test "$(jq .switched_to_incremental "$T/tidy.json")" = true
assert "now incremental" test "$(sqlite3 "$DB" 'PRAGMA auto_vacuum')" = 2
size_after=$(($(stat -c %s "$DB") + $(stat -c %s "$DB-wal" 2>/dev/null || echo 0)))
assert "the store shrank ($size_before -> $size_after bytes)" \
  test "$size_after" -lt $((size_before / 2))
assert "the recently expired certificate stays" \
  test "$(sqlite3 "$DB" "SELECT COUNT(*) FROM certs WHERE serial = 'EF000001'")" = 1
assert "a key-compromise revocation stays (its key is never certified again)" \
  test "$(sqlite3 "$DB" "SELECT COUNT(*) FROM certs WHERE serial = 'EC000001'")" = 1
assert "the live certificates stay" \
  test "$(sqlite3 "$DB" "SELECT COUNT(*) FROM certs WHERE asset_id IN ('d1','d2','d3') \
  AND serial NOT LIKE 'E%'")" = 3
assert "the live token stays" test "$(mqpki token list --json | jq '[.[] | select(.asset ==
  "d2")] | length')" = 1
assert "one audit event with the counts" test "$(sqlite3 "$DB" "SELECT COUNT(*) FROM audit \
  WHERE action = 'store.tidy' AND detail LIKE '%\"certs\":20000%'")" = 1
check "audit verify passes" mqpki audit verify
assert "the full CRL file is unchanged" cmp -s "$H/crl/issuing.crl" "$T/full-before.crl"
assert "the delta CRL file is unchanged" cmp -s "$H/crl/issuing-delta.crl" "$T/delta-before.crl"
assert "no CRL was signed" test "$(mqpki crl --json | jq -c '[.full.number, .delta.number]')" \
  = "$crl_before"
check "d1 is still revoked on the CRL" bash -c "openssl crl -inform DER -in '$H/crl/issuing-delta.crl' \
  -noout -text | grep -q \"\$(openssl x509 -in '$T/d1.pem' -noout -serial | cut -d= -f2)\""

check "tidy again" mqpki tidy
assert "nothing more to remove" contains "$T/out" "removed 0 certificates"
finish
