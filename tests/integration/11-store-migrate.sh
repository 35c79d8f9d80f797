#!/usr/bin/env bash
# 11-store-migrate: `mqpki store migrate` copies an embedded SQLite store (assets, certificates,
# revocations, a hold, tokens, CRLs, audit events and a checkpoint) into PostgreSQL: every
# listing, the audit verification and the CRL state are the same after the copy, mqpkid serves
# the copy and enrolls with a token made before it. A store serving another CA is refused. The
# crash window, by fault injection: killed after the copy's commit and before mqpki.conf is
# renamed into place, the data directory still uses SQLite and a rerun only finishes the switch;
# killed during the copy, nothing is committed and a rerun copies; a copy the SQLite store moved
# on from is refused, and copied again once its database is recreated. `mqpki backup` of the
# migrated directory archives all but the store (its manifest says so), and restoring it writes
# nothing to the server.
. "$(dirname "$0")/lib.sh"

check "a private PostgreSQL server" start_pg
A=$MQPKI_HOME

# A database of the test's server, by name.
db_url() { echo "postgresql:///$1?host=$T/pg&port=$PG_PORT&user=mqpki"; }
new_db() { psql -q "$PG_URL" -c "CREATE DATABASE $1"; }
recreate_db() { psql -q "$PG_URL" -c "DROP DATABASE $1" -c "CREATE DATABASE $1"; }
# rows TABLE DB: its row count ("" when the query fails).
rows() { psql -tA "$(db_url "$2")" -c "SELECT count(*) FROM $1" 2>/dev/null || true; }

# snapshot HOME NAME: what a migration must keep, as sorted JSON in $T/state/NAME/.
snapshot() {
  local h=$1 d=$T/state/$2
  mkdir -p "$d"
  mqpki --home "$h" asset list --json | jq -S . >"$d/assets.json" &&
    mqpki --home "$h" asset show d2 --json | jq -S . >"$d/asset-d2.json" &&
    mqpki --home "$h" cert list --json | jq -S . >"$d/certs.json" &&
    mqpki --home "$h" token list --json | jq -S . >"$d/tokens.json" &&
    mqpki --home "$h" audit verify --json | jq -S . >"$d/audit.json" &&
    mqpki --home "$h" crl --json | jq -S . >"$d/crl.json"
}
same_state() { diff -r "$T/state/$1" "$T/state/$2" >"$T/state.diff"; }
names_store() { # HOME URL: mqpki.conf has one [store] section, whose url is URL
  [ "$(grep -c '^\[store\]' "$1/mqpki.conf")" -eq 1 ] &&
    [ "$(grep '^url = postgresql' "$1/mqpki.conf")" = "url = $2" ]
}
names_no_store() { ! grep -q '^url = postgresql' "$1/mqpki.conf"; }

# crash TRACE SYSCALL:when=N COMMAND...: runs COMMAND under strace, killed with SIGKILL on
# entering that call of SYSCALL; its sendto and rename calls are written to TRACE. Passes when
# the command was killed.
crash() {
  local trace=$1 inject=$2 rc=0
  shift 2
  { strace -f -o "$trace" -s 64 -e trace=sendto,rename -e "inject=$inject:signal=KILL" "$@" \
    >"$T/crash.out" 2>"$T/crash.err"; } 2>>"$T/crash.err" || rc=$?
  [ "$rc" -eq 137 ] || { echo "# exit $rc"; sed 's/^/#   /' "$T/crash.err" | head -5; return 1; }
}

# --- an SQLite store with some history -----------------------------------------------------------
check "mqpki init (embedded SQLite store)" init_ca
assert "mqpki.conf names no store" names_no_store "$A"
for id in d1 d2 d3 d4 d5; do mqpki asset add "$id" --kind device >/dev/null; done
check "asset add gw1 (broker)" mqpki asset add gw1 --kind broker
check "asset set d1 (tags, firmware)" mqpki asset set d1 --firmware 1.2.3 --tag site=plant7
for id in d1 d2 d3; do make_csr "$id"; done
make_csr gw1
check "issue d1" mqpki issue --asset d1 --csr "$T/d1.csr" --out "$T/d1.pem"
check "issue d2" mqpki issue --asset d2 --csr "$T/d2.csr" --out "$T/d2.pem"
check "issue d3" mqpki issue --asset d3 --csr "$T/d3.csr" --out "$T/d3.pem"
check "issue gw1 (broker profile)" mqpki issue --asset gw1 --csr "$T/gw1.csr" --out "$T/gw1.pem"
check "revoke d2 (key compromise)" mqpki revoke --asset d2 --reason key-compromise
serial3=$(openssl x509 -in "$T/d3.pem" -noout -serial | cut -d= -f2)
check "hold d3's certificate" mqpki revoke --serial "$serial3" --reason hold
check "crl publish" mqpki crl publish
check "audit checkpoint" mqpki audit checkpoint
token=$(mqpki token create d4)
assert "a token for d4, made before the migration" test -n "$token"
check "a second token for d5, revoked" mqpki token create d5
check "token revoke --asset d5" mqpki token revoke --asset d5
check "the SQLite store verifies" mqpki audit verify
check "snapshot before the migration" snapshot "$A" before
assert "... with revoked and held certificates" test \
  "$(jq '[.[] | select(.state == "revoked")] | length' "$T/state/before/certs.json")" -ge 2
# Copies of the data directory (the same CA and store) for the crash and refusal cases below.
for c in c1 c2 c3; do cp -a "$A" "$T/$c"; done

# --- the migration -------------------------------------------------------------------------------
check "store migrate --to postgresql://" mqpki store migrate --to "$PG_URL"
assert "it says the store was migrated" contains "$T/out" "store migrated"
assert "mqpki.conf names the store, in one [store] section" names_store "$A" "$PG_URL"
assert "mqpki.conf is still 0600" test "$(stat -c %a "$A/mqpki.conf")" = 600
assert "the server holds the audit log" test "$(rows audit mqpki)" -gt 0
check "snapshot after the migration" snapshot "$A" after
assert "asset list, cert list, token list, audit verify and CRL state are the same" \
  same_state before after
sed 's/^/#   /' "$T/state.diff" | head -20
check "mqpki audit verify on PostgreSQL" mqpki audit verify
expect_fail 1 "a second migrate of the migrated directory is refused" \
  mqpki store migrate --to "$PG_URL"

# mqpkid on the copy: the token made before the migration enrolls.
crl_before=$(jq '.full.number' "$T/state/after/crl.json")
check "mqpkid on the migrated store" start_mqpkid
est_csr d4
assert "simpleenroll with the pre-migration token: 200" test "$(est_enroll d4 "$token" d4)" = 200
check "the certificate verifies" openssl verify -CAfile "$T/chain.pem" "$T/d4.pem"
assert "d4's certificate is recorded" \
  test "$(mqpki cert list --asset d4 --json | jq length)" -eq 1
est_csr d4b
assert "the token is used up (another CSR: 401)" test "$(est_enroll d4 "$token" d4b)" = 401
check "a new token after the migration" mqpki token create d1
assert "token ids go on above the copied ones" test \
  "$(mqpki token list --json | jq '[.[].id] | (unique | length) == length')" = true
check "revoke d4 through mqpkid" mqpki revoke --asset d4 --reason superseded
assert "CRL numbers go on from the copied counter" \
  test "$(mqpki crl --json | jq '[.full.number, (.delta.number // 0)] | max')" -gt "$crl_before"
check "mqpki audit verify after enrolling on the copy" mqpki audit verify
assert "nothing was written to mqpki.db after the migration" \
  test "$(sqlite3 "$A/mqpki.db" 'SELECT count(*) FROM audit')" -eq \
  "$(jq .events "$T/state/before/audit.json")"
stop_pid "$MQPKID_PID" TERM

# --- a store serving another CA ------------------------------------------------------------------
check "a database for another CA" new_db other
check "another CA on it" mqpki --home "$T/other" --store "$(db_url other)" init
cp "$T/c3/mqpki.conf" "$T/c3.conf"
expect_fail 1 "migrate into a store serving another CA is refused" \
  mqpki --home "$T/c3" store migrate --to "$(db_url other)"
assert "... naming it" contains "$T/err" "another CA's store"
assert "... mqpki.conf unchanged" cmp -s "$T/c3.conf" "$T/c3/mqpki.conf"
check "the other CA's store still verifies" mqpki --home "$T/other" audit verify
assert "... and holds none of this CA's assets" test \
  "$(mqpki --home "$T/other" asset list --json | jq '[.[] | select(.id == "d1")] | length')" -eq 0

# --- killed after the commit, before mqpki.conf is renamed ---------------------------------------
check "a database for c1" new_db c1
cp "$T/c1/mqpki.conf" "$T/c1.conf"
assert "migrate killed on entering the rename of mqpki.conf" \
  crash "$T/c1.trace" rename:when=1 mqpki --home "$T/c1" store migrate --to "$(db_url c1)"
assert "... after the copy's COMMIT" bash -c \
  "grep -E 'sendto|rename' '$T/c1.trace' | tail -n 2 | head -n 1 | grep -q COMMIT"
assert "the server holds the whole audit log" \
  test "$(rows audit c1)" = "$(jq .events "$T/state/before/audit.json")"
assert "mqpki.conf is unchanged (no store named)" cmp -s "$T/c1.conf" "$T/c1/mqpki.conf"
check "SQLite is still served" snapshot "$T/c1" c1-crashed
assert "... with the same state" same_state before c1-crashed
check "the rerun succeeds" mqpki --home "$T/c1" store migrate --to "$(db_url c1)"
assert "... taking the committed copy as done" contains "$T/out" "already held this store's copy"
assert "mqpki.conf names the store" names_store "$T/c1" "$(db_url c1)"
check "snapshot after the rerun" snapshot "$T/c1" c1-after
assert "the data matches the SQLite store's" same_state before c1-after
check "audit verify on the finished copy" mqpki --home "$T/c1" audit verify
assert "the killed run's mqpki.conf.tmp.PID is gone" \
  bash -c "! ls '$T/c1' | grep -q '^mqpki.conf.tmp'"

# --- killed during the copy, before its commit ---------------------------------------------------
# The Nth message sent to the server: the second after the first certificate INSERT was prepared
# (two certificate rows copied), in the killed run above.
n=$(grep sendto "$T/c1.trace" | grep -n 'INSERT INTO certs' | head -n 1 | cut -d: -f1)
check "a database for c2" new_db c2
cp "$T/c2/mqpki.conf" "$T/c2.conf"
assert "migrate killed while copying certificates (message $((n + 2)))" \
  crash "$T/c2.trace" "sendto:when=$((n + 2))" \
  mqpki --home "$T/c2" store migrate --to "$(db_url c2)"
assert "... before any COMMIT of the copy" bash -c \
  "! grep sendto '$T/c2.trace' | sed -n '$n,\$p' | grep -q COMMIT"
assert "nothing was committed (no audit event in the server)" test "$(rows audit c2)" = 0
assert "... no asset" test "$(rows assets c2)" = 0
assert "mqpki.conf is unchanged" cmp -s "$T/c2.conf" "$T/c2/mqpki.conf"
check "the rerun succeeds" mqpki --home "$T/c2" store migrate --to "$(db_url c2)"
assert "... copying (nothing was there)" bash -c "! grep -q 'already held' '$T/out'"
assert "mqpki.conf names the store" names_store "$T/c2" "$(db_url c2)"
check "snapshot after the rerun" snapshot "$T/c2" c2-after
assert "the data matches the SQLite store's" same_state before c2-after

# --- a committed copy the SQLite store moved on from ---------------------------------------------
check "a database for c3" new_db c3
assert "migrate killed after the commit" \
  crash "$T/c3.trace" rename:when=1 mqpki --home "$T/c3" store migrate --to "$(db_url c3)"
check "the SQLite store changes (asset add late)" mqpki --home "$T/c3" asset add late --kind device
expect_fail 1 "the rerun refuses the stale copy" \
  mqpki --home "$T/c3" store migrate --to "$(db_url c3)"
assert "... saying so" contains "$T/err" "an earlier copy of this store"
assert "mqpki.conf is unchanged" cmp -s "$T/c3.conf" "$T/c3/mqpki.conf"
check "the database recreated, as the refusal says" recreate_db c3
check "migrate copies again" mqpki --home "$T/c3" store migrate --to "$(db_url c3)"
assert "mqpki.conf names the store" names_store "$T/c3" "$(db_url c3)"
assert "the copy has the late asset" test "$(psql -tA "$(db_url c3)" \
  -c "SELECT count(*) FROM assets WHERE id = 'late'")" = 1
check "audit verify on it" mqpki --home "$T/c3" audit verify

# --- backup and restore of a directory whose store is the server's ------------------------------
check "mqpki backup of a PostgreSQL directory" \
  mqpki --home "$T/c3" backup --out "$T/c3.tar" --include-secrets
assert "the archive holds no mqpki.db" bash -c "! tar -tf '$T/c3.tar' | grep -q '^mqpki.db$'"
assert "its manifest says why" bash -c "tar -xOf '$T/c3.tar' MANIFEST |
  grep -q 'store: PostgreSQL, not in this archive'"
crl_before=$(psql -tA "$(db_url c3)" -c "SELECT value FROM counters WHERE name = 'crl_number'")
check "restore into a new directory" mqpki restore "$T/c3.tar" --home "$T/c3-restored"
assert "... names the server instead of CRL numbers" \
  contains "$T/out" "store: the PostgreSQL server named in mqpki.conf"
assert "the server's CRL counter is untouched ($crl_before)" test "$(psql -tA "$(db_url c3)" \
  -c "SELECT value FROM counters WHERE name = 'crl_number'")" = "$crl_before"
check "audit verify through the restored directory" mqpki --home "$T/c3-restored" audit verify
finish
