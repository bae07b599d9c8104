#!/usr/bin/env bash
# Builds the Go interop peers (go-kv-plugin, go-kv-host) into OUTDIR, skipping the build when the
# binaries are newer than every Go source file and go.sum. Needs only Go and its module proxy.
set -euo pipefail
out=${1:?usage: build.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
newest=$(find "$here" -name '*.go' -o -name go.sum -o -name go.mod | xargs ls -t | head -n 1)
for prog in plugin host bench; do
  bin="$out/go-kv-$prog"
  if [ -x "$bin" ] && [ "$bin" -nt "$newest" ]; then
    echo "go-kv-$prog is up to date" >&2
    continue
  fi
  echo "building $bin" >&2
  (cd "$here" && go build -o "$bin" "./$prog")
done
