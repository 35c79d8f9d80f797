# bench/lib.sh: the helpers every bench script shares (sourced by run.sh, detect.sh, pg.sh and
# revoke-big.sh). rec writes to "$RAW", which the sourcing script sets.

say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# rec GROUP KEY JSON: one raw result line.
rec() { printf '{"group": "%s", "key": "%s", "data": %s}\n' "$1" "$2" "$3" >>"$RAW"; }
free_port() {
  python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}
# wait_for SECONDS COMMAND...: polls every 0.1 s.
wait_for() {
  local limit=$(($1 * 10)) i=0; shift
  until "$@" 2>/dev/null; do
    i=$((i + 1)); [ "$i" -ge "$limit" ] && return 1
    sleep 0.1
  done
}
