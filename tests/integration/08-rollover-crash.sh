#!/usr/bin/env bash
# 08-rollover-crash: `mqpki ca rollover` killed (SIGKILL, strace fault injection) at every file
# replacement and at every fourth write (the token's key files among them), and `mqpki ca
# retire` at every file replacement. Each time, on a copy of the same CA, a second run finishes
# what the first left (or makes the next generation when the first had finished), and then the
# CA is whole: ca/issuing.pem is one of ca/issuers/, the
# chain starts with it, its token key signs certificates that verify under the chain, a CRL is
# signed and the first run never left two new generations.
. "$(dirname "$0")/lib.sh"

command -v strace >/dev/null || { echo "# strace missing (scripts/install-deps.sh)"; exit 1; }
check "mqpki init" init_ca
PRISTINE=$T/pristine
make_csr dev
mqpki asset add dev --kind device >/dev/null
cp -a "$MQPKI_HOME" "$PRISTINE"
rm -rf "$MQPKI_HOME"

# How many of each call a whole rollover makes, on a copy (the data directory is relocatable).
cp -a "$PRISTINE" "$T/count"
strace -f -qq -c -e trace=rename,write -o "$T/count.txt" mqpki --home "$T/count" ca rollover \
  >/dev/null 2>&1
RENAMES=$(awk '$NF == "rename" { print $4 }' "$T/count.txt")
WRITES=$(awk '$NF == "write" { print $4 }' "$T/count.txt")
assert "a rollover replaces files and writes ($RENAMES renames, $WRITES writes)" \
  test "${RENAMES:-0}" -gt 3 -a "${WRITES:-0}" -gt 10

# whole HOME: the invariants of a CA after a rollover, killed or not.
whole() {
  local h=$1 cur n
  mqpki --home "$h" ca list --json >"$T/list.json" 2>"$T/list.err" || { cat "$T/list.err"; return 1; }
  cur=$(jq '.[] | select(.state == "current") | .generation' "$T/list.json")
  n=$(jq length "$T/list.json")
  [ -n "$cur" ] && [ "$cur" -ge 2 ] && [ "$n" -le 3 ] || { echo "generations: $(cat "$T/list.json")"; return 1; }
  cmp -s "$h/ca/issuing.pem" "$h/ca/issuers/$cur.pem" || { echo "issuing.pem is not generation $cur"; return 1; }
  [ "$(openssl x509 -in "$h/ca/chain.pem" -noout -fingerprint)" = \
    "$(openssl x509 -in "$h/ca/issuing.pem" -noout -fingerprint)" ] || { echo "chain.pem does not start with it"; return 1; }
  mqpki --home "$h" issue --asset dev --csr "$T/dev.csr" --out "$T/dev.pem" >/dev/null 2>"$T/issue.err" ||
    { cat "$T/issue.err"; return 1; }
  openssl verify -CAfile "$h/ca/chain.pem" "$T/dev.pem" >/dev/null 2>&1 || { echo "the certificate does not verify"; return 1; }
  mqpki --home "$h" crl publish >/dev/null 2>&1 || { echo "no CRL"; return 1; }
  mqpki --home "$h" audit verify >/dev/null 2>&1 || { echo "audit verify"; return 1; }
}

# kill_at SYSCALL N: the first run dies at the Nth call, the second runs whole.
bad=0 runs=0 resumed=0
kill_at() {
  local h=$T/run-$1-$2
  cp -a "$PRISTINE" "$h"
  strace -f -qq -o /dev/null -e trace="$1" -e inject="$1":signal=KILL:when="$2" \
    mqpki --home "$h" ca rollover >/dev/null 2>&1 || true
  if ! mqpki --home "$h" ca rollover --json >"$T/second.json" 2>"$T/second.err"; then
    echo "# kill at $1 #$2: the second run failed: $(cat "$T/second.err")"
    bad=$((bad + 1))
  elif ! whole "$h" >"$T/whole.out" 2>&1; then
    echo "# kill at $1 #$2: $(head -3 "$T/whole.out")"
    bad=$((bad + 1))
  fi
  [ "$(jq .resumed "$T/second.json" 2>/dev/null)" = true ] && resumed=$((resumed + 1))
  runs=$((runs + 1))
  rm -rf "$h"
}
for i in $(seq 1 "$RENAMES"); do kill_at rename "$i"; done
for i in $(seq 1 4 "$WRITES"); do kill_at write "$i"; done
assert "after each of $runs kills the next run leaves a whole CA" test "$bad" = 0
assert "some second runs finished an interrupted rollover ($resumed)" test "$resumed" -gt 0

# ca retire killed at each file replacement (the mark, then the chain): the next run finishes
# it; generation 1 is retired and gone from the chain, generation 2 still signs.
ROLLED=$T/rolled
cp -a "$PRISTINE" "$ROLLED"
mqpki --home "$ROLLED" ca rollover >/dev/null 2>&1
cp -a "$ROLLED" "$T/count-retire"
strace -f -qq -c -e trace=rename -o "$T/count-retire.txt" mqpki --home "$T/count-retire" ca retire 1 \
  >/dev/null 2>&1
RRENAMES=$(awk '$NF == "rename" { print $4 }' "$T/count-retire.txt")
assert "a retire replaces files ($RRENAMES renames)" test "${RRENAMES:-0}" -ge 2
bad=0
for i in $(seq 1 "$RRENAMES"); do
  h=$T/retire-$i
  cp -a "$ROLLED" "$h"
  strace -f -qq -o /dev/null -e trace=rename -e inject=rename:signal=KILL:when="$i" \
    mqpki --home "$h" ca retire 1 >/dev/null 2>&1 || true
  if ! mqpki --home "$h" ca retire 1 >/dev/null 2>"$T/retire.err"; then
    echo "# kill at rename #$i: the second retire failed: $(cat "$T/retire.err")"
    bad=$((bad + 1))
  elif [ "$(mqpki --home "$h" ca list --json | jq -c '[.[] | .state]')" != '["retired","current"]' ] ||
    [ "$(grep -c 'BEGIN CERTIFICATE' "$h/ca/chain.pem")" != 2 ] || ! whole "$h" >/dev/null 2>&1; then
    echo "# kill at rename #$i: generation 1 not retired cleanly"
    bad=$((bad + 1))
  fi
  rm -rf "$h"
done
assert "after each kill of ca retire the next run finishes it" test "$bad" = 0

finish
