#!/usr/bin/env bash
# Runs every libFuzzer target of build-fuzz/fuzz for FUZZ_SECONDS each (default 60), starting
# from the committed seeds (corpus/TARGET, copied into a working corpus under the build dir so
# that the repository keeps only the small seed sets). Prints executions and coverage per target
# and fails on the first crash, leak or timeout; the input is left in build-fuzz/artifacts/.
# Usage: run.sh BUILD_DIR [TARGET...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:?usage: run.sh BUILD_DIR [TARGET...]}" && pwd)
shift
seconds=${FUZZ_SECONDS:-60}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in "$build"/fuzz/fuzz_*; do targets+=("$(basename "$f" | sed 's/^fuzz_//')"); done
fi
mkdir -p "$build/artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$here/../sanitize/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
printf '%-10s %12s %10s %8s %8s\n' target execs exec/s cov corpus
for t in "${targets[@]}"; do
  work=$build/corpus/$t
  mkdir -p "$work"
  cp -n "$here/corpus/$t"/* "$work/" 2>/dev/null || true
  log=$build/fuzz-$t.log
  if ! "$build/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -max_len=131072 -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" \
    "$work" >"$log" 2>&1; then
    echo "fuzz_$t: FAILED, see $log and $build/artifacts/" >&2
    grep -m5 -E "ERROR|runtime error|SUMMARY" "$log" >&2 || true
    status=1
    continue
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  corp=$(grep -oE 'corp: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  printf '%-10s %12s %10s %8s %8s\n' "$t" "$execs" "$rate" "${cov:-?}" "${corp:-?}"
done
exit $status
