#!/usr/bin/env bash
# Checks the minimum supported Rust version that every Cargo.toml declares (`rust-version`):
# installs that toolchain if missing, then builds and runs the README's test command with it,
# in target/msrv (gRPC core is compiled once more for that toolchain: about 15 minutes here).
# Run before a release; `.ci/run` does not (one more gRPC core build would double its time).
#
#   bash tests/msrv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
msrv=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
[ -n "$msrv" ] || { echo "no rust-version in Cargo.toml" >&2; exit 1; }
for manifest in codegen/Cargo.toml cli/Cargo.toml examples/buildscript/Cargo.toml; do
  declared=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' "$manifest")
  [ "$declared" = "$msrv" ] || { echo "$manifest declares rust-version '$declared', Cargo.toml '$msrv'" >&2; exit 1; }
done
# rustup names releases in full (1.88 is a channel of its own): 1.88 -> 1.88.0.
[[ "$msrv" == *.*.* ]] || msrv="$msrv.0"
rustup toolchain list | grep -q "^$msrv" || rustup toolchain install "$msrv" --profile minimal
echo "== cargo +$msrv test --workspace (rust-version $msrv)"
CARGO_TARGET_DIR=target/msrv cargo "+$msrv" test --workspace --locked
# One release older must be refused for a dependency's own rust-version (not only for ours),
# or the declared version is not the oldest that works.
minor=$(echo "$msrv" | cut -d. -f2)
older="1.$((minor - 1)).0"
rustup toolchain list | grep -q "^$older" || rustup toolchain install "$older" --profile minimal
echo "== cargo +$older check --workspace must fail"
if CARGO_TARGET_DIR=target/msrv-older cargo "+$older" check --workspace --locked >target/msrv-older.log 2>&1; then
  echo "rust $older builds the workspace too: rust-version $msrv is not the oldest" >&2
  exit 1
fi
theirs=$(grep -E "requires rustc" target/msrv-older.log | grep -v -E "^ *rpcplugin" | sort -u || true)
if [ -z "$theirs" ]; then
  echo "rust $older is refused only for this workspace's own rust-version:" >&2
  cat target/msrv-older.log >&2
  exit 1
fi
echo "rust $older is refused, as expected, for dependencies that need $msrv:"
echo "$theirs"
echo "msrv ok: $msrv"
