# Shared helpers for integration tests: real binaries, a private data directory per test,
# every started process stopped by pid on exit. Source it, call checks, end with `finish`.
set -euo pipefail

MQPKI_BUILD=${MQPKI_BUILD:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../build" && pwd)}
MQPKI_SOURCE=${MQPKI_SOURCE:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
export PATH="$MQPKI_BUILD/bin:$PATH"
TEST_NAME=$(basename "$0" .sh)
T=$(mktemp -d "/tmp/mqpki-$TEST_NAME.XXXXXX")
export MQPKI_HOME="$T/home"
unset MQPKI_PIN
PIDS=()
PASSED=0
FAILED=0

cleanup() {
  local pid
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  done
  if [ "$FAILED" -eq 0 ] && [ -z "${KEEP:-}" ]; then rm -rf "$T"; else echo "# kept $T"; fi
}
trap cleanup EXIT

ok() { PASSED=$((PASSED + 1)); echo "ok - $*"; }
not_ok() { FAILED=$((FAILED + 1)); echo "not ok - $*"; }

# check DESCRIPTION COMMAND...: passes when the command exits 0.
check() {
  local what=$1; shift
  if "$@" >"$T/out" 2>"$T/err"; then ok "$what"; else
    not_ok "$what (exit $?)"; sed 's/^/#   /' "$T/err" | head -5; fi
}

# expect_fail STATUS DESCRIPTION COMMAND...: passes when the command exits with STATUS and
# prints exactly one line on stderr. The line is left in $T/err.
expect_fail() {
  local want=$1 what=$2 got=0; shift 2
  "$@" >"$T/out" 2>"$T/err" || got=$?
  local lines
  lines=$(wc -l <"$T/err")
  if [ "$got" -eq "$want" ] && [ "$lines" -eq 1 ]; then ok "$what: $(cat "$T/err")"; else
    not_ok "$what: exit $got (want $want), $lines stderr lines"; sed 's/^/#   /' "$T/err" | head -5; fi
}

# assert DESCRIPTION CONDITION-COMMAND...
assert() {
  local what=$1; shift
  if "$@"; then ok "$what"; else not_ok "$what"; fi
}

contains() { grep -q -- "$2" "$1"; }

finish() {
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

# A fresh CA in $MQPKI_HOME.
init_ca() {
  mqpki init "$@" >"$T/init.out" 2>"$T/init.err" || { cat "$T/init.err"; return 1; }
  mqpki ca export --out "$T/chain.pem"
}

# make_csr NAME [openssl req options...]: key $T/NAME.key, CSR $T/NAME.csr (PEM).
make_csr() {
  local name=$1; shift
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
    -keyout "$T/$name.key" -out "$T/$name.csr" "$@" 2>/dev/null
}
