#!/usr/bin/env bash
# Creates the Python interop venv at VENVDIR: pyvider-rpcplugin 0.5.5 from the package index,
# grpcio-tools, and the KV stubs generated from proto/kv.proto into VENVDIR/kvproto.
# Idempotent: a stamp file makes re-runs instant.
set -euo pipefail
venv=${1:?usage: setup.sh VENVDIR}
here=$(cd "$(dirname "$0")" && pwd)
proto="$here/../../../proto"
stamp="$venv/.rpcplugin-stamp"
want="pyvider-rpcplugin==0.5.5 grpcio-tools==1.85.1 $(sha256sum "$proto/kv.proto" | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "python venv $venv is up to date" >&2
  exit 0
fi
echo "creating python venv $venv" >&2
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check pyvider-rpcplugin==0.5.5 grpcio-tools==1.85.1
mkdir -p "$venv/kvproto"
"$venv/bin/python" -m grpc_tools.protoc -I "$proto" \
  --python_out="$venv/kvproto" --grpc_python_out="$venv/kvproto" "$proto/kv.proto"
echo "$want" > "$stamp"
