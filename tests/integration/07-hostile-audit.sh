#!/usr/bin/env bash
# 07-hostile-audit: the audit log against an insider who can write mqpki.db. The chain's links
# are plain SHA-256, so such an insider can edit an event and recompute every later hash and
# the head; what stops them is the checkpoints the audit key (in the token, certified by the
# root) signs, kept in the store, beside the CRLs and retained on the brokers. Rewriting the
# chain, forging a checkpoint with another key, and deleting checkpoints must all make
# `mqpki audit verify` fail (exit 1) naming what is wrong; a data directory from before gets
# its audit key the first time the token is opened.
. "$(dirname "$0")/lib.sh"

H=$MQPKI_HOME
DB=$H/mqpki.db
check "mqpki init" init_ca

# The audit key's certificate is the root's, and mqpki.conf pins the same key.
check "ca/audit.pem is certified by the root" openssl verify -CAfile "$H/ca/root.pem" \
  "$H/ca/audit.pem"
openssl x509 -in "$H/ca/audit.pem" -pubkey -noout >"$T/audit-pub.pem"
FP=$(openssl pkey -pubin -in "$T/audit-pub.pem" -outform DER | sha256sum | cut -d' ' -f1)
assert "mqpki.conf pins the audit key" grep -qx "key_fingerprint = $FP" "$H/mqpki.conf"
assert "crl/audit-checkpoint.json is 0644" test "$(stat -c %a "$H/crl/audit-checkpoint.json")" = 644
check "init signed a first checkpoint" mqpki audit verify
assert "verify names the last checkpoint" grep -q "last verified checkpoint: 1 at event" "$T/out"

# The signed bytes as docs/security.md gives them, checked with OpenSSL alone (no mqpki code):
# magic with its NUL, id, seq, head, time (8-byte big-endian each but the 32-byte head).
ext_verify() {
  python3 - "$1" "$T/tbs.bin" "$T/sig.der" <<'EOF'
import base64, json, struct, sys
c = json.load(open(sys.argv[1]))
tbs = (b"mqpki-audit-checkpoint/v1\0" + struct.pack(">QQ", c["id"], c["seq"]) +
       bytes.fromhex(c["head"]) + struct.pack(">q", c["time"]))
open(sys.argv[2], "wb").write(tbs)
open(sys.argv[3], "wb").write(base64.b64decode(c["signature"]))
EOF
  openssl dgst -sha256 -verify "$T/audit-pub.pem" -signature "$T/sig.der" "$T/tbs.bin" >/dev/null
}
check "the exported checkpoint verifies with openssl and ca/audit.pem" \
  ext_verify "$H/crl/audit-checkpoint.json"

# A broker and mqpkid: checkpoints on every CRL publication, retained on the control plane.
P=$(free_port)
check "broker init b1" mqpki broker init b1 --port "$P"
mqpki broker run b1 >"$T/broker.log" 2>&1 &
PIDS+=("$!")
check "broker b1 listening" wait_for 10 listening "$P"
check "start mqpkid" start_mqpkid
check "the feed reaches b1" wait_for 15 grep -q "full CRL .* accepted" "$T/broker.log"
TLS=(-h 127.0.0.1 -p "$P" --cafile "$T/chain.pem" --cert "$H/tls/mqpkid.pem"
  --key "$H/tls/mqpkid.key")
# The broker's retained copy, fetched as an auditor would (here with mqpkid's own identity).
broker_copy() {
  mosquitto_sub "${TLS[@]}" -i mqpkid:audit -t mqpki/v1/audit/checkpoint -C 1 -W 5 >"$1"
}
store_id() { sqlite3 "$DB" "SELECT IFNULL(MAX(id), 0) FROM audit_checkpoints"; }
head_seq() { sqlite3 "$DB" "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'audit.head'"; }
json_id() { jq -r .id "$1" 2>/dev/null; }
copy_is_newest() { broker_copy "$T/b.json" && [ "$(json_id "$T/b.json")" = "$(store_id)" ]; }

check "asset add d1" mqpki asset add d1 --kind device
make_csr d1
check "issue d1" mqpki issue --asset d1 --csr "$T/d1.csr" --out "$T/d1.pem"
check "revoke d1" mqpki revoke --asset d1 --reason key-compromise
covered() {
  [ "$(jq -r .seq "$H/crl/audit-checkpoint.json")" = "$(head_seq)" ]
}
check "the revocation's publication is anchored by a checkpoint" wait_for 10 covered
check "b1 holds the newest checkpoint, retained" wait_for 10 copy_is_newest
check "the broker's copy verifies with openssl" ext_verify "$T/b.json"

# A command with mqpkid running signs through its control socket: mqpkid holds the token.
check "asset add d2" mqpki asset add d2 --kind device
check "audit checkpoint with mqpkid running" mqpki audit checkpoint
assert "it was signed by mqpkid" grep -q "^signed checkpoint .*(by mqpkid)" "$T/out"
check "... and reaches b1" wait_for 10 copy_is_newest
check "audit verify --json: intact" mqpki audit verify --json
assert "--json names the last checkpoint and the key" \
  jq -e --arg fp "$FP" '.intact and .unanchored_events == 0 and .last_checkpoint.id > 2
    and .audit_key_fingerprint == $fp and (.published | length) == 1' "$T/out" >/dev/null

# [audit] checkpoint_every: mqpkid anchors what happened without any publication.
stop_pid "$MQPKID_PID"
sed -i 's/^checkpoint_every = .*/checkpoint_every = 2s/' "$H/mqpki.conf"
check "restart mqpkid with checkpoint_every = 2s" start_mqpkid
check "asset add d3" mqpki asset add d3 --kind device
check "mqpkid signs a checkpoint on its timer" wait_for 10 covered
check "b1 gets it" wait_for 10 copy_is_newest
stop_pid "$MQPKID_PID"
check "the broker's newest copy" wait_for 10 copy_is_newest
cp "$T/b.json" "$T/broker.json"

# From here on the insider works on the database alone; each case starts from this state.
sqlite3 "$DB" ".backup '$T/good.db'"
cp "$H/crl/audit-checkpoint.json" "$T/good.json"
cp "$H/mqpki.conf" "$T/good.conf"
cp "$H/ca/audit.pem" "$T/good.pem"
restore() {
  cp "$T/good.db" "$DB"
  rm -f "$DB-wal" "$DB-shm"
  cp "$T/good.json" "$H/crl/audit-checkpoint.json"
  cp "$T/good.conf" "$H/mqpki.conf"
  cp "$T/good.pem" "$H/ca/audit.pem"
}
check "intact before the insider" mqpki audit verify

# 1. The review's case: edit an event, recompute every later hash and the head (the hash input
#    of inventory/audit.c: each field with a 4-byte big-endian length, seq and time as 8 bytes).
cat >"$T/rewrite.py" <<'EOF'
import hashlib, sqlite3, struct, sys
db = sqlite3.connect(sys.argv[1])
def f(b): return struct.pack(">I", len(b)) + b
def n(v): return f(struct.pack(">q", v))
db.execute("UPDATE audit SET actor = 'mallory' WHERE seq = ?", (int(sys.argv[2]),))
prev, last = bytes(32), 0
rows = db.execute("SELECT seq, time, actor, action, subject, detail FROM audit ORDER BY seq")
for seq, time, actor, action, subject, detail in rows.fetchall():
    h = hashlib.sha256(f(prev) + n(seq) + n(time) + f(actor.encode()) + f(action.encode()) +
                       f(subject.encode()) + f(detail.encode())).digest()
    db.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, h, seq))
    prev, last = h, seq
db.execute("UPDATE meta SET value = ? WHERE key = 'audit.head'", ("%d %s" % (last, prev.hex()),))
db.commit()
EOF
check "insider rewrites event 3 and recomputes the chain" python3 "$T/rewrite.py" "$DB" 3
expect_fail 1 "rewritten chain detected by the first checkpoint" mqpki audit verify
assert "the detail names checkpoint 1" grep -q "checkpoint 1 (event" "$T/err"
mqpki audit verify --json >"$T/v.json" 2>/dev/null || true
assert "--json: not intact, bad_checkpoint 1" jq -e '.intact == false and .bad_checkpoint == 1' \
  "$T/v.json" >/dev/null
# The rewrite is a correct one: with the anchor gone, the plain chain alone accepts it.
sqlite3 "$DB" "DELETE FROM audit_checkpoints"
rm "$H/crl/audit-checkpoint.json" "$H/ca/audit.pem"
sed -i '/^key_fingerprint/d' "$H/mqpki.conf"
check "(without any anchor the plain chain accepts the rewrite)" mqpki audit verify
restore
check "restored" mqpki audit verify

# 2. A forged checkpoint: the insider's own key signs the head in the documented format.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/mallory.key" 2>/dev/null
forge() {
  python3 - "$DB" "$T/tbs.bin" <<'EOF'
import sqlite3, struct, sys, time
db = sqlite3.connect(sys.argv[1])
cid = db.execute("SELECT MAX(id) + 1 FROM audit_checkpoints").fetchone()[0]
seq, head = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
now = int(time.time())
open(sys.argv[2], "wb").write(b"mqpki-audit-checkpoint/v1\0" + struct.pack(">QQ", cid, seq) +
                              head + struct.pack(">q", now))
print(cid, seq, head.hex(), now)
EOF
}
read -r CID CSEQ CHEAD CTIME < <(forge)
openssl dgst -sha256 -sign "$T/mallory.key" -out "$T/forged.sig" "$T/tbs.bin"
sqlite3 "$DB" "INSERT INTO audit_checkpoints VALUES($CID, $CSEQ, X'$CHEAD', $CTIME,
  'mqpki-audit', X'$(od -An -tx1 -v "$T/forged.sig" | tr -d ' \n')')"
expect_fail 1 "checkpoint signed by another key detected" mqpki audit verify
assert "the detail names the forged checkpoint" grep -q "checkpoint $CID (event $CSEQ).*forged" \
  "$T/err"
restore
# A genuine signature moved onto other content.
sqlite3 "$DB" "UPDATE audit_checkpoints SET seq = seq - 1 WHERE id = 2"
expect_fail 1 "checkpoint row edited under its signature" mqpki audit verify
restore

# 3. Removed checkpoints. One in the middle leaves a hole in the signed numbers.
sqlite3 "$DB" "DELETE FROM audit_checkpoints WHERE id = 2"
expect_fail 1 "removed checkpoint 2 detected" mqpki audit verify
assert "the detail names checkpoint 2" grep -q "checkpoint 2 is missing" "$T/err"
restore
# The newest ones: the copy beside the CRLs still holds the newest.
sqlite3 "$DB" "DELETE FROM audit_checkpoints WHERE id = $(store_id)"
expect_fail 1 "removed newest checkpoint detected by crl/audit-checkpoint.json" mqpki audit verify
assert "the detail says it is missing from the store" grep -q "missing from the store" "$T/err"
# ... and with that file removed too, the broker's retained copy still holds it.
BID=$(json_id "$T/broker.json")
sqlite3 "$DB" "DELETE FROM audit_checkpoints WHERE id >= $BID"
rm "$H/crl/audit-checkpoint.json"
check "(the store alone cannot show a removed newest checkpoint: the documented limit)" \
  mqpki audit verify
expect_fail 1 "the broker's copy shows it" mqpki audit verify --checkpoint "$T/broker.json"
assert "the detail names the broker's copy" \
  grep -q "checkpoint $BID (event .*broker.json) is missing" "$T/err"
# All of them removed while the audit key exists.
restore
sqlite3 "$DB" "DELETE FROM audit_checkpoints"
rm "$H/crl/audit-checkpoint.json"
expect_fail 1 "no checkpoint at all while the audit key exists" mqpki audit verify
restore
# A copy that is not what the audit key signed is named as such.
jq -c '.seq = 1' "$T/broker.json" >"$T/bad.json"
expect_fail 1 "a doctored copy is refused" mqpki audit verify --checkpoint "$T/bad.json"
check "the genuine copies verify" mqpki audit verify --checkpoint "$T/broker.json"

# 4. A data directory from before audit checkpoints: no audit key in the token, no
#    ca/audit.pem, no checkpoint. The first command that opens the token makes the key (logged),
#    certifies it and signs a first checkpoint.
cat >"$T/p11destroy.py" <<'EOF'
# Destroys the objects labelled LABEL in token TOKEN of a PKCS#11 module (only those of class
# CLASS, a CKO_ number, when given); prints how many.
import ctypes, sys
mod = sys.argv[1]
token, pin, label = (a.encode() for a in sys.argv[2:5])
cls = int(sys.argv[5]) if len(sys.argv) > 5 else None
U = ctypes.c_ulong
p11 = ctypes.CDLL(mod)
def ok(rv, what):
    if rv != 0:
        sys.exit("%s: CKR 0x%x" % (what, rv))
class Attr(ctypes.Structure):
    _fields_ = [("type", U), ("value", ctypes.c_void_p), ("len", U)]
ok(p11.C_Initialize(None), "C_Initialize")
n = U(0)
ok(p11.C_GetSlotList(ctypes.c_ubyte(1), None, ctypes.byref(n)), "C_GetSlotList")
slots = (U * n.value)()
ok(p11.C_GetSlotList(ctypes.c_ubyte(1), slots, ctypes.byref(n)), "C_GetSlotList")
slot = None
for s in slots[:n.value]:
    info = ctypes.create_string_buffer(512)
    ok(p11.C_GetTokenInfo(U(s), info), "C_GetTokenInfo")
    if info.raw[:32].rstrip(b" ") == token:
        slot = s
if slot is None:
    sys.exit("no token %r" % token)
h = U(0)
ok(p11.C_OpenSession(U(slot), U(4 | 2), None, None, ctypes.byref(h)), "C_OpenSession")
ok(p11.C_Login(h, U(1), pin, U(len(pin))), "C_Login")
buf = ctypes.create_string_buffer(label, len(label))
cval = U(cls if cls is not None else 0)
tmpl = (Attr * 2)(Attr(3, ctypes.cast(buf, ctypes.c_void_p), len(label)),  # CKA_LABEL
                  Attr(0, ctypes.cast(ctypes.byref(cval), ctypes.c_void_p),
                       ctypes.sizeof(cval)))  # CKA_CLASS
ok(p11.C_FindObjectsInit(h, tmpl, U(1 if cls is None else 2)), "C_FindObjectsInit")
objs, count = (U * 16)(), U(0)
ok(p11.C_FindObjects(h, objs, U(16), ctypes.byref(count)), "C_FindObjects")
ok(p11.C_FindObjectsFinal(h), "C_FindObjectsFinal")
for o in objs[:count.value]:
    ok(p11.C_DestroyObject(h, U(o)), "C_DestroyObject")
p11.C_Logout(h)
p11.C_Finalize(None)
print(count.value)
EOF
p11destroy() { # [CLASS]: destroys the audit key's objects (of CLASS); prints how many
  SOFTHSM2_CONF="$H/hsm/softhsm2.conf" python3 "$T/p11destroy.py" \
    /usr/lib/softhsm/libsofthsm2.so mqpki "$(cat "$H/secrets/pin")" mqpki-audit "$@"
}
old_files() {
  rm "$H/ca/audit.pem" "$H/crl/audit-checkpoint.json" &&
    sqlite3 "$DB" "DELETE FROM audit_checkpoints" && sed -i '/^key_fingerprint/d' "$H/mqpki.conf"
}
old_dir() { p11destroy >"$T/destroyed" && [ "$(cat "$T/destroyed")" = 2 ] && old_files; }
check "a data directory without the audit key" old_dir
check "verify: no audit key yet, plain chain only" mqpki audit verify
assert "... and it says so" grep -q "no audit key yet" "$T/out"
check "the first command that opens the token" mqpki crl publish
assert "the new key is logged" grep -q "generated the audit key 'mqpki-audit'" "$T/err"
check "its certificate is the root's" openssl verify -CAfile "$H/ca/root.pem" "$H/ca/audit.pem"
check "the upgraded directory verifies with signed checkpoints" mqpki audit verify
assert "... anchored up to the head" grep -q "signed checkpoints verified" "$T/out"
assert "... and the new key is not the old one" \
  test "$(openssl x509 -in "$H/ca/audit.pem" -pubkey -noout)" != "$(cat "$T/audit-pub.pem")"

# 5. The upgrade killed. SoftHSM writes a key pair as two object files, so a generation killed
#    between them leaves a public half alone; the next generation removes it. First made by
#    hand (the private half destroyed), then by SIGKILL at every other write() of the upgrade:
#    after each, the next command ends with one key pair and checkpoints that verify.
check "a data directory without the audit key, again" old_dir
mqpki crl publish >/dev/null 2>&1
assert "(the private half destroyed: an orphan public key)" test "$(p11destroy 3)" = 1
rm -f "$H/ca/audit.pem"
check "the next command" mqpki crl publish
assert "it removes the orphan" grep -q "without a private key removed" "$T/err"
assert "one key pair in the token (counted by destroying it)" test "$(p11destroy)" = 2
check "back to a data directory without the audit key" old_files
rm -rf "$T/before" && cp -a "$H" "$T/before"
bad="" n=1 killed=0
while :; do
  rm -rf "$H" && cp -a "$T/before" "$H"
  rc=0
  strace -f -o /dev/null -e trace=write -e inject=write:signal=KILL:when=$n \
    mqpki crl publish >/dev/null 2>&1 || rc=$?
  [ "$rc" -eq 137 ] || break
  killed=$((killed + 1))
  # The pair is counted by destroying it: the next round starts from the copy anyway.
  if ! mqpki crl publish >/dev/null 2>&1 || ! mqpki audit verify >"$T/v" 2>&1 ||
    ! grep -q "signed checkpoints verified" "$T/v" || [ "$(p11destroy)" != 2 ]; then
    bad="$bad $n"
  fi
  n=$((n + 2))
done
assert "the upgrade killed at $killed writes: each time one key pair and signed checkpoints \
after the next command${bad:+ (not after write$bad)}" test -z "$bad" -a "$killed" -gt 10
finish
