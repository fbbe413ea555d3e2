#!/usr/bin/env bash
# End-to-end alert test: the exporter (simulator backend, tests/ops/e2e.toml: two healthy
# dueslag and one that loses every message) is scraped by a real Prometheus that loads the
# rules of alerts/ and sends to a real Alertmanager, all on 127.0.0.1.
# Asserts that BfoAliveNoSuccess for the failing dueslag reaches Alertmanager, that the
# failure-ratio and error-budget alerts fire for it too, and that no alert is pending or
# firing for the healthy ones.
#
# The rules are the shipped ones with short timings (scripts/ops/e2e_rules.py: every for:
# 5s; the no-success limit follows the exporter's 1 s interval and 3 s timeout, 16 s);
# scrape and evaluation every second.
#
# Usage: scripts/ops/e2e.sh [EXPORTER_BINARY]
#   default binary: $BFO_ALIVE_EXPORTER, else target/debug/bfo-alive-exporter
# Needs: prometheus, promtool, prometheus-alertmanager, amtool, python3 (+ PyYAML), curl.
# OPS_KEEP_LOGS=1 keeps the logs on failure.
set -euo pipefail
# shellcheck source=scripts/ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ops_init e2e
[ $# -ge 1 ] && export BFO_ALIVE_EXPORTER="$1"
ops_require prometheus promtool prometheus-alertmanager amtool python3 curl
ops_exporter_bin >/dev/null || exit 1

config="$REPO_ROOT/tests/ops/e2e.toml"
failing="lossy-pull"
healthy="healthy-pull,healthy-push"

python3 "$OPS_DIR/e2e_rules.py" "$REPO_ROOT/alerts/bfo-alive.rules.yml" "$OPS_TMP/rules.yml"
promtool check rules "$OPS_TMP/rules.yml" >/dev/null

cat >"$OPS_TMP/alertmanager.yml" <<'EOF'
route:
  receiver: blackhole
  group_by: [alertname, dueslag]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: blackhole
EOF
amtool check-config "$OPS_TMP/alertmanager.yml" >/dev/null
ops_start_alertmanager "$OPS_TMP/am" "$OPS_TMP/alertmanager.yml" || exit 1

ops_start_exporter "$OPS_TMP/exporter.log" --config.file "$config" || exit 1

ops_prometheus_config "$OPS_TMP/prometheus.yml" "$OPS_TMP/rules.yml" "$AM_ADDR" "$EXPORTER_ADDR"
ops_start_prometheus "$OPS_TMP/prom" "$OPS_TMP/prometheus.yml" || exit 1

if ! python3 "$OPS_DIR/e2e_assert.py" --prometheus "$PROM_URL" --alertmanager "$AM_URL" \
  --failing "$failing" --healthy "$healthy" \
  --also-firing BfoAliveProbeFailureRatioHigh,BfoAliveErrorBudgetBurn; then
  ops_log "exporter log (tail):"
  tail -n 20 "$OPS_TMP/exporter.log" >&2
  ops_log "prometheus log (tail):"
  tail -n 20 "$OPS_TMP/prom/prometheus.log" >&2
  exit 1
fi
