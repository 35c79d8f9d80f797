#!/usr/bin/env bash
# 08-brokers: the broker registry and mqpkid's health. Two bundled brokers on distinct ports both
# get every CRL over links with their own client ids, and the feed never flaps (one connect per
# broker); a duplicate listener is refused; a second mqpkid that cannot listen touches no broker;
# with a broker down /livez and /readyz stay 200 and enrollment works, /metrics (parsed by a
# strict Prometheus text-format parser) shows the link down; `broker remove` stops the link at
# once without a restart.
. "$(dirname "$0")/lib.sh"

H=$MQPKI_HOME
P1=$(free_port)
P2=$(free_port)

check "mqpki init" init_ca
check "broker init b1" mqpki broker init b1 --port "$P1"
expect_fail 1 "broker init refuses b1's listener" mqpki broker init b2 --port "$P1"
assert "and names the broker that has it" contains "$T/err" "already the listener of broker b1"
expect_fail 1 "the wildcard address overlaps too" mqpki broker init b2 --host 0.0.0.0 --port "$P1"
check "broker init b2 on another port" mqpki broker init b2 --port "$P2"

mqpki broker run b1 >"$T/b1.log" 2>&1 &
B1=$!
PIDS+=("$B1")
mqpki broker run b2 >"$T/b2.log" 2>&1 &
B2=$!
PIDS+=("$B2")
check "both brokers listen" wait_for 10 bash -c "(exec 3<>/dev/tcp/127.0.0.1/$P1) && \
  (exec 3<>/dev/tcp/127.0.0.1/$P2)"
# A copy of the data directory, taken while nothing runs, for a second mqpkid below.
cp -a "$H" "$T/home2"
check "mqpkid starts" start_mqpkid
for b in b1 b2; do
  check "feed connects to $b" wait_for 15 grep -q "feed: connected to broker $b" "$MQPKID_LOG"
done

# The copy (its own lock) has a second mqpkid that cannot listen: it must stop before its feed,
# with the same identity and brokers, connects to them.
assert "a second mqpkid that cannot listen exits" bash -c \
  "! mqpkid --home '$T/home2' --listen 127.0.0.1:$MQPKID_PORT 2>'$T/second.log'"
assert "it names the listener" contains "$T/second.log" "cannot listen on 127.0.0.1:$MQPKID_PORT"
assert "it never started its feed" bash -c "! grep -q 'feed:' '$T/second.log'"

# Every CRL reaches both brokers.
for d in dev1 dev2 dev3; do
  mqpki asset add "$d" --kind device >/dev/null
  make_csr "$d"
  mqpki issue --asset "$d" --csr "$T/$d.csr" --out "$T/$d.pem" >/dev/null
done
for d in dev1 dev2 dev3; do
  check "revoke $d" mqpki revoke --asset "$d"
  n=$(mqpki crl --json | jq '.delta.number // .full.number')
  for b in b1 b2; do
    check "$b accepts CRL $n" wait_for 10 grep -q "CRL $n accepted" "$T/$b.log"
  done
done
for b in b1 b2; do
  assert "$b saw mqpkid connect once (no flapping)" \
    test "$(grep -c "as mqpkid-$b-" "$T/$b.log")" = 1
  assert "$b saw no session takeover" bash -c "! grep -q 'already connected' '$T/$b.log'"
done

# b2 down: live and ready, enrollment works; the metric shows the link down.
stop_pid "$B2"
check "feed sees b2 gone" wait_for 10 grep -q "lost broker b2" "$MQPKID_LOG"
code() { curl -sS --cacert "$T/chain.pem" -o "$T/body" -w '%{http_code}' "$MQPKID_URL$1"; }
assert "/livez 200 with a broker down" test "$(code /livez)" = 200
assert "/readyz 200 with a broker down" test "$(code /readyz)" = 200
assert "readyz reports the feed degraded" test "$(jq -r .feed "$T/body")" = degraded
assert "/healthz is /readyz" test "$(code /healthz)" = 200
mqpki asset add dev4 --kind device >/dev/null
tok=$(mqpki token create dev4 2>/dev/null | grep -o '[A-Za-z0-9_-]\{20,\}' | tail -1)
est_csr dev4
assert "enrollment works with a broker down" test "$(est_enroll dev4 "$tok" dev4)" = 200

curl -sS --cacert "$T/chain.pem" "$MQPKID_URL/metrics" >"$T/metrics.txt"
cp "$T/metrics.txt" "$T/metrics-1.txt"
cat >"$T/parse.py" <<'PY'
import sys
try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    text_string_to_metric_families = None
text = open(sys.argv[1]).read()
def key(name, labels):
    inner = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return name + ("{" + inner + "}" if inner else "")
samples = {}
if text_string_to_metric_families is not None:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[key(s.name, s.labels)] = s.value
else:
    # A strict subset of the text format: HELP/TYPE lines, then NAME{LABELS} VALUE.
    import re
    line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"'
                         r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*")*)\})? (-?[0-9.e+-]+|[+-]Inf|NaN)$')
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = line_re.match(line)
        if not m:
            sys.exit("bad line: " + line)
        labels = dict(kv.split("=", 1) for kv in (m.group(3) or "").split(",") if kv)
        samples[key(m.group(1), {k: v.strip('"') for k, v in labels.items()})] = float(m.group(5))
for k in sys.argv[2:]:
    print(samples[k])
PY
m() { python3 "$T/parse.py" "$T/metrics.txt" "$@"; }
check "metrics parse (Prometheus text format)" m
assert "b1 link up" test "$(m 'mqpki_broker_link_up{broker=b1}')" = 1.0
assert "b2 link down" test "$(m 'mqpki_broker_link_up{broker=b2}')" = 0.0
n=$(mqpki crl --json | jq '.brokers[] | select(.broker == "b1") | .delta')
assert "b1's acknowledged delta CRL" \
  test "$(m 'mqpki_broker_crl_number{broker=b1,kind=delta}')" = "$n.0"
assert "build info" test "$(m "mqpki_build_info{version=$(mqpkid --version | cut -d' ' -f2)}")" = 1.0
t=$(m 'mqpki_ca_not_after_timestamp_seconds{ca=issuing}' | cut -d. -f1)
assert "issuing CA expiry" test "$t" -gt "$(date +%s)"
t=$(m 'mqpki_leaf_not_after_earliest_timestamp_seconds{ca=issuing}' | cut -d. -f1)
assert "earliest leaf expiry" test "$t" -gt "$(date +%s)"
assert "nothing expires within 7 days" \
  test "$(m 'mqpki_certificates_expiring{ca=issuing,within=7d}')" = 0.0
assert "assets by state: 3 revoked" test "$(m 'mqpki_assets{state=revoked}')" = 3.0
assert "assets by state: 4 enrolled (b1, b2, mqpkid, dev4)" test "$(m 'mqpki_assets{state=enrolled}')" = 4.0

# broker remove: mqpkid stops the link at once, without a restart.
check "broker remove b2" mqpki broker remove b2
assert "it says mqpkid stopped the link" contains "$T/out" "mqpkid stopped its feed link"
assert "the link is stopped" grep -q "broker b2 removed or decommissioned; link stopped" \
  "$MQPKID_LOG"
assert "brokers/b2 is gone" test ! -e "$H/brokers/b2"
assert "b2 is decommissioned" test "$(mqpki asset show b2 --json | jq -r .state)" = decommissioned
curl -sS --cacert "$T/chain.pem" "$MQPKID_URL/metrics" >"$T/metrics.txt"
assert "b2 left the metrics" bash -c "! grep -q 'broker=\"b2\"' '$T/metrics.txt'"
expect_fail 1 "removing it again" mqpki broker remove b2
assert "mqpkid still runs (no restart)" alive "$MQPKID_PID"
# Decommissioning a broker's asset stops its link too, with no restart and no file removed.
check "asset decommission b1" mqpki asset decommission b1
check "b1's link stops" wait_for 10 grep -q "broker b1 removed or decommissioned; link stopped" \
  "$MQPKID_LOG"
assert "mqpkid still runs" alive "$MQPKID_PID"
finish
