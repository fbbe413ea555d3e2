#!/usr/bin/env bash
# Status page check: the page at / as a browser renders it. The exporter runs on its
# simulator with two healthy dueslag and one that loses every message (ops_sim_config;
# named to sort last by name); headless Chromium loads /, and status_page_check.py asserts from the rendered
# DOM that every row has its picture (<svg>), that the failing dueslag is the first row,
# and that the page has no script. The DOM and screenshots of / and of the failing
# dueslag's page are kept as artifacts.
#
# Usage: scripts/ops/status-page-check.sh [EXPORTER_BINARY]
#   default binary: $BFO_ALIVE_EXPORTER, else target/debug/bfo-alive-exporter
#   artifacts: $OPS_ARTIFACTS, else target/ops-artifacts/ (status-page.png, .html,
#   status-page-dueslag.png)
# Needs: chromium (installed from Debian's packages when missing), python3, curl.
# OPS_KEEP_LOGS=1 keeps the logs on failure.
set -euo pipefail
# shellcheck source=scripts/ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ops_init status-page-check
[ $# -ge 1 ] && export BFO_ALIVE_EXPORTER="$1"
command -v chromium >/dev/null 2>&1 || ops_apt_install chromium || true
ops_require chromium python3 curl
ops_exporter_bin >/dev/null || exit 1

artifacts="${OPS_ARTIFACTS:-$REPO_ROOT/target/ops-artifacts}"
mkdir -p "$artifacts"
failing="zz-lossy"

ops_sim_config "$OPS_TMP/config.toml" "$failing"

ops_start_exporter "$OPS_TMP/exporter.log" --config.file "$OPS_TMP/config.toml" || exit 1
url="http://$EXPORTER_ADDR/"

# Until the lossy dueslag has timed out and the healthy ones have come back (bounded
# polling: the limit only catches a hang), then a few seconds more for the pictures to
# fill with outcomes.
for ((i = 0; i < 120; i++)); do
  page="$(curl -fsS --max-time 2 "$url" || true)"
  grep -q 'data-ok="2" data-failing="1"' <<<"$page" && break
  sleep 0.5
done
sleep 5

# chromium URL ARGS...: one headless run with a profile of its own.
chromium_run() {
  local target="$1"
  shift
  timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
    --user-data-dir="$(mktemp -d "$OPS_TMP/chromium.XXXXXX")" "$@" "$target" 2>>"$OPS_TMP/chromium.log"
}

chromium_run "$url" --dump-dom >"$artifacts/status-page.html"
chromium_run "$url" --window-size=1500,520 --screenshot="$artifacts/status-page.png" >/dev/null
chromium_run "${url}dueslag/$failing" --window-size=1200,900 \
  --screenshot="$artifacts/status-page-dueslag.png" >/dev/null
ops_log "artifacts: $artifacts/status-page.png, status-page-dueslag.png, status-page.html"
[ -s "$artifacts/status-page.png" ] || ops_die "no screenshot; chromium log: $(tail -n 5 "$OPS_TMP/chromium.log")"

if ! python3 "$OPS_DIR/status_page_check.py" "$artifacts/status-page.html" --failing "$failing" \
  --healthy aa-healthy-pull,mm-healthy-push; then
  ops_log "exporter log (tail):"
  tail -n 20 "$OPS_TMP/exporter.log" >&2
  exit 1
fi
