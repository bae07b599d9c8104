#!/usr/bin/env bash
# Regenerates kvproto/ from ../../../proto/kv.proto. Needs protoc (Debian: protobuf-compiler),
# protoc-gen-go v1.36.6 and protoc-gen-go-grpc v1.3.0 (`go install ...@version`) on PATH.
# The generated files are committed so that building the interop peers needs only Go.
set -euo pipefail
cd "$(dirname "$0")"
protoc -I ../../../proto \
  --go_out=kvproto --go_opt=paths=source_relative --go_opt=Mkv.proto=rpcplugin-interop/kvproto \
  --go-grpc_out=kvproto --go-grpc_opt=paths=source_relative --go-grpc_opt=Mkv.proto=rpcplugin-interop/kvproto \
  kv.proto
