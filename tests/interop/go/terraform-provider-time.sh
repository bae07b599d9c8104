#!/usr/bin/env bash
# Builds terraform-provider-time v0.14.2 (a terraform-plugin-framework provider, protocol 5) from
# the Go module proxy into OUTDIR: the real provider the Terraform tests drive.
set -euo pipefail
out=${1:?usage: terraform-provider-time.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "${TMPDIR:-/tmp}"
GOBIN="$out" GOFLAGS=-mod=mod go install github.com/hashicorp/terraform-provider-time@v0.14.2
