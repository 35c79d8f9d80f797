#!/usr/bin/env bash
# 07-hostile-est: enrollment (EST) against a hostile or unlucky client, with the real mqpkid,
# curl and openssl. An older token stops working once a newer one exists; the operator lists
# and revokes tokens. Authentication comes first: an unknown asset, a decommissioned one and a
# wrong token get the same 401, counted and audited. A request without credentials gets the
# challenge and is no failure: 20 devices behind one address enroll with curl --anyauth.
# Bad message framing (conflicting Content-Length headers) gets 400, a declared body over the
# limit 413 at once. A client whose answer was lost gets the same certificate again for the
# same token and CSR within 10 minutes; any other reuse of the token is refused.
. "$(dirname "$0")/lib.sh"

H=$MQPKI_HOME
check "mqpki init" init_ca
check "start mqpkid" start_mqpkid

# enroll FROM ASSET TOKEN NAME [PATH [CURL-ARGS...]]: POST simpleenroll from the loopback
# address FROM with the CSR $T/NAME.b64; prints the status. Headers land in $T/NAME.h, the body
# in $T/NAME.body, the certificate (PEM) in $T/NAME.pem on 200. Each part of this test speaks
# from its own address, so that the per-address limits of one part never decide another's.
enroll() {
  local from=$1 asset=$2 token=$3 name=$4 path=${5:-/.well-known/est/simpleenroll} code
  shift 5 2>/dev/null || shift $#
  code=$(curl -sS --interface "$from" --cacert "$T/chain.pem" -u "$asset:$token" \
    -H "Content-Type: application/pkcs10" --data-binary @"$T/$name.b64" -D "$T/$name.h" \
    -o "$T/$name.body" -w '%{http_code}' "$@" "$MQPKID_URL$path") || true
  if [ "$code" = 200 ]; then
    base64 -d "$T/$name.body" | openssl pkcs7 -inform DER -print_certs >"$T/$name.pem"
  fi
  echo "$code"
}
serial_of() { openssl x509 -in "$1" -noout -serial | cut -d= -f2; }
# same NAME1 NAME2: two answers alike byte for byte (status, headers but Date, body).
same() {
  diff <(grep -vi '^date:' "$T/$1.h") <(grep -vi '^date:' "$T/$2.h") >/dev/null &&
    cmp -s "$T/$1.body" "$T/$2.body"
}
# csr_copy FROM TO: the same CSR under another name (for a second answer of its own).
csr_copy() { cp "$T/$1.b64" "$T/$2.b64"; }
jqt() { jq -e "$@" >/dev/null; }
audit_count() { sqlite3 "$H/mqpki.db" "SELECT COUNT(*) FROM audit WHERE $1"; }

# --- 3b: a newer token revokes the older ones; token list and token revoke ----------------
A=127.0.0.11
mqpki asset add t1 --kind device >/dev/null
old=$(mqpki token create t1 --ttl 1h)
new=$(mqpki token create t1 --ttl 1h)
est_csr t1
assert "the older token is refused once a newer one exists" test "$(enroll $A t1 "$old" t1)" = 401
assert "the newer token enrolls" test "$(enroll $A t1 "$new" t1)" = 200
assert "one certificate for t1" \
  test "$(mqpki cert list --asset t1 --json | jq length)" = 1
assert "audit: the older token revoked as superseded" \
  test "$(audit_count "action = 'token.revoke' AND subject = 't1' AND \
    json_extract(detail, '$.reason') = 'superseded'")" = 1
mqpki token list --asset t1 --json >"$T/tokens.json" || true
assert "token list --json: revoked, then used" \
  test "$(jq -r 'map(.state) | join(",")' "$T/tokens.json")" = revoked,used
# The older token's refusal counted as a failed attempt on the live one.
assert "token list --json: id, asset, times, failures" \
  jqt '.[1] | (.id > 0) and .asset == "t1" and .created_at and .expires_at and
    .failures == 1 and .used_at and (.revoked_at == null)' "$T/tokens.json"
mqpki token list >"$T/tokens.txt" || true
assert "token list shows neither a token nor a hash" bash -c "! grep -qF -e '$old' -e '$new' \
  '$T/tokens.json' '$T/tokens.txt' && ! jq -e '.[] | has(\"hash\") or has(\"salt\") or \
  has(\"token\")' '$T/tokens.json' >/dev/null"
assert "token list (text) has a header and one line per token" \
  test "$(grep -c ' t1 ' "$T/tokens.txt")" = 2

mqpki asset add t2 --kind device >/dev/null
tok=$(mqpki token create t2 --ttl 90s)
id=$(mqpki token list --asset t2 --json | jq '.[0].id') || true
assert "--ttl 90s: 90 seconds" test "$(sqlite3 "$H/mqpki.db" \
  "SELECT expires_at - created_at FROM tokens WHERE id = $id")" = 90
check "token revoke ID" mqpki token revoke "$id"
assert "... says so in one line" test "$(wc -l <"$T/out")" = 1
est_csr t2
assert "a revoked token is refused" test "$(enroll $A t2 "$tok" t2)" = 401
check "token revoke ID again (already revoked)" mqpki token revoke "$id"
assert "... says so" contains "$T/out" "already revoked"
tok=$(mqpki token create t2 --ttl 15m)
check "token revoke --asset" mqpki token revoke --asset t2
assert "... one line" test "$(cat "$T/out")" = "asset t2: 1 token revoked"
assert "a token revoked with its asset is refused" test "$(enroll $A t2 "$tok" t2)" = 401
assert "token list --asset t2: revoked, revoked" test \
  "$(mqpki token list --asset t2 --json | jq -r 'map(.state) | join(",")')" = revoked,revoked
expect_fail 1 "token revoke of an unknown id" mqpki token revoke 9999
expect_fail 1 "token revoke without an argument" mqpki token revoke
expect_fail 1 "--ttl 1 (a bare number) is refused" mqpki token create t2 --ttl 1
assert "... with a hint to give a unit" contains "$T/err" "give a unit"
expect_fail 1 "--ttl 31d is refused" mqpki token create t2 --ttl 31d
check "token list --help" mqpki token list --help
check "token revoke --help" mqpki token revoke --help

# --- 4: authentication first; unknown, decommissioned and wrong look the same ---------------
B=127.0.0.12
mqpki asset add d4 --kind device >/dev/null
mqpki asset add gone --kind device >/dev/null
gone_tok=$(mqpki token create gone)
mqpki asset decommission gone >/dev/null
est_csr d4
for n in known unknown decom; do csr_copy d4 "$n"; done
printf 'bm90IGEgQ1NS\n' >"$T/garbage.b64"
BROKER=/.well-known/est/broker/simpleenroll
# The broker label on a device asset used to get 403 and an unknown id 401, without a token.
assert "known device asset, wrong token, broker label: 401" \
  test "$(enroll $B d4 wrong-token known $BROKER)" = 401
assert "unknown asset, broker label: 401" \
  test "$(enroll $B nosuch wrong-token unknown $BROKER)" = 401
assert "decommissioned asset with its token: 401" \
  test "$(enroll $B gone "$gone_tok" decom $BROKER)" = 401
assert "unknown asset with a garbage CSR: 401, not 400" \
  test "$(enroll $B nosuch wrong-token garbage)" = 401
assert "unknown and known asset: the same answer (headers, body)" same known unknown
assert "decommissioned and known asset: the same answer" same known decom
assert "a 401 asks for Basic credentials" grep -qi '^www-authenticate: basic' "$T/known.h"
assert "audit: every refusal from the address (4)" \
  test "$(audit_count "action = 'enroll.refused' AND actor = 'est:$B'")" = 4
assert "audit: the unknown asset's refusals too (2)" \
  test "$(audit_count "action = 'enroll.refused' AND subject = 'nosuch'")" = 2
assert "the fifth refusal from the address: 401" test "$(enroll $B d4 wrong-again d4)" = 401
tok4=$(mqpki token create d4)
assert "then the address is blocked, valid token or not: 429" \
  test "$(enroll $B d4 "$tok4" d4)" = 429
C=127.0.0.13
assert "authenticated, a broker label on a device asset: 403" \
  test "$(enroll $C d4 "$tok4" known $BROKER)" = 403
assert "... and the token is not spent: 200" test "$(enroll $C d4 "$tok4" d4)" = 200

# --- 5: the challenge is not a failure; many devices behind one address ---------------------
D=127.0.0.14
est_csr nat
for i in $(seq 1 6); do
  curl -sS --interface $D --cacert "$T/chain.pem" -H "Content-Type: application/pkcs10" \
    --data-binary @"$T/nat.b64" -D "$T/challenge.h" -o /dev/null -w '%{http_code} ' \
    "$MQPKID_URL/.well-known/est/simpleenroll" >>"$T/challenge.codes" || true
done
assert "6 requests without credentials: 401 each ($(cat "$T/challenge.codes"))" \
  test "$(cat "$T/challenge.codes")" = "401 401 401 401 401 401 "
assert "the challenge names Basic" grep -qi '^www-authenticate: basic realm=' "$T/challenge.h"
assert "challenges are not audited as refusals" \
  test "$(audit_count "action = 'enroll.refused' AND actor = 'est:$D'")" = 0
codes=""
for i in $(seq 1 20); do
  mqpki asset add "nat$i" --kind device >/dev/null
  tok=$(mqpki token create "nat$i")
  est_csr "nat$i"
  codes="$codes$(enroll $D "nat$i" "$tok" "nat$i" /.well-known/est/simpleenroll --anyauth) "
done
assert "20 enrollments from one address with curl --anyauth: 200 each" \
  test "$codes" = "$(printf '200 %.0s' $(seq 1 20))"
assert "... 20 certificates" \
  test "$(sqlite3 "$H/mqpki.db" "SELECT COUNT(*) FROM certs WHERE asset_id LIKE 'nat%'")" = 20
curl -sS --cacert "$T/chain.pem" "$MQPKID_URL/metrics" >"$T/metrics.txt"
assert "/metrics counts the challenges apart" \
  grep -q 'mqpki_enrollments_total{result="challenge"} [1-9]' "$T/metrics.txt"

# --- 8: HTTP framing; curl will not send these, so raw requests over TLS --------------------
cat >"$T/raw.py" <<'PY'
import socket, ssl, sys, time
# raw.py PORT CAFILE REQUEST: sends REQUEST (\r\n escapes) without the body a header may
# announce, prints the status and how long the answer took ("none" when the server only closed).
ctx = ssl.create_default_context(cafile=sys.argv[2])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))),
                    server_hostname="localhost")
start = time.time()
s.sendall(sys.argv[3].encode().decode("unicode_escape").encode())
s.settimeout(15)
data = b""
try:
    while b"\r\n" not in data:
        d = s.recv(4096)
        if not d:
            break
        data += d
except (socket.timeout, OSError):
    pass
status = data.split(b" ")[1].decode() if data.startswith(b"HTTP/1.1 ") else "none"
print("%s %.1f" % (status, time.time() - start))
PY
raw() { python3 "$T/raw.py" "$MQPKID_PORT" "$T/chain.pem" "$1"; }
# quick RESULT STATUS: raw.py's RESULT is STATUS, answered within 3 s.
quick() {
  awk -v s="$1" -v want="$2" 'BEGIN { split(s, a, " "); exit !(a[1] == want && a[2] < 3) }'
}
POST='POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\n'
POST+='Content-Type: application/pkcs10\r\n'
r=$(raw "${POST}Content-Length: 5\r\nContent-Length: 10\r\n\r\nhello")
assert "conflicting Content-Length headers: 400 at once ($r)" quick "$r" 400
r=$(raw "${POST}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
assert "Content-Length with Transfer-Encoding: 400 at once ($r)" quick "$r" 400
r=$(raw "${POST}Content-Length: 98305\r\n\r\n")
assert "Content-Length above the limit, no body sent: 413 at once ($r)" quick "$r" 413
r=$(raw "${POST}Content-Length: 1073741824\r\nExpect: 100-continue\r\n\r\n")
assert "a 1 GiB body announced with Expect: 100-continue: 413 at once ($r)" quick "$r" 413
assert "mqpkid says why" grep -q "refused (400): conflicting or malformed Content-Length" \
  "$MQPKID_LOG"
# A client that sends the whole oversized body reads the 413 too: the refused connection drains
# what is still coming instead of resetting it.
head -c 300000 /dev/zero | base64 >"$T/big.b64"
codes=""
for i in $(seq 1 10); do
  codes="$codes$(curl -sS --interface 127.0.0.15 --cacert "$T/chain.pem" -u big:x \
    -H "Content-Type: application/pkcs10" --data-binary @"$T/big.b64" -o /dev/null \
    -w '%{http_code}' "$MQPKID_URL/.well-known/est/simpleenroll" 2>/dev/null) " || true
done
assert "a 400 KB body sent in full: 413 each time, never a reset ($codes)" \
  test "$codes" = "$(printf '413 %.0s' $(seq 1 10))"
# A flood of refused requests whose clients keep their sockets open: the lingering sockets are
# bounded (64), so mqpkid's descriptors stay bounded too.
cat >"$T/flood.py" <<'PY'
import os, socket, ssl, sys, threading
port, cafile, pid, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
ctx = ssl.create_default_context(cafile=cafile)
held, refused, lock = [], [0], threading.Lock()
def client(k):
    for i in range(k):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port),
                            source_address=("127.0.0.17", 0)), server_hostname="localhost")
        s.sendall(b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\n"
                  b"Content-Length: 999999999\r\n\r\n" + b"x" * 1000)
        s.settimeout(5)
        ok = s.recv(4096).startswith(b"HTTP/1.1 413")
        with lock:
            refused[0] += ok
            held.append(s)
threads = [threading.Thread(target=client, args=(n // 8,)) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(refused[0], len(os.listdir("/proc/%s/fd" % pid)))
PY
before=$(ls "/proc/$MQPKID_PID/fd" | wc -l)
read -r refused fds < <(python3 "$T/flood.py" "$MQPKID_PORT" "$T/chain.pem" "$MQPKID_PID" 200)
assert "200 refused requests held open: all 413 ($refused)" test "$refused" -eq 200
assert "mqpkid's descriptors stay bounded ($before before, $fds during)" \
  test "$fds" -le $((before + 64 + 8))
assert "mqpkid still serves" test "$(curl -sS --cacert "$T/chain.pem" -o /dev/null \
  -w '%{http_code}' "$MQPKID_URL/.well-known/est/cacerts")" = 200
assert "at most 10 refusals logged a second, the rest counted" bash -c "grep 'refused (413)' \
  '$MQPKID_LOG' | awk '{ n[\$1]++ } END { for (t in n) if (n[t] > 10) exit 1 }' &&
  grep -q 'refusals in the last second not logged' '$MQPKID_LOG'"

# --- 9: a lost answer: the same token and CSR again ------------------------------------------
E=127.0.0.16
mqpki asset add r1 --kind device >/dev/null
tok=$(mqpki token create r1)
est_csr r1
csr_copy r1 r1again
csr_copy r1 r1late
assert "r1 enrolls" test "$(enroll $E r1 "$tok" r1)" = 200
s1=$(serial_of "$T/r1.pem")
# The answer never reached the client (connection dropped after the commit): it tries again.
assert "the same token and CSR again: 200" test "$(enroll $E r1 "$tok" r1again)" = 200
assert "... the certificate already issued (serial $s1)" \
  test "$(serial_of "$T/r1again.pem")" = "$s1"
assert "... no second certificate" \
  test "$(mqpki cert list --asset r1 --json | jq length)" = 1
assert "... no second cert.issue in the audit log" \
  test "$(audit_count "action = 'cert.issue' AND json_extract(detail, '$.asset') = 'r1'")" = 1
assert "token list names the certificate the token enrolled" \
  test "$(mqpki token list --asset r1 --json | jq -r '.[0].serial')" = "$s1"
est_csr r1other
assert "the same token with another CSR: 401" test "$(enroll $E r1 "$tok" r1other)" = 401
sqlite3 "$H/mqpki.db" "UPDATE tokens SET used_at = used_at - 601 WHERE asset_id = 'r1'"
assert "the same token and CSR 10 minutes later: 401" \
  test "$(enroll $E r1 "$tok" r1late)" = 401
check "audit chain intact" mqpki audit verify

# No log line and no audit event holds a token.
leaks=0
for t in "$old" "$new" "$gone_tok" "$tok4" "$tok"; do
  grep -qF -- "$t" "$MQPKID_LOG" && leaks=$((leaks + 1))
  [ "$(sqlite3 "$H/mqpki.db" "SELECT COUNT(*) FROM audit WHERE instr(detail, '$t') > 0")" = 0 ] ||
    leaks=$((leaks + 1))
done
assert "no token in mqpkid's log or the audit log" test "$leaks" -eq 0

finish
