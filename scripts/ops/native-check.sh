#!/usr/bin/env bash
# Native histogram check: a real Prometheus with --enable-feature=native-histograms scrapes
# one exporter (embedded simulator, no broker) per `[exporter] histograms` setting: classic,
# native, both. Each Prometheus evaluates alerts/bfo-alive.rules.yml. native_check.py then
# asserts, per setting, through the Prometheus HTTP API: the round trip is stored as a
# native histogram (native, both) or as classic buckets (classic); the round-trip recording
# rules (quantiles, round trips, slow ones) have data; a dueslag costs at most 30 series
# with native histograms; and dashboard_check.py runs every dashboard query against it.
#
# Usage: scripts/ops/native-check.sh [EXPORTER_BINARY]
#   default binary: $BFO_ALIVE_EXPORTER, else target/debug/bfo-alive-exporter
# Needs: prometheus (2.42 or later), promtool, python3, curl. OPS_KEEP_LOGS=1 keeps the logs
# on failure.
set -euo pipefail
# shellcheck source=scripts/ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ops_init native-check
[ $# -ge 1 ] && export BFO_ALIVE_EXPORTER="$1"
ops_require prometheus promtool python3 curl
ops_exporter_bin >/dev/null || exit 1

urls=()
for mode in classic native both; do
  dir="$OPS_TMP/$mode"
  mkdir -p "$dir"
  ops_sim_config "$dir/exporter.toml" broken-pull
  sed -i "s/^\[exporter\]\$/[exporter]\nhistograms = \"$mode\"/" "$dir/exporter.toml"
  grep -q "^histograms = \"$mode\"" "$dir/exporter.toml" || ops_die "no histograms line in $dir/exporter.toml"
  ops_start_exporter "$dir/exporter.log" --config.file "$dir/exporter.toml" || exit 1
  cat >"$dir/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $REPO_ROOT/alerts/bfo-alive.rules.yml
scrape_configs:
  - job_name: bfo-alive
    static_configs:
      - targets: ["$EXPORTER_ADDR"]
YAML
  promtool check config "$dir/prometheus.yml" >/dev/null
  ops_start_prometheus "$dir/prom" "$dir/prometheus.yml" --enable-feature=native-histograms || exit 1
  urls+=("$mode=$PROM_URL")
done

if ! python3 "$OPS_DIR/native_check.py" "$REPO_ROOT/dashboards/bfo-alive.json" "${urls[@]}"; then
  for mode in classic native both; do
    ops_log "$mode exporter log (tail):"
    tail -n 10 "$OPS_TMP/$mode/exporter.log" >&2
  done
  exit 1
fi
