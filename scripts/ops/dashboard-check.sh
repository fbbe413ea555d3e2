#!/usr/bin/env bash
# Dashboard check: every query of dashboards/bfo-alive.json parses, and returns data from a
# real Prometheus that scrapes two exporters on the embedded simulator (no broker): the
# demo, whose flaky dueslag move every failure counter, and one with a dueslag that loses
# every message, so that the panels about broken dueslag always have one to show.
#
# Usage: scripts/ops/dashboard-check.sh [EXPORTER_BINARY]
#   default binary: $BFO_ALIVE_EXPORTER, else target/debug/bfo-alive-exporter
# Needs: prometheus, promtool, python3, curl. OPS_KEEP_LOGS=1 keeps the logs on failure.
set -euo pipefail
# shellcheck source=scripts/ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ops_init dashboard-check
[ $# -ge 1 ] && export BFO_ALIVE_EXPORTER="$1"
ops_require prometheus promtool python3 curl
ops_exporter_bin >/dev/null || exit 1

dashboard="$REPO_ROOT/dashboards/bfo-alive.json"

# Static checks and parsing first: they need no running service.
python3 "$OPS_DIR/dashboard_check.py" "$dashboard"

ops_start_exporter "$OPS_TMP/exporter.log" demo || exit 1
demo_addr="$EXPORTER_ADDR"
ops_sim_config "$OPS_TMP/failing.toml" broken-pull
ops_start_exporter "$OPS_TMP/failing.log" --config.file "$OPS_TMP/failing.toml" || exit 1

cat >"$OPS_TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: bfo-alive
    static_configs:
      - targets: ["$demo_addr", "$EXPORTER_ADDR"]
EOF
ops_start_prometheus "$OPS_TMP/prom" "$OPS_TMP/prometheus.yml" || exit 1

# Enough samples for the 15s rate windows, and a first successful probe so that the
# quantile panels have something to show (waits are bounded, not timed).
python3 "$OPS_DIR/promwait.py" "$PROM_URL" 'min(count_over_time(up{job="bfo-alive"}[1m])) >= 16' 90 "16 scrapes of each exporter"
python3 "$OPS_DIR/promwait.py" "$PROM_URL" 'sum(bfo_alive_probes_total{job="bfo-alive",result="success"}) > 0' 90 "a successful probe" ||
  ops_log "warning: no successful probe yet; quantile queries may be NaN"

if ! python3 "$OPS_DIR/dashboard_check.py" "$dashboard" --prometheus "$PROM_URL"; then
  ops_log "exporter log (tail):"
  tail -n 20 "$OPS_TMP/exporter.log" >&2
  exit 1
fi
