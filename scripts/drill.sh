#!/usr/bin/env bash
# A recovery drill on the field message bus (`make drill`, docs/operations.md "Recovery drill"):
# the five devices of the demo (tablet, meter, dms, capbank, supply) run their agents on the
# bundled broker; an online backup is taken; the CA host is lost (mqpkid, the broker and the
# data directory gone); the backup is restored on another path, mqpkid and the broker start
# from it, a campaign has every device renew and reconnect, and the certificates from before
# the loss are revoked. Then the issuing CA's key is compromised: `mqpki ca rollover` makes a new
# one, a campaign moves the devices onto it, the old key's certificates are revoked and it is
# retired. It ends with the time each phase took.
#
# Environment (optional): MQPKI_BUILD (build directory, default build/), MQPKI_DRILL_DIR
# (working directory, emptied first, default build/drill). Exit 0 only when every step passed.
# Every process started here is stopped on exit.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${MQPKI_BUILD:-$REPO/build}" && pwd)
DRILL=${MQPKI_DRILL_DIR:-$REPO/build/drill}
ROLES=(tablet meter dms capbank supply)
export PATH="$BUILD/bin:$PATH"
unset MQPKI_PIN MQPKI_DEVICE_SECRET MQPKI_DEVICE_TOKEN

rm -rf "$DRILL"
mkdir -p "$DRILL"
H=$DRILL/site-a/pki
R=$DRILL/site-b/pki
export MQPKI_HOME=$H
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

die() { echo "drill: FAILED: $*" >&2; exit 1; }
now() { date +%s%N; }
PHASES=()
phase_start() { PHASE=$1; T0=$(now); echo "== $PHASE"; }
phase_end() { PHASES+=("$(awk -v p="$PHASE" -v a="$T0" -v b="$(now)" 'BEGIN { printf "%-38s %8.2f s", p, (b - a) / 1e9 }')"); }
wait_until() { # SECONDS COMMAND...
  local limit=$(($1 * 10)) i=0; shift
  until "$@" 2>/dev/null; do i=$((i + 1)); [ "$i" -ge "$limit" ] && return 1; sleep 0.1; done
}
free_port() {
  python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
connects() { [ "$(grep -c "as $1 " "$2")" -ge "$3" ]; }

BPORT=$(free_port)
DPORT=$(free_port)
URL="https://localhost:$DPORT"

start_site() { # HOME LOGTAG
  mqpki --home "$1" broker run bus >"$DRILL/broker-$2.log" 2>&1 &
  BROKER=$!
  PIDS+=("$BROKER")
  wait_until 10 listening "$BPORT" || die "the broker of $2 does not listen"
  mqpkid --home "$1" --listen "127.0.0.1:$DPORT" 2>"$DRILL/mqpkid-$2.log" &
  MQPKID=$!
  PIDS+=("$MQPKID")
  wait_until 30 grep -q "feed: connected to broker bus" "$DRILL/mqpkid-$2.log" ||
    die "mqpkid of $2 does not reach its broker"
}

phase_start "set-up: CA, broker, five devices"
mqpki init --ca-name "Field bus" --url "$URL" >/dev/null 2>"$DRILL/init.log" || die "mqpki init"
mqpki ca export --out "$DRILL/chain.pem"
mqpki broker init bus --host localhost --port "$BPORT" >/dev/null
start_site "$H" a
for d in "${ROLES[@]}"; do
  mqpki asset add "$d" --kind device --tag role="$d" >/dev/null
  mqpki token create "$d" >"$DRILL/$d.token"
  chmod 600 "$DRILL/$d.token"
  mqpki-device --dir "$DRILL/dev/$d" enroll --server "$URL" --ca "$DRILL/chain.pem" --asset "$d" \
    --token-file "$DRILL/$d.token" >/dev/null || die "enroll $d"
  mqpki-device --dir "$DRILL/dev/$d" run --broker "mqtts://localhost:$BPORT" \
    2>"$DRILL/agent-$d.log" &
  PIDS+=("$!")
done
for d in "${ROLES[@]}"; do
  wait_until 20 connects "$d" "$DRILL/broker-a.log" 1 || die "$d does not connect"
done
phase_end

phase_start "online backup"
mqpki backup --out "$DRILL/backup.tar" || die "backup"
mqpki cert list --state valid --json | jq -r '.[].serial' | sort >"$DRILL/serials-before"
phase_end

phase_start "loss of the CA host"
kill "$MQPKID" "$BROKER"
wait "$MQPKID" "$BROKER" 2>/dev/null || true
mv "$DRILL/site-a" "$DRILL/site-a.lost"
echo "site-a is gone: mqpkid, broker and data directory"
phase_end

phase_start "restore on site-b"
PIN=$(cat "$DRILL/site-a.lost/pki/secrets/pin") # kept apart from the backup, in a safe
mkdir -p "$DRILL/site-b"
MQPKI_PIN=$PIN mqpki restore "$DRILL/backup.tar" --home "$R" || die "restore"
export MQPKI_HOME=$R
start_site "$R" b
for d in "${ROLES[@]}"; do
  wait_until 60 connects "$d" "$DRILL/broker-b.log" 1 || die "$d does not come back"
done
phase_end

phase_start "campaign: every device renews"
mqpki campaign renew --all --rate 20 || die "campaign renew"
renewed() { [ "$(mqpki campaign status --json | jq .counts.renewed)" = "${#ROLES[@]}" ]; }
wait_until 60 renewed || { mqpki campaign status; die "not every device renewed"; }
for d in "${ROLES[@]}"; do
  wait_until 30 connects "$d" "$DRILL/broker-b.log" 2 || die "$d does not reconnect"
done
mqpki campaign status
phase_end

phase_start "old certificates revoked"
mqpki campaign finish --revoke-old || die "campaign finish"
while read -r s; do
  state=$(mqpki cert list --json | jq -r --arg s "$s" '.[] | select(.serial == $s) | .state')
  [ "$state" = revoked ] || die "certificate $s from before the loss is $state"
done < <(comm -12 "$DRILL/serials-before" <(mqpki cert list --json | jq -r \
  '.[] | select(.profile == "device") | .serial' | sort))
mqpki audit verify >/dev/null || die "audit verify"
phase_end

# The second story: the issuing CA's key is compromised. A new key takes over (same root, same
# name), the devices move to it, and the old key is revoked out of the fleet and retired.
akid_of() { openssl x509 -in "$1" -noout -ext authorityKeyIdentifier | sed -n 's/^ *\(keyid:\)\{0,1\}\([0-9A-F:]*\)$/\2/p'; }
skid_of() { openssl x509 -in "$1" -noout -ext subjectKeyIdentifier | sed -n 's/^ *\([0-9A-F:]*\)$/\1/p'; }
phase_start "issuing CA key compromised: rollover"
mqpki ca rollover >/dev/null || die "ca rollover"
wait_until 10 grep -q "trusting 2 issuing CA keys" "$DRILL/broker-b.log" ||
  die "the broker did not learn the new issuing CA from the feed"
mqpki ca list
phase_end

phase_start "campaign onto the new key"
mqpki campaign renew --issuer 1 --rate 20 || die "campaign renew --issuer 1"
wait_until 60 renewed || { mqpki campaign status; die "not every device renewed onto the new key"; }
NEW=$(skid_of "$R/ca/issuers/2.pem")
for d in "${ROLES[@]}"; do
  [ "$(akid_of "$DRILL/dev/$d/cert.pem")" = "$NEW" ] || die "$d is not on the new key"
  wait_until 30 connects "$d" "$DRILL/broker-b.log" 3 || die "$d does not reconnect"
done
phase_end

phase_start "old key revoked out and retired"
mqpki campaign finish --revoke-old || die "campaign finish"
mqpki ca retire 1 || die "ca retire 1"
wait_until 10 grep -q "trusting 1 issuing CA key" "$DRILL/broker-b.log" ||
  die "the broker still trusts the compromised key"
for d in "${ROLES[@]}"; do
  mqpki-sensor "$DRILL/dev/$d" "mqtts://localhost:$BPORT" >/dev/null 2>&1 || die "$d cannot publish"
done
mqpki audit verify >/dev/null || die "audit verify"
phase_end

echo
echo "drill passed: ${#ROLES[@]} devices back in service on the restored CA, then on a new issuing CA key"
printf '%s\n' "${PHASES[@]}"
