#!/usr/bin/env bash
# 12-logs: mqpkid's log lines. Text by default, JSON with --log-format json or [log] format;
# [log] level; a timestamp on every line.
. "$(dirname "$0")/lib.sh"

H=$MQPKI_HOME
check "mqpki init" init_ca
iso='^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z'

check "mqpkid (text)" start_mqpkid
curl -sS --cacert "$T/chain.pem" "$MQPKID_URL/livez" >/dev/null
stop_pid "$MQPKID_PID"
assert "text lines start with an ISO 8601 time" bash -c "! grep -Ev '$iso (error|warn|info|debug): ' \
  '$MQPKID_LOG'"
assert "no debug lines at the default level" bash -c "! grep -q ' debug: ' '$MQPKID_LOG'"

check "mqpkid --log-format json" start_mqpkid --log-format json
stop_pid "$MQPKID_PID"
assert "every line is a JSON object with time, level and msg" bash -c "jq -e -s 'length > 3 and \
  all(.[]; (.time | test(\"$iso\")) and (.level | IN(\"error\",\"warn\",\"info\",\"debug\")) and \
  (.msg | type == \"string\"))' '$MQPKID_LOG' >/dev/null"
assert "the stop is logged" bash -c "jq -e -s 'any(.[]; .msg == \"stopped\")' '$MQPKID_LOG' >/dev/null"

printf '\n[log]\nformat = json\nlevel = debug\n' >>"$H/mqpki.conf"
check "mqpkid with [log] format = json, level = debug" start_mqpkid
stop_pid "$MQPKID_PID"
assert "JSON from the config" bash -c "jq -e -s 'length > 0' '$MQPKID_LOG' >/dev/null"
assert "debug lines from the config" bash -c "jq -e -s 'any(.[]; .level == \"debug\")' \
  '$MQPKID_LOG' >/dev/null"
expect_fail 1 "a bad --log-format" mqpkid --log-format xml
sed -i 's/^level = debug/level = loud/' "$H/mqpki.conf"
rc=0; mqpkid --listen 127.0.0.1:0 >/dev/null 2>"$T/bad.log" || rc=$?
assert "a bad [log] level is refused" test "$rc" -ne 0
assert "naming the key" grep -q "\[log\] level" "$T/bad.log"
finish
