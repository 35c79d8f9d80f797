#!/usr/bin/env bash
# 10-replicas: two mqpkid replicas over one PostgreSQL store and one shared SoftHSM token, one
# bundled broker fed by both (docs/ha.md). 400 EST enrollments spread over both, replica A
# killed with SIGKILL mid-burst and restarted: every certificate a client received is recorded
# exactly once, no serial twice, the audit chain verifies. The server restarted under both
# replicas: each enrolls again without a restart. One token sent to both replicas at
# the same instant, 50 times: exactly one 200 each time. A revocation made through A
# disconnects a client while only B's feed is connected to the broker. The broker's CRL numbers
# strictly increase. Both replicas receive every broker event: each is stored once, and a
# detector that fires on both raises one alert, whose replica alone responds.
. "$(dirname "$0")/lib.sh"

check "a private PostgreSQL server" start_pg
A=$T/a
B=$T/b
export MQPKI_HOME=$A
BP=$(free_port)
PA=$(free_port)
PB=$(free_port)
N=${MQPKI_REPLICA_ENROLLMENTS:-400}

check "mqpki --store URL init" init_ca_pg
assert "mqpki.conf names the store" grep -q "^url = postgresql://" "$A/mqpki.conf"
assert "no SQLite store was made" test ! -e "$A/mqpki.db"
expect_fail 1 "a second CA is refused on a store that serves one" \
  mqpki --home "$T/other" --store "$PG_URL" init
assert "... before making a token or keys" test ! -e "$T/other/hsm"
check "broker init b1" mqpki broker init b1 --port "$BP"
check "replica init B from A" mqpki --home "$B" replica init --from "$A"
assert "B shares A's token (hsm/ is a link to A's)" \
  test "$(readlink -f "$B/hsm")" = "$(readlink -f "$A/hsm")"
assert "B's PIN file is 0600" test "$(stat -c %a "$B/secrets/pin")" = 600
expect_fail 1 "replica init refuses a directory that is not empty" \
  mqpki --home "$A" replica init --from "$B"
expect_fail 1 "--store refuses a URL with a password (argv is public)" \
  mqpki --store "postgresql://u:secret@localhost/db" asset list
assert "... without echoing it" bash -c "! grep -q secret '$T/err'"

mqpki broker run b1 >"$T/broker.log" 2>&1 &
BROKER=$!
PIDS+=("$BROKER")
check "broker b1 listening" wait_for 10 listening "$BP"

start_replica() { # NAME HOME PORT
  mqpkid --home "$2" --listen "127.0.0.1:$3" >>"$T/mqpkid-$1.log" 2>&1 &
  eval "PID_$1=$!"
  PIDS+=($!)
  wait_for 15 listening "$3"
}
check "replica A listening" start_replica A "$A" "$PA"
check "replica B listening" start_replica B "$B" "$PB"
check "both feeds connect to b1" wait_for 15 bash -c \
  "grep -q 'feed: connected to broker b1' '$T/mqpkid-A.log' && \
   grep -q 'feed: connected to broker b1' '$T/mqpkid-B.log'"
assert "the feeds use distinct MQTT client ids" test \
  "$(grep -o 'New client connected from [^ ]* as mqpkid-b1-[0-9a-f]*' "$T/broker.log" |
     awk '{print $NF}' | sort -u | wc -l)" -ge 2
sleep 2
assert "no feed session took over the other's" bash -c "! grep -q 'already connected' '$T/broker.log'"

# --- both replicas receive every broker event: stored once, alerted and answered once ---------
check "a scanner with a device certificate" bash -c "mqpki asset add scanner --kind device && \
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=scanner \
    -keyout '$T/scanner.key' -out '$T/scanner.csr' 2>/dev/null && \
  mqpki issue --asset scanner --csr '$T/scanner.csr' --out '$T/scanner.pem'"
for i in $(seq 1 12); do
  mosquitto_pub -h 127.0.0.1 -p "$BP" --cafile "$T/chain.pem" --cert "$T/scanner.pem" \
    --key "$T/scanner.key" -i scanner -t "fleet/probe$i/x" -m x >/dev/null 2>&1 || true
done
scan_alerts() { mqpki alerts --json | jq '[.[] | select(.rule == "topic_scan" and
  .asset == "scanner")] | length'; }
check "a topic_scan alert for the scanner" wait_for 15 bash -c \
  "[ \"\$($(declare -f scan_alerts); scan_alerts)\" -ge 1 ]"
sleep 1
assert "one alert, not one per replica" test "$(scan_alerts)" -eq 1
assert "its cause names the event that fired it" bash -c "mqpki alerts --json | jq -e 'any(.[];
  .rule == \"topic_scan\" and (.cause | test(\"^topic_scan:scanner:b1/[0-9a-f]{16}-[0-9]+-[0-9]+\$\")))' >/dev/null"
assert "one quarantine record in the audit trail" test "$(mqpki asset show scanner --json |
  jq '[.history[] | select(.action == "detect.quarantine")] | length')" -eq 1
# (the last ones may come after the quarantine: quarantine_denied)
assert "the 12 denials stored once each" test "$(mqpki events --asset scanner --json |
  jq -s '[.[] | select(.type == "acl_denied" or .type == "quarantine_denied")] | length')" -eq 12
check "release --asset scanner" mqpki release --asset scanner
# An alert-only rule: both replicas fire on the same (fifth) refusal, one alert is stored.
for i in $(seq 1 5); do
  mosquitto_pub -h 127.0.0.1 -p "$BP" --cafile "$T/chain.pem" --cert "$T/scanner.pem" \
    --key "$T/scanner.key" -i not-scanner -t fleet/scanner/x -m x >/dev/null 2>&1 || true
done
check "an auth_failures alert for the scanner" wait_for 15 bash -c "mqpki alerts --json |
  jq -e 'any(.[]; .rule == \"auth_failures\" and .asset == \"scanner\")' >/dev/null"
check "both replicas fired it; the second found it raised" wait_for 10 bash -c \
  "cat '$T/mqpkid-A.log' '$T/mqpkid-B.log' | grep -q 'auth_failures on scanner: raised by another'"
auth_alerts() { mqpki alerts --json | jq '[.[] | select(.rule == "auth_failures")] | length'; }
check "an auth_failures alert per key (the asset, the address)" wait_for 10 bash -c \
  "[ \"\$($(declare -f auth_alerts); auth_alerts)\" -ge 2 ]"
sleep 1
assert "... and not one per replica" test "$(auth_alerts)" -eq 2
assert "the 5 refusals stored once each" test "$(mqpki events --asset scanner --json |
  jq -s '[.[] | select(.type == "connect_refused")] | length')" -eq 5

# --- 400 enrollments over both replicas, A killed mid-burst -------------------------------------
echo "# registering $N assets with one token each"
for i in $(seq 1 "$N"); do echo "d$i"; done >"$T/ids"
while read -r id; do
  mqpki asset add "$id" --kind device >/dev/null && mqpki token create "$id" --ttl 1h
done <"$T/ids" >"$T/tokens"
assert "$N tokens" test "$(wc -l <"$T/tokens")" -eq "$N"
paste -d ' ' "$T/ids" "$T/tokens" >"$T/jobs"
mkdir -p "$T/e"
for i in $(seq 1 "$N"); do
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=d$i" \
    -keyout "$T/e/d$i.key" -outform DER 2>/dev/null | base64 >"$T/e/d$i.b64"
done

# One client: its replica by parity, the other one after a failure; retries until it has a
# certificate (the same token and CSR: a lost answer gets the same certificate again).
cat >"$T/client.sh" <<EOF
#!/usr/bin/env bash
id=\$1 tok=\$2 n=\${id#d}
ports=($PA $PB)
for try in \$(seq 0 60); do
  port=\${ports[\$(( (n + try) % 2 ))]}
  code=\$(curl -sS --max-time 10 --cacert "$T/chain.pem" -u "\$id:\$tok" \
    -H "Content-Type: application/pkcs10" --data-binary @"$T/e/\$id.b64" \
    -o "$T/e/\$id.p7" -w '%{http_code}' "https://localhost:\$port/.well-known/est/simpleenroll" \
    2>/dev/null) || code=000
  echo "\$id \$port \$code" >>"$T/e/attempts"
  if [ "\$code" = 200 ]; then
    base64 -d "$T/e/\$id.p7" | openssl pkcs7 -inform DER -print_certs >"$T/e/\$id.pem" && exit 0
  fi
  sleep 0.2
done
exit 1
EOF
chmod +x "$T/client.sh"
xargs -P 16 -L 1 "$T/client.sh" <"$T/jobs" >"$T/clients.log" 2>&1 &
BURST=$!
wait_for 120 bash -c "[ \$(ls '$T/e/' | grep -c '\.pem\$') -ge $((N / 4)) ]" || true
kill -KILL "$PID_A"
wait "$PID_A" 2>/dev/null || true
echo "# replica A killed with $(ls "$T/e/" | grep -c '\.pem$') certificates out"
# A comes back without the broker registration: from here only B's feed reaches b1.
rm -rf "$A/brokers/b1"
check "replica A restarted" start_replica A "$A" "$PA"
wait "$BURST"
check "every client got a certificate" test "$(ls "$T/e/" | grep -c '\.pem$')" -eq "$N"
assert "some enrollments failed over during the kill" grep -q ' 000$' "$T/e/attempts"
for f in "$T"/e/*.pem; do openssl x509 -in "$f" -noout -serial | cut -d= -f2; done |
  sort >"$T/received"
mqpki cert list --json | jq -r '.[] | select(.asset | startswith("d")) | .serial' | sort \
  >"$T/recorded"
assert "no serial received twice" test -z "$(uniq -d "$T/received")"
assert "no serial recorded twice" test -z "$(uniq -d "$T/recorded")"
assert "every certificate received is recorded" \
  test -z "$(comm -23 "$T/received" "$T/recorded")"
assert "one certificate per asset in the store ($N)" test "$(wc -l <"$T/recorded")" -eq "$N"
check "mqpki audit verify (through A)" mqpki audit verify
check "mqpki audit verify (through B)" mqpki --home "$B" audit verify

# --- the database server restarts under the replicas -------------------------------------------
# Each mqpkid opens its connections again between transactions (a restart or a failover to a new
# primary looks the same to it): ready again, and enrolling through both, without a restart.
# Before the token race below, whose refusals count against this address.
pg_as=()
[ "$(id -u)" = 0 ] && pg_as=(runuser -u postgres --)
check "PostgreSQL restarted (fast: every connection cut)" "${pg_as[@]}" "$PG_BIN/pg_ctl" \
  -D "$T/pg/data" -l "$T/pg/server.log" -w -t 30 -m fast restart
PG_PID=$(head -n 1 "$T/pg/data/postmaster.pid") # the new server: cleanup stops it last
PIDS+=("$PG_PID")
for side in A B; do
  port=$PA; [ "$side" = B ] && port=$PB
  check "replica $side ready again" wait_for 10 \
    curl -sf --max-time 5 --cacert "$T/chain.pem" -o /dev/null "https://localhost:$port/readyz"
  mqpki asset add "after-$side" --kind device >/dev/null
  tok=$(mqpki token create "after-$side" --ttl 1h)
  est_csr "after-$side"
  MQPKID_URL="https://localhost:$port"
  # A client as EST clients behave: a 429 (the burst above spent this address's budget) or a 503
  # is tried again a little later.
  for try in 1 2 3 4 5; do
    code=$(est_enroll "after-$side" "$tok" "after-$side")
    case $code in 429 | 503) sleep 1 ;; *) break ;; esac
  done
  assert "replica $side enrolls after the restart ($code)" test "$code" = 200
done

# --- one token, both replicas, the same instant ------------------------------------------------
wins=0
bad=0
for i in $(seq 1 50); do
  mqpki asset add "r$i" --kind device >/dev/null
  tok=$(mqpki token create "r$i" --ttl 1h)
  est_csr "ra$i"
  est_csr "rb$i"
  racers=()
  for side in a b; do
    port=$PA; [ "$side" = b ] && port=$PB
    curl -sS --max-time 20 --cacert "$T/chain.pem" -u "r$i:$tok" \
      -H "Content-Type: application/pkcs10" --data-binary @"$T/r$side$i.b64" -o /dev/null \
      -w '%{http_code}' "https://localhost:$port/.well-known/est/simpleenroll" \
      >"$T/race-$side" 2>/dev/null &
    racers+=($!)
  done
  # Only the two racers: a bare wait would also wait for the replicas and the broker.
  wait "${racers[@]}" 2>/dev/null || true
  n200=$(cat "$T/race-a" "$T/race-b" | grep -o 200 | wc -l)
  if [ "$n200" = 1 ]; then wins=$((wins + 1)); else bad=$((bad + 1)); fi
done
assert "one token at both replicas at once: exactly one 200, 50 times ($wins of 50)" \
  test "$wins" -eq 50
assert "each race made one certificate (50)" test \
  "$(mqpki cert list --json | jq '[.[] | select(.asset | startswith("r"))] | length')" -eq 50

# --- a revocation through A reaches b1 through B's feed ---------------------------------------
victim=d7
openssl x509 -in "$T/e/$victim.pem" -out "$T/$victim.pem"
cp "$T/e/$victim.key" "$T/$victim.key"
mosquitto_sub -h 127.0.0.1 -p "$BP" --cafile "$T/chain.pem" --cert "$T/$victim.pem" \
  --key "$T/$victim.key" -i "$victim" -t "fleet/$victim/#" >"$T/sub.out" 2>&1 &
SUB=$!
PIDS+=("$SUB")
check "the victim is connected to b1" wait_for 10 grep -q "as $victim " "$T/broker.log"
assert "A has no broker to feed" bash -c "! ls '$A/brokers' 2>/dev/null | grep -q b1"
start=$(date +%s%N)
check "revoke through replica A" mqpki --home "$A" revoke --asset "$victim" --reason key-compromise
check "b1 disconnects the victim within 1 s (through B's feed)" wait_for 1 \
  grep -q "disconnecting $victim .*certificate revoked" "$T/broker.log"
echo "# revocation through A to disconnect through B: $((($(date +%s%N) - start) / 1000000)) ms"
check "the victim's subscriber ends (its reconnect is refused)" wait_for 10 gone "$SUB"

# --- the broker's CRL numbers strictly increase ------------------------------------------------
grep -o 'CRL [0-9]* accepted' "$T/broker.log" | awk '{print $2}' >"$T/numbers"
assert "the broker accepted CRLs ($(wc -l <"$T/numbers"))" test "$(wc -l <"$T/numbers")" -ge 2
assert "CRL numbers seen by the broker strictly increase" \
  awk 'NR > 1 && $1 <= prev { exit 1 } { prev = $1 }' "$T/numbers"
check "audit verify after everything" mqpki --home "$B" audit verify
finish
