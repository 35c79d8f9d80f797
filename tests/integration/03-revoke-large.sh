#!/usr/bin/env bash
# 03-revoke-large: a full CRL large enough for the plugin's worker thread (20,000 entries,
# about 800 KB). The broker loads it off Mosquitto's thread and swaps it in; a revocation after
# it goes out as a delta and kicks at once, while mqpkid's schedule re-signs the large full CRL;
# a large CRL with a changed number is refused by the worker and never kept; the broker keeps
# the large CRL across a restart; a large full CRL and its delta published back to back both
# take effect.
. "$(dirname "$0")/lib.sh"

P=$(free_port)
H=$MQPKI_HOME
N=20000
TLS=(-h 127.0.0.1 -p "$P" --cafile "$T/chain.pem")

start_broker() {
  mqpki broker run b1 >"$T/broker$1.log" 2>&1 &
  BROKER=$!
  PIDS+=("$BROKER")
  wait_for 10 listening "$P"
}

check "mqpki init" init_ca
# A full CRL follows the first delta within a second: it is re-signed while revocations go on.
sed -i 's/^crl_full_after = .*/crl_full_after = 1s/' "$H/mqpki.conf"
NOW=$(date +%s)
# N revoked certificates of a retired asset, as years of a fleet would leave them.
sqlite3 "$H/mqpki.db" >/dev/null <<SQL
BEGIN;
INSERT INTO assets(id, kind, state, created_at, updated_at)
  VALUES ('retired', 'device', 'decommissioned', $NOW, $NOW);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $N)
INSERT INTO certs(serial, asset_id, profile, not_before, not_after, state, key_fp, pem,
                  issued_seq, revoked_at, reason, rev_seq, rev_time)
SELECT printf('%016X%016X', i * 2654435761, i * 40503 + 7), 'retired', 'device', $NOW - 86400,
       $NOW + 86400 * 365, 'revoked', printf('%064X', i), NULL, 1000000000 + i, $NOW - $N + i,
       i % 2, i, $NOW - $N + i FROM n;
UPDATE counters SET value = $N WHERE name = 'rev_seq';
COMMIT;
SQL
check "a full CRL of $N entries is signed" mqpki crl publish
assert "it is large enough for the worker" test "$(stat -c %s "$H/crl/issuing.crl")" -gt 262144
check "broker init b1" mqpki broker init b1 --port "$P"
for d in dev1 dev2; do
  mqpki asset add "$d" --kind device >/dev/null
  make_csr "$d"
  check "issue $d" mqpki issue --asset "$d" --csr "$T/$d.csr" --out "$T/$d.pem"
done
check "broker b1 listening" start_broker 1
check "mqpkid starts" start_mqpkid
check "the large full CRL is loaded off the broker's thread" \
  wait_for 20 grep -q "full CRL .* loading off the broker's thread" "$T/broker1.log"
check "and swapped in with its $N serials" \
  wait_for 20 grep -q "full CRL .* accepted: $N serials" "$T/broker1.log"

for d in dev1 dev2; do
  mosquitto_sub "${TLS[@]}" --cert "$T/$d.pem" --key "$T/$d.key" -i "$d" -t "fleet/$d/#" \
    >"$T/sub-$d.out" 2>&1 &
  PIDS+=($!)
  eval "SUB_$d=$!"
done
check "dev1 and dev2 connected" wait_for 10 bash -c \
  "grep -q 'as dev1 ' '$T/broker1.log' && grep -q 'as dev2 ' '$T/broker1.log'"
check "revoke dev1" mqpki revoke --asset dev1 --reason key-compromise
check "dev1 is disconnected" wait_for 10 gone "$SUB_dev1"
assert "dev2 stays connected" alive "$SUB_dev2"
# The schedule re-signs the large full CRL a second after the delta; the broker swaps it in.
check "the re-signed full CRL reaches the broker" wait_for 20 bash -c \
  "[ \$(grep -c 'full CRL .* accepted: $((N + 1)) serials' '$T/broker1.log') -ge 1 ]"
# mqpkid signs it on its own thread, off the changes' way; crl/ follows it while mqpkid runs.
resigned=$(grep -o "full CRL [0-9]* accepted: $((N + 1)) serials" "$T/broker1.log" | head -1 |
  grep -o "CRL [0-9]*" | grep -o "[0-9]*")
dev1_serial=$(openssl x509 -in "$T/dev1.pem" -noout -serial | cut -d= -f2)
check "crl/issuing.crl is the re-signed full CRL, with dev1 in it" wait_for 10 bash -c \
  "[ \$((\$(openssl crl -inform DER -in '$H/crl/issuing.crl' -noout -crlnumber | cut -d= -f2))) \
    -ge $resigned ] && openssl crl -inform DER -in '$H/crl/issuing.crl' -noout -text |
    grep -q 'Serial Number: $dev1_serial'"
check "and it verifies under the CA chain" openssl crl -inform DER -in "$H/crl/issuing.crl" \
  -noout -CAfile "$T/chain.pem"
check "revoke dev2 after it" mqpki revoke --asset dev2 --reason key-compromise
check "dev2 is disconnected" wait_for 10 gone "$SUB_dev2"
expect_fail 5 "dev1 cannot reconnect" bash -c "mosquitto_sub ${TLS[*]} --cert '$T/dev1.pem' \
  --key '$T/dev1.key' -i dev1 -t 'fleet/dev1/#' -C 1 -W 5 2>&1 >/dev/null | head -1 >&2; \
  exit \${PIPESTATUS[0]}"

# A large CRL with a higher CRL number than held but not signed by the CA (the number changed
# after signing): it passes the cheap checks on Mosquitto's thread, the worker refuses it, and
# it is neither put in force nor kept for a restart.
stop_pid "$MQPKID_PID"
held=$(grep -o "full CRL [0-9]* accepted" "$T/broker1.log" | tail -1 | grep -o "[0-9]*")
python3 - "$H/crl/issuing.crl" "$T/forged.der" <<'PY'
import sys
d = bytearray(open(sys.argv[1], "rb").read())
i = d.rindex(b"\x06\x03\x55\x1d\x14")  # cRLNumber: OID, OCTET STRING, INTEGER
assert d[i + 5] == 0x04 and d[i + 7] == 0x02 and d[i + 8] == 1 and d[i + 9] < 0x70
d[i + 9] += 0x0f
open(sys.argv[2], "wb").write(d)
PY
kept=$(sha256sum <"$H/brokers/b1/state/full.der")
mosquitto_pub "${TLS[@]}" --cert "$H/tls/mqpkid.pem" --key "$H/tls/mqpkid.key" -i test-pub \
  -q 1 -t mqpki/v1/crl/full -f "$T/forged.der"
check "the worker refuses the forged large CRL" \
  wait_for 10 grep -q "crl/full ignored: CRL signature does not verify" "$T/broker1.log"
assert "the held CRL stays in force" \
  test "$(grep -o "full CRL [0-9]* accepted" "$T/broker1.log" | tail -1 | grep -o "[0-9]*")" = "$held"
assert "the forged CRL is not kept" test "$(sha256sum <"$H/brokers/b1/state/full.der")" = "$kept"

# The kept CRLs come back at restart (loaded at start, before clients are served).
stop_pid "$BROKER"
check "broker b1 restarts" start_broker 2
check "the kept large CRL and delta come back" \
  wait_for 10 grep -q "holding full CRL [0-9]*, delta CRL [0-9-]*: $((N + 2)) serials" \
  "$T/broker2.log"
expect_fail 5 "dev2 cannot connect after the restart" bash -c "mosquitto_sub ${TLS[*]} \
  --cert '$T/dev2.pem' --key '$T/dev2.key' -i dev2 -t 'fleet/dev2/#' -C 1 -W 5 2>&1 \
  >/dev/null | head -1 >&2; exit \${PIPESTATUS[0]}"

# A new large full CRL and the delta based on it, published back to back, the delta first (as
# when it overtakes its base on another link): it waits for its base, and what it lists counts
# at once. mqpkid is stopped: the CLI signs.
mqpki asset add dev3 --kind device >/dev/null
make_csr dev3
check "issue dev3" mqpki issue --asset dev3 --csr "$T/dev3.csr" --out "$T/dev3.pem"
check "a new full CRL is signed" mqpki crl publish
cp "$H/crl/issuing.crl" "$T/full-new.der"
check "revoke dev3 (a delta based on it)" mqpki revoke --asset dev3 --reason superseded
mosquitto_pub "${TLS[@]}" --cert "$H/tls/mqpkid.pem" --key "$H/tls/mqpkid.key" -i test-pub \
  -q 1 -t mqpki/v1/crl/delta -f "$H/crl/issuing-delta.crl"
check "the delta waits for its base and counts ahead of it" wait_for 10 bash -c \
  "grep -q 'waits for its base' '$T/broker2.log' && grep -q 'ahead of its base' '$T/broker2.log'"
expect_fail 5 "dev3 is refused before the full CRL came" bash -c "mosquitto_sub ${TLS[*]} \
  --cert '$T/dev3.pem' --key '$T/dev3.key' -i dev3 -t 'fleet/dev3/#' -C 1 -W 5 2>&1 \
  >/dev/null | head -1 >&2; exit \${PIPESTATUS[0]}"
mosquitto_pub "${TLS[@]}" --cert "$H/tls/mqpkid.pem" --key "$H/tls/mqpkid.key" -i test-pub \
  -q 1 -t mqpki/v1/crl/full -f "$T/full-new.der"
check "the broker holds the new full CRL and its delta" wait_for 10 bash -c \
  "grep -q 'delta CRL [0-9]* accepted: $((N + 3)) serials' '$T/broker2.log'"
expect_fail 5 "dev3 cannot connect" bash -c "mosquitto_sub ${TLS[*]} \
  --cert '$T/dev3.pem' --key '$T/dev3.key' -i dev3 -t 'fleet/dev3/#' -C 1 -W 5 2>&1 \
  >/dev/null | head -1 >&2; exit \${PIPESTATUS[0]}"
finish
