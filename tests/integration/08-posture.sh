#!/usr/bin/env bash
# mqpki check and mqpki report csf: every failing condition that can be set up here is set up,
# seen reported (with its severity and affected object), fixed, and seen cleared. Conditions
# that time or a broker cannot produce on demand are planted in the store with sqlite3.
source "$(dirname "$0")/lib.sh"

DB=$MQPKI_HOME/mqpki.db
init_ca

# check_json [args]: runs mqpki check --json into $T/check.json; the exit status into $T/rc.
check_json() { local rc=0; mqpki check --json "$@" >"$T/check.json" 2>"$T/check.err" || rc=$?
  echo "$rc" >"$T/rc"; }
# status ID: the check's status ("pass", "fail", "n/a").
status() { jq -r --arg id "$1" '.checks[] | select(.id == $id) | .status' "$T/check.json"; }
severity() { jq -r --arg id "$1" '.checks[] | select(.id == $id) | .severity' "$T/check.json"; }
affected() { jq -r --arg id "$1" '.checks[] | select(.id == $id) | .affected[].object' \
  "$T/check.json"; }
rc() { cat "$T/rc"; }
iso() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; }
NOW=$(date +%s)

mqpki asset add dev1 --kind device --model M --serial S1 --firmware 1.0 --location L >/dev/null
mqpki asset add dev2 --kind device --model M --serial S2 --firmware 1.0 --location L >/dev/null
make_csr dev1 && make_csr dev2
mqpki issue --asset dev1 --csr "$T/dev1.csr" --out "$T/dev1.pem" >/dev/null
mqpki issue --asset dev2 --csr "$T/dev2.csr" --out "$T/dev2.pem" >/dev/null
mqpki broker init b1 >/dev/null 2>&1
CONF=$MQPKI_HOME/brokers/b1/mosquitto.conf

# A fresh CA: no backup or drill yet (high), the bundled broker fails open (medium).
check_json
assert "fresh CA: exit 3 (a high check fails)" test "$(rc)" = 3
assert "no backup: backup-age fails, high" \
  test "$(status backup-age)/$(severity backup-age)" = fail/high
assert "no drill: drill-age fails" test "$(status drill-age)" = fail
assert "fail_closed false: broker-fail-open fails naming b1" \
  test "$(status broker-fail-open)/$(affected broker-fail-open)" = fail/b1
assert "detection: n/a until the detection tables exist" test "$(status detection-disabled)" = n/a
for id in ca-expiry ca-key-strength key-strength cert-expiring cert-old shared-key \
  client-id-conflict revoked-connected broker-plugin acl-permissive crl-stale audit-chain; do
  assert "fresh CA: $id passes" test "$(status $id)" = pass
done

# Backups and drills (meta keys written by mqpki backup and the restore drill).
sqlite3 "$DB" "INSERT INTO meta(key, value) VALUES
  ('backup.last_at', '$(iso $((NOW - 10 * 86400)))'),
  ('drill.last_at', '$(iso $((NOW - 100 * 86400)))')"
check_json
assert "backup 10 days old: fails" test "$(status backup-age)" = fail
assert "drill 100 days old: fails" test "$(status drill-age)" = fail
sqlite3 "$DB" "UPDATE meta SET value = '$(iso "$NOW")'
  WHERE key IN ('backup.last_at', 'drill.last_at')"
sed -i 's/^plugin_opt_fail_closed false/plugin_opt_fail_closed true/' "$CONF"
check_json
assert "fresh backup and drill, fail_closed on: exit 0" test "$(rc)" = 0
assert "backup-age passes" test "$(status backup-age)" = pass
assert "drill-age passes" test "$(status drill-age)" = pass
assert "broker-fail-open passes" test "$(status broker-fail-open)" = pass
check "text output runs" mqpki check
assert "text output shows the checks" contains "$T/out" "ok   critical audit-chain"

# A broker without the plugin: critical, exit 3; restored.
cp "$CONF" "$T/conf.good"
sed -i 's/^plugin /#plugin /' "$CONF"
check_json
assert "no plugin: broker-plugin fails, critical, exit 3" \
  test "$(status broker-plugin)/$(severity broker-plugin)/$(rc)" = fail/critical/3
cp "$T/conf.good" "$CONF"

# ACL rules letting devices write into other devices' topics or outside fleet/: high;
# scoped to fleet/%u/: cleared.
printf '# test\n* telemetry/%%u/# write\n* fleet/+/cmd write\n' >"$MQPKI_HOME/brokers/b1/acl.conf"
sed -i "s|^#plugin_opt_acl_file .*|plugin_opt_acl_file $MQPKI_HOME/brokers/b1/acl.conf|" "$CONF"
check_json
assert "'* fleet/+/cmd write': acl-permissive fails, high" \
  test "$(status acl-permissive)/$(severity acl-permissive)" = fail/high
assert "both rules named by line" test "$(affected acl-permissive | tr '\n' ' ')" = "b1:2 b1:3 "
printf '* fleet/%%u/# readwrite\n* alerts/# read\n' >"$MQPKI_HOME/brokers/b1/acl.conf"
check_json
assert "scoped ACL: acl-permissive passes" test "$(status acl-permissive)" = pass

# Conflicting client ids (differ only in case): planted and removed.
mqpki asset add DEV1 --kind device >/dev/null
check_json
assert "dev1 and DEV1: client-id-conflict fails" \
  test "$(status client-id-conflict)/$(affected client-id-conflict)" = fail/dev1
sqlite3 "$DB" "DELETE FROM assets WHERE id = 'DEV1'"
check_json
assert "DEV1 gone: client-id-conflict passes" test "$(status client-id-conflict)" = pass

# One key certified for two assets (a cloned identity), planted in the store: critical.
S1=$(openssl x509 -in "$T/dev1.pem" -noout -serial | cut -d= -f2)
S2=$(openssl x509 -in "$T/dev2.pem" -noout -serial | cut -d= -f2)
FP2=$(sqlite3 "$DB" "SELECT key_fp FROM certs WHERE serial = '$S2'")
sqlite3 "$DB" "UPDATE certs SET key_fp = (SELECT key_fp FROM certs WHERE serial = '$S1')
  WHERE serial = '$S2'"
check_json
assert "shared key: fails, critical, exit 3" \
  test "$(status shared-key)/$(severity shared-key)/$(rc)" = fail/critical/3
sqlite3 "$DB" "UPDATE certs SET key_fp = '$FP2' WHERE serial = '$S2'"
check_json
assert "key restored: shared-key passes" test "$(status shared-key)" = pass

# A certificate expiring within 30 days, then revoked: reported, then cleared.
mqpki asset add dev3 --kind device >/dev/null
make_csr dev3
mqpki issue --asset dev3 --csr "$T/dev3.csr" --days 10 --out "$T/dev3.pem" >/dev/null
S3=$(openssl x509 -in "$T/dev3.pem" -noout -serial | cut -d= -f2)
check_json
assert "10-day certificate: cert-expiring fails naming it" \
  test "$(status cert-expiring)/$(affected cert-expiring)" = "fail/$S3"
check_json --max-age-days 0
assert "--max-age-days 0: cert-old fails" test "$(status cert-old)" = fail
check_json --ca-expiry-days 5000
assert "--ca-expiry-days 5000: ca-expiry fails (10-year root)" test "$(status ca-expiry)" = fail
mqpki revoke --serial "$S3" --reason superseded >/dev/null
check_json
assert "revoked: cert-expiring passes" test "$(status cert-expiring)" = pass

# A revoked certificate whose asset is seen connected after the revocation: critical.
sqlite3 "$DB" "UPDATE assets SET last_seen = $((NOW + 3600)) WHERE id = 'dev3'"
check_json
assert "revoked dev3 seen after revocation: revoked-connected fails" \
  test "$(status revoked-connected)/$(severity revoked-connected)/$(affected revoked-connected)" \
  = "fail/critical/$S3"
sqlite3 "$DB" "UPDATE assets SET last_seen = 0 WHERE id = 'dev3'"
check_json
assert "not seen since: revoked-connected passes" test "$(status revoked-connected)" = pass

# A device key below policy (RSA-1024, refused at issuance; planted as an imported row).
openssl req -x509 -newkey rsa:1024 -nodes -subj /CN=weak -days 30 -keyout "$T/weak.key" \
  -out "$T/weak.pem" 2>/dev/null
sqlite3 "$DB" "INSERT INTO certs(serial, asset_id, profile, not_before, not_after, state, key_fp,
  pem, issued_seq) VALUES ('0BAD', 'dev2', 'device', $NOW, $((NOW + 200 * 86400)), 'valid',
  'weakfp', readfile('$T/weak.pem'), (SELECT MAX(issued_seq) + 1 FROM certs))"
check_json
assert "RSA-1024: key-strength fails, high, naming the serial" \
  test "$(status key-strength)/$(severity key-strength)/$(affected key-strength)" = fail/high/0BAD
sqlite3 "$DB" "DELETE FROM certs WHERE serial = '0BAD'"
check_json
assert "removed: key-strength passes" test "$(status key-strength)" = pass

# A CRL past its nextUpdate: the CA's newest, and one an external broker reports holding.
FULL=$(sqlite3 "$DB" "SELECT MAX(number) FROM crls WHERE kind = 'full' AND state <> 'pending'")
NEXT=$(sqlite3 "$DB" "SELECT next_update FROM crls WHERE number = $FULL")
sqlite3 "$DB" "UPDATE crls SET next_update = $((NOW - 60)) WHERE number = $FULL;
  INSERT INTO broker_crls VALUES ('ext1', $FULL, -1, $NOW)"
check_json
assert "expired CRL: crl-stale fails, high, naming the CA and ext1" \
  test "$(status crl-stale)/$(severity crl-stale)/$(affected crl-stale | sort | tr '\n' ' ')" \
  = "fail/high/CA ext1 "
sqlite3 "$DB" "UPDATE crls SET next_update = $NEXT WHERE number = $FULL"
check_json
assert "restored: crl-stale passes" test "$(status crl-stale)" = pass

# The audit chain edited behind mqpki's back: critical; the edit undone: cleared.
ACTOR=$(sqlite3 "$DB" "SELECT actor FROM audit WHERE seq = 3")
sqlite3 "$DB" "UPDATE audit SET actor = 'mallory' WHERE seq = 3"
check_json
assert "edited audit: audit-chain fails, critical, exit 3" \
  test "$(status audit-chain)/$(severity audit-chain)/$(rc)" = fail/critical/3
sqlite3 "$DB" "UPDATE audit SET actor = '$ACTOR' WHERE seq = 3"
check_json
assert "all fixed: exit 0" test "$(rc)" = 0

# The CSF report: every function, states from the same facts, HTML self-contained.
check "report csf --format json" mqpki report csf --format json --out "$T/csf.json"
assert "json: five functions Identify..Recover" test \
  "$(jq -r '[.functions[].name] | join(",")' "$T/csf.json")" = \
  Identify,Protect,Detect,Respond,Recover
assert "json: RC.RP-01 met after a fresh drill (OASIS id RC.RP-1)" test \
  "$(jq -r '.subcategories[] | select(.id == "RC.RP-01") | .state + " " + .oasis[0]' \
  "$T/csf.json")" = "met RC.RP-1"
assert "json: DE.AE-02 not met: detection not in this build" test \
  "$(jq -r '.subcategories[] | select(.id == "DE.AE-02") | .state' "$T/csf.json")" = "not met"
sqlite3 "$DB" "DELETE FROM meta WHERE key = 'drill.last_at'"
mqpki report csf --format json >"$T/csf2.json"
assert "json: no drill: RC.RP-01 not met, evidence says never" test \
  "$(jq -r '.subcategories[] | select(.id == "RC.RP-01") | .state + ": " + .evidence' \
  "$T/csf2.json" | cut -d'(' -f1)" = "not met: last restore drill: never "
check "report csf --format html --out" mqpki report csf --format html --out "$T/csf.html"
assert "html: one line per function printed" test "$(grep -c ': tier ' "$T/out")" = 5
assert "html: self-contained (no script, link, src or url())" \
  bash -c "! grep -Eqi '<script|<link|src=|url\\(' '$T/csf.html'"
assert "html: lists every function" bash -c \
  "for f in Identify Protect Detect Respond Recover; do
     grep -q \"<h2>\$f</h2>\" '$T/csf.html' || exit 1; done"
check "report csf (text)" mqpki report csf
assert "text: PR.AA-01 with its OASIS id" contains "$T/out" "PR.AA-01 .*OASIS: PR.AC-1"
expect_fail 1 "report csf --format pdf refused" mqpki report csf --format pdf
expect_fail 1 "check --expiry-days x refused" mqpki check --expiry-days x
finish
