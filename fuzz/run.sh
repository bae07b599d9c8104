#!/usr/bin/env bash
# Runs the fuzz targets with cargo-fuzz (nightly), each for SECONDS, and prints one line per
# target: executions, coverage (libFuzzer's edge count), corpus size and crashes.
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]     # default: 20 s each, every target
#   JOBS=2 bash fuzz/run.sh 600                # two targets at a time (one per core)
#   FUZZ_PROFILE=dev bash fuzz/run.sh 20       # unoptimized build (CI's smoke: gRPC core's C++
#                                              # at -O0 builds in about half the time of -O3)
#
# Each target starts from its committed seeds (fuzz/seeds/TARGET, from real traffic) and keeps
# what it finds in fuzz/corpus/TARGET (not committed). A crash is written to
# fuzz/artifacts/TARGET/ and fails the run. Installs nightly and cargo-fuzz if missing.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^rpcplugin-fuzz$')
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
profile=()
case "${FUZZ_PROFILE:-release}" in
  release) ;;
  dev) profile=(--dev) ;;
  *) echo "FUZZ_PROFILE is release or dev, not ${FUZZ_PROFILE}" >&2; exit 2 ;;
esac
export FUZZ_PROFILE_FLAGS="${profile[*]}"
cargo +nightly fuzz build "${profile[@]}"
mkdir -p logs

run_one() {
  local t=$1 seconds=$2
  mkdir -p "corpus/$t"
  local status=0
  # Seeds: fuzz/seeds/TARGET, and for the .proto parser the project's own files and the
  # input that once made it panic (not copied here: they live in proto/ and codegen/testdata/).
  local seeds=()
  for d in "seeds/$t" $([ "$t" = proto_parser ] && echo ../proto ../codegen/testdata); do
    [ -d "$d" ] && seeds+=("$d")
  done
  # shellcheck disable=SC2086 # FUZZ_PROFILE_FLAGS is empty or one word
  cargo +nightly fuzz run $FUZZ_PROFILE_FLAGS "$t" "corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
    >"logs/$t.log" 2>&1 || status=$?
  local done execs cov corp crash
  done=$(grep -E '^#[0-9]+[[:space:]]+DONE' "logs/$t.log" | tail -1)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
  cov=$(echo "$done" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
  corp=$(echo "$done" | sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p')
  crash=$(ls "artifacts/$t" 2>/dev/null | wc -l)
  printf '%-14s %6ss  execs %-10s cov %-6s corpus %-6s status %s  crashes %s\n' \
    "$t" "$seconds" "${execs:-?}" "${cov:-?}" "${corp:-?}" "$status" "$crash"
  [ "$status" -eq 0 ]
}
export -f run_one

failed=0
printf '%s\n' "${targets[@]}" | xargs -P "${JOBS:-1}" -I{} bash -c 'run_one "$@"' _ {} "$seconds" || failed=1
[ "$failed" -eq 0 ] || { echo "a fuzz target failed: see fuzz/logs/ and fuzz/artifacts/" >&2; exit 1; }
