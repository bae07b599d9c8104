#!/usr/bin/env bash
# Captures what real OpenTofu prints for `tofu providers schema -json`, for the two providers the
# tests drive, into terraform/tests/data/: the files terraform/tests/schema_json.rs compares
# `ProviderSchema::to_schema_json` with, byte for byte. Builds OpenTofu v1.10.7 from the Go module
# proxy (about 3 minutes on 2 cores), so it is run by hand when a provider or the format changes,
# not by CI. Needs the Rust test provider built first: cargo build -p rpcplugin-terraform.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
out="$root/terraform/tests/data"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PATH="$PATH:/usr/local/go/bin" GOFLAGS=-mod=mod
interop="$root/target/interop"
mkdir -p "$interop"
if [ ! -x "$interop/tofu" ]; then
  dir=$(cd "$work" && go mod download -json github.com/opentofu/opentofu@v1.10.7 | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
  cp -r "$dir" "$work/src" && chmod -R u+w "$work/src"
  # Built inside its own module: its go.mod has a replace directive, so `go install` refuses it.
  (cd "$work/src" && go build -o "$interop/tofu" ./cmd/tofu)
fi
GOBIN="$interop" go install github.com/hashicorp/terraform-provider-time@v0.14.2
mkdir -p "$work/rustfile"
cp "$root/target/debug/rpcplugin-terraform-test-provider" "$work/rustfile/terraform-provider-rustfile"

schema() { # NAME SOURCE DIR
  mkdir -p "$work/$1" && cd "$work/$1"
  printf 'terraform {\n  required_providers {\n    %s = { source = "%s" }\n  }\n}\n' "$1" "$2" > main.tf
  printf 'provider_installation {\n  dev_overrides {\n    "%s" = "%s"\n  }\n  direct {}\n}\n' "$2" "$3" > cli.tfrc
  TF_CLI_CONFIG_FILE="$PWD/cli.tfrc" "$interop/tofu" providers schema -json
}
schema time hashicorp/time "$interop" > "$out/tofu-1.10.7.time-0.14.2.schema.json"
schema rustfile example/rustfile "$work/rustfile" > "$out/tofu-1.10.7.rustfile.schema.json"
echo "wrote $out/tofu-1.10.7.*.schema.json" >&2
