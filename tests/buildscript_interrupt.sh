#!/usr/bin/env bash
# Interrupting a build (Ctrl-C: SIGINT to cargo's process group) while the build script of
# examples/buildscript holds a plugin must leave no plugin behind. Run by .ci/run after the
# example has been built once (so the interrupted build only reruns its build script).
#
# The build script holds the plugin when RPCPLUGIN_EXAMPLE_HOLD_MS is set (a new value forces the
# script to run again). Every process of the build, the plugin included, inherits TEST_MARKER.
set -euo pipefail
cd "$(dirname "$0")/.."
marker="buildscript-interrupt-$$"

with_marker() {
  local pids=()
  for env in /proc/[0-9]*/environ; do
    if grep -qxzF "TEST_MARKER=$marker" "$env" 2>/dev/null; then
      pid=${env#/proc/}; pid=${pid%/environ}
      state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
      [ -n "$state" ] && [ "$state" != Z ] && pids+=("$pid")
    fi
  done
  echo "${pids[@]:-}"
}

plugin_pid() {
  for pid in $(with_marker); do
    if grep -qzF go-kv-plugin "/proc/$pid/cmdline" 2>/dev/null; then echo "$pid"; return; fi
  done
}

# A session of its own, so that cargo leads a process group, like a build in a terminal. A
# background job of a script starts with SIGINT ignored, which a terminal's foreground build does
# not have: restore the default before cargo runs (a shell cannot undo an inherited SIG_IGN).
TEST_MARKER=$marker RPCPLUGIN_EXAMPLE_HOLD_MS=$((600000 + RANDOM)) python3 -c '
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
signal.signal(signal.SIGQUIT, signal.SIG_DFL)
os.setsid()
os.execvp(sys.argv[1], sys.argv[1:])
' cargo build -q -p rpcplugin-buildscript-example &
cargo_pid=$!

plugin=""
for _ in $(seq 1 600); do
  plugin=$(plugin_pid)
  [ -n "$plugin" ] && break
  sleep 0.2
done
if [ -z "$plugin" ]; then
  echo "FAIL: the build script never started its plugin" >&2
  kill -KILL -- "-$cargo_pid" 2>/dev/null || true
  exit 1
fi
echo "build script holds plugin $plugin; sending SIGINT to cargo's process group $cargo_pid"
kill -INT -- "-$cargo_pid"
status=0
wait "$cargo_pid" || status=$?
echo "cargo exited with status $status"
[ "$status" -ne 0 ] || { echo "FAIL: the interrupted build succeeded" >&2; exit 1; }

# Waits for the event (no process left), polling, up to a generous 30 s.
deadline=$(( $(date +%s) + 30 ))
while :; do
  left=$(with_marker)
  [ -z "$left" ] && break
  [ "$(date +%s)" -lt "$deadline" ] || break
  sleep 0.1
done
if [ -n "$left" ]; then
  echo "FAIL: processes left after the interrupted build: $left" >&2
  for pid in $left; do tr '\0' ' ' < "/proc/$pid/cmdline" >&2; echo >&2; done
  exit 1
fi
echo "OK: plugin $plugin is gone with the interrupted build; nothing left"
