#!/usr/bin/env bash
# Builds the rules of the bfo-alive monitoring mixin (mixin/*.libsonnet) into the committed
# alerts/bfo-alive.rules.yml, then deploy/kubernetes/prometheusrule.yaml from it, with
# jsonnet (Debian package `jsonnet`; scripts/ops/check.sh and scripts/test.sh install it).
#
# Usage: mixin/build.sh          write both files
#        mixin/build.sh --check  exit 1 if either differs from what the mixin generates
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
rules="$root/alerts/bfo-alive.rules.yml"
command -v jsonnet >/dev/null 2>&1 || {
  echo "mixin/build.sh: jsonnet is not installed (apt-get install jsonnet)" >&2
  exit 1
}

generated="$(mktemp)"
trap 'rm -f "$generated"' EXIT
jsonnet -S -J "$here" "$here/rules-file.jsonnet" >"$generated"

if [ "${1:-}" = "--check" ]; then
  if ! diff -u "$rules" "$generated"; then
    echo "alerts/bfo-alive.rules.yml is not what mixin/ generates: run mixin/build.sh" >&2
    exit 1
  fi
  echo "alerts/bfo-alive.rules.yml is in sync with mixin/"
  "$root/deploy/kubernetes/generate-prometheusrule.sh" --check
else
  cp "$generated" "$rules"
  echo "wrote $rules"
  "$root/deploy/kubernetes/generate-prometheusrule.sh"
fi
