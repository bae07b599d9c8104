#!/usr/bin/env bash
# Runs the README's test command (`cargo test --workspace`) ROUNDS times while BUSY_PER_CORE
# busy processes per core compete for the CPU, and prints how often each test failed.
#
#   bash tests/contention.sh [ROUNDS] [BUSY_PER_CORE]      # defaults: 10 rounds, 2 per core
#
# The tests are built once, before the busy processes start. Each round's full output is kept
# in target/contention/round-N.log. Exits 0 only if every round passed.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}
per_core=${2:-2}
cores=$(nproc)
out=target/contention
mkdir -p "$out"
rm -f "$out"/round-*.log

echo "building the tests once"
cargo test --workspace --no-run -q

busy=()
stop_busy() {
  for pid in "${busy[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait "${busy[@]}" 2>/dev/null || true
}
trap stop_busy EXIT
for _ in $(seq 1 $((cores * per_core))); do
  # A pure CPU loop: no I/O, same priority as the tests.
  bash -c 'while :; do :; done' &
  busy+=($!)
done
echo "$((cores * per_core)) busy processes on $cores cores; $rounds rounds"

declare -A failures=()
failed_rounds=0
for round in $(seq 1 "$rounds"); do
  log="$out/round-$round.log"
  started=$(date +%s)
  status=0
  cargo test --workspace --no-fail-fast >"$log" 2>&1 || status=$?
  took=$(( $(date +%s) - started ))
  # Failed tests ("test NAME ... FAILED"), and test binaries that died without a verdict.
  names=$(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$log" | sort -u)
  if [ "$status" -ne 0 ] && [ -z "$names" ]; then
    names="(no test named: cargo exited $status; see $log)"
  fi
  if [ -n "$names" ]; then
    failed_rounds=$((failed_rounds + 1))
    while IFS= read -r name; do
      failures[$name]=$(( ${failures[$name]:-0} + 1 ))
    done <<<"$names"
    echo "round $round: FAILED in ${took}s: $(echo "$names" | tr '\n' ' ')"
  else
    passed=$(awk '/^test result: ok\./ { n += $4 } END { print n + 0 }' "$log")
    echo "round $round: ok in ${took}s ($passed tests passed)"
  fi
done

echo
echo "failures per test over $rounds rounds under $((cores * per_core)) busy processes:"
if [ ${#failures[@]} -eq 0 ]; then
  echo "  none"
else
  for name in "${!failures[@]}"; do echo "  ${failures[$name]}/$rounds  $name"; done | sort -rn
fi
echo "rounds with a failure: $failed_rounds of $rounds"
[ "$failed_rounds" -eq 0 ]
