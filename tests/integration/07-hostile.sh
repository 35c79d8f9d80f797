#!/usr/bin/env bash
# 07-hostile: hostile input against the real mqpkid and the bundled broker. Slowloris, oversized
# headers and half-open TLS handshakes leave mqpkid serving others; a CSR with 10,000 extensions
# is refused; token brute force hits the attempt limit and is audited; forged and oversized CRLs
# on the feed are ignored; a device cannot publish under mqpki/v1/; the PIN and tokens appear
# in no log and no command line, and the data directory's secrets are private.
. "$(dirname "$0")/lib.sh"

H=$MQPKI_HOME
check "mqpki init" init_ca
P=$(free_port)
check "broker init b1" mqpki broker init b1 --port "$P"
mqpki broker run b1 >"$T/broker.log" 2>&1 &
BROKER=$!
PIDS+=("$BROKER")
check "broker b1 listening" wait_for 10 listening "$P"
check "start mqpkid" start_mqpkid
check "the feed reaches b1" wait_for 15 grep -q "full CRL .* accepted" "$T/broker.log"

# A second client address on loopback: the per-address limits must not hit it.
OTHER=(--interface 127.0.0.2)
healthy() {
  [ "$(curl -sS "${OTHER[@]}" --max-time 5 --cacert "$T/chain.pem" -o /dev/null \
    -w '%{http_code}' "$MQPKID_URL/.well-known/est/cacerts")" = 200 ]
}
check "mqpkid serves cacerts" healthy

# Slowloris: TLS clients that send their request headers one byte at a time. One stalls after
# a few bytes: mqpkid closes it at its 10 s inactivity timeout. One drips a byte every 4 seconds,
# which libmicrohttpd's inactivity timeout alone would let through: mqpkid's own deadline for
# complete headers (10 s) closes it. Other clients must be served meanwhile.
cat >"$T/slow.py" <<'EOF'
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[2])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))),
                    server_hostname="localhost")
interval, limit = float(sys.argv[3]), float(sys.argv[4])
start = time.time()
req = b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 100
state = "open"
try:
    for i, b in enumerate(req):
        s.send(bytes([b]))
        if interval == 0 and i >= 5:
            # Stalled: wait for the server to close.
            s.settimeout(limit)
            state = "closed" if s.recv(1) == b"" else "answered"
            break
        time.sleep(interval)
        if time.time() - start > limit:
            break
except socket.timeout:
    state = "open"
except OSError:
    state = "closed"
print("%s %.1f" % (state, time.time() - start))
EOF
python3 "$T/slow.py" "$MQPKID_PORT" "$T/chain.pem" 0 20 >"$T/stall.out" 2>&1 &
STALL=$!
python3 "$T/slow.py" "$MQPKID_PORT" "$T/chain.pem" 4 20 >"$T/drip.out" 2>&1 &
DRIP=$!
PIDS+=("$STALL" "$DRIP")
sleep 1
check "another client is served during the slowloris" healthy
sleep 5
check "... and still after 6 s" healthy
wait "$STALL" 2>/dev/null || true
wait "$DRIP" 2>/dev/null || true
stall=$(cat "$T/stall.out")
assert "a stalled request is closed within 15 s ($stall)" \
  awk -v s="$stall" 'BEGIN { split(s, a, " "); exit !(a[1] == "closed" && a[2] <= 15) }'
drip=$(cat "$T/drip.out")
assert "a client dripping one header byte every 4 s is closed within 19 s ($drip)" \
  awk -v s="$drip" 'BEGIN { split(s, a, " "); exit !(a[1] == "closed" && a[2] <= 19) }'
assert "mqpkid says why" grep -q "request not complete within its deadline" "$MQPKID_LOG"
check "mqpkid serves after the slowloris" healthy

# Oversized headers: 64 KiB in one header.
big=$(head -c 65536 /dev/zero | tr '\0' 'a')
code=$(curl -sS --cacert "$T/chain.pem" -H "X-Big: $big" -o /dev/null -w '%{http_code}' \
  "$MQPKID_URL/.well-known/est/cacerts" 2>/dev/null) || true
# 431, or, when mqpkid closes before curl has sent all 64 KiB, a reset that loses the answer
# (a race of TCP, not of mqpkid): either way refused, and mqpkid must go on serving.
assert "a 64 KiB header is refused ($code)" test "${code:0:1}" = 4 -o "$code" = 000
check "mqpkid still serves after the big header" healthy

# Half-open TLS: 200 TCP connections that never send a ClientHello. The per-address limit
# takes the brunt; a client from another address is served meanwhile.
python3 - "$MQPKID_PORT" >"$T/halfopen.out" 2>&1 <<'EOF' &
import socket, sys, time
socks = []
for i in range(200):
    try:
        socks.append(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2))
    except OSError:
        pass
print(len(socks))
sys.stdout.flush()
time.sleep(6)
EOF
HALF=$!
PIDS+=("$HALF")
sleep 2
check "a client is served while 200 handshakes hang" healthy
wait "$HALF" 2>/dev/null || true
check "mqpkid serves after the half-open connections" healthy
assert "mqpkid is alive" alive "$MQPKID_PID"

# A CSR with 10,000 extensions: too large or refused, never a crash.
python3 -c '
print("[req]\ndistinguished_name=dn\nreq_extensions=ext\nprompt=no\n[dn]\nCN=x\n[ext]")
for i in range(10000): print("1.3.6.1.4.1.55555.%d = ASN1:NULL" % i)' >"$T/ext.cnf"
mqpki asset add dev1 --kind device >/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -config "$T/ext.cnf" \
  -keyout "$T/ext.key" -outform DER 2>/dev/null | base64 >"$T/ext.b64"
assert "the CSR holds 10,000 extensions" test "$(base64 -d "$T/ext.b64" | wc -c)" -gt 100000
tok=$(mqpki token create dev1 | tail -1)
code=$(est_enroll dev1 "$tok" ext)
assert "a CSR with 10,000 extensions gets 400 or 413 ($code)" \
  bash -c "[ '$code' = 400 ] || [ '$code' = 413 ]"
check "mqpkid still serves after the huge CSR" healthy
# The token survives a refused request; dev1 enrolls with it (also for the secrets grep below).
est_csr dev1
assert "dev1 enrolls with the same token" test "$(est_enroll dev1 "$tok" dev1)" = 200
TOKENS=("$tok")

# Token brute force: 5 wrong tokens per window, then 429; the real token is burned.
mqpki asset add dev2 --kind device >/dev/null
tok2=$(mqpki token create dev2 | tail -1)
TOKENS+=("$tok2")
est_csr dev2
codes=""
for i in $(seq 1 8); do
  codes="$codes $(est_enroll dev2 "wrong$i$RANDOM" dev2)"
done
assert "wrong tokens: 401, then 429 ($codes)" \
  bash -c "[[ '$codes' == ' 401 401 401 401 401'* ]] && [[ '$codes' == *' 429' ]]"
assert "the right token is refused after the limit" \
  test "$(est_enroll dev2 "$tok2" dev2)" = 429
mqpki asset show dev2 --json >"$T/dev2.json"
sqlite3 "$H/mqpki.db" "SELECT action FROM audit WHERE subject = 'dev2'" >"$T/dev2.audit"
assert "the audit log records token.refused" contains "$T/dev2.audit" "token.refused"
assert "the audit log records token.burned" contains "$T/dev2.audit" "token.burned"
check "audit chain intact" mqpki audit verify

# The feed: forged and oversized CRLs published by the service identity are ignored.
TLS=(-h 127.0.0.1 -p "$P" --cafile "$T/chain.pem")
service_pub() {
  mosquitto_pub "${TLS[@]}" --cert "$H/tls/mqpkid.pem" --key "$H/tls/mqpkid.key" -i test-pub \
    -q 1 "$@"
}
ignored() { grep -c "ignored\|refused" "$T/broker.log" || true; }
crl=$H/crl/issuing.crl
python3 - "$crl" "$T/forged.der" <<'EOF'
import sys
d = bytearray(open(sys.argv[1], "rb").read())
d[-5] ^= 0x55  # inside the signature value
open(sys.argv[2], "wb").write(d)
EOF
n0=$(ignored)
service_pub -t mqpki/v1/crl/full -f "$T/forged.der"
check "a CRL with a forged signature is ignored" \
  wait_for 5 bash -c "[ \$(grep -c 'ignored\|refused' '$T/broker.log') -gt $n0 ]"
# A DER header declaring a 2 GiB CRL, followed by a few bytes.
printf '\x30\x84\x7f\xff\xff\xff\x30\x03\x02\x01\x01' >"$T/huge-len.der"
n1=$(ignored)
service_pub -t mqpki/v1/crl/full -f "$T/huge-len.der"
service_pub -t mqpki/v1/crl/delta -f "$T/huge-len.der"
check "a CRL declaring a huge length is ignored" \
  wait_for 5 bash -c "[ \$(grep -c 'ignored\|refused' '$T/broker.log') -ge $((n1 + 2)) ]"
assert "the broker is alive" alive "$BROKER"

# A device may not publish under mqpki/v1/.
mosquitto_pub "${TLS[@]}" --cert "$T/dev1.pem" --key "$T/dev1.key" -i dev1:pub -q 1 \
  -t mqpki/v1/crl/full -f "$crl" >/dev/null 2>&1 || true
mosquitto_pub "${TLS[@]}" --cert "$T/dev1.pem" --key "$T/dev1.key" -i dev1:pub -q 1 \
  -t mqpki/v1/assets/dev2/cmd -m '{"op":"renew"}' >/dev/null 2>&1 || true
check "a device's publish under mqpki/v1/ is denied" \
  wait_for 5 grep -q "acl denied: dev1 may not publish on mqpki/v1/crl/full" "$T/broker.log"
check "and on another asset's command topic" \
  wait_for 5 grep -q "acl denied: dev1 may not publish on mqpki/v1/assets/dev2/cmd" \
  "$T/broker.log"
check "the broker still accepts the device" mosquitto_pub "${TLS[@]}" --cert "$T/dev1.pem" \
  --key "$T/dev1.key" -i dev1:pub2 -q 1 -t fleet/dev1/t -m hello

# Secrets: the PIN and the tokens are in no log and no command line.
pin=$(cat "$H/secrets/pin")
assert "the PIN is not empty" test -n "$pin"
leaks=0
for f in "$T"/*.log; do
  grep -qF -- "$pin" "$f" && { echo "# PIN in $f"; leaks=$((leaks + 1)); }
  for t in "${TOKENS[@]}"; do
    grep -qF -- "$t" "$f" && { echo "# token in $f"; leaks=$((leaks + 1)); }
  done
done
assert "no log holds the PIN or a token" test "$leaks" -eq 0
for pid in "$MQPKID_PID" "$BROKER" $(pgrep -P "$BROKER" || true); do
  [ -r "/proc/$pid/cmdline" ] || continue
  tr '\0' ' ' <"/proc/$pid/cmdline" >"$T/cmdline"
  assert "the command line of $(cut -c1-40 "$T/cmdline") holds no PIN" \
    bash -c "! grep -qF -- '$pin' '$T/cmdline'"
  assert "... and no token" bash -c "! grep -qF -e '${TOKENS[0]}' -e '${TOKENS[1]}' '$T/cmdline'"
  assert "... and its environment no PIN" bash -c "! tr '\\0' '\\n' </proc/$pid/environ | \
    grep -qF -- '$pin'"
done
mode() { stat -c %a "$H/$1"; }
assert "secrets/ is 0700 ($(mode secrets))" test "$(mode secrets)" = 700
assert "secrets/pin is 0600 ($(mode secrets/pin))" test "$(mode secrets/pin)" = 600
assert "tls/mqpkid.key is 0600 ($(mode tls/mqpkid.key))" test "$(mode tls/mqpkid.key)" = 600
assert "mqpki.db is 0600 ($(mode mqpki.db))" test "$(mode mqpki.db)" = 600
assert "brokers/b1/broker.key is 0600" test "$(mode brokers/b1/broker.key)" = 600
assert "the database holds no token in clear" \
  bash -c "! sqlite3 '$H/mqpki.db' .dump | grep -qF -e '${TOKENS[0]}' -e '${TOKENS[1]}'"

assert "mqpkid is alive at the end" alive "$MQPKID_PID"
assert "the broker is alive at the end" alive "$BROKER"
finish
