#!/usr/bin/env bash
# Alert storm test: a broker outage on one exporter with 30 dueslag must page once.
#
# A real Prometheus evaluates the shipped rules (mixin/, every duration divided by 30:
# 30 s of the test are 15 minutes of alerting) and sends to a real Alertmanager running
# deploy/alertmanager/alertmanager.yml, its receivers pointed at a local webhook and its
# group timers divided by 30 too. The exporter is a fake (scripts/ops/storm.py exporter):
# 30 pull dueslag probed every second (30 s at full scale), healthy until the script
# switches on a broker outage: both AMQP connections down, every send fails. The
# simulator backend cannot do that (its connections never go down), and the SLO's long
# windows need history a fresh Prometheus lacks: it is backfilled (promtool tsdb
# create-blocks-from openmetrics) as the healthy past a real Prometheus would have.
#
# The outage lasts 36 s (18 minutes at full scale). Before it ends, Prometheus must fire
# BfoAliveBrokerConnectionDown (afsend, afhent) and BfoAliveNoSuccess for all 30 dueslag,
# and Alertmanager must hold the per-dueslag alerts back. After it, everything resolves.
# The webhook then counts: at most 1 page (a pager notification with firing alerts) and
# at most 3 notifications in all (receivers default, bfo-pager, bfo-tickets).
#
# Usage: scripts/ops/storm.sh
# Needs: prometheus, promtool, prometheus-alertmanager, amtool, jsonnet, python3 (+ PyYAML),
# curl. OPS_KEEP_LOGS=1 keeps the logs on failure.
set -euo pipefail
# shellcheck source=scripts/ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ops_init storm
ops_require prometheus promtool prometheus-alertmanager amtool jsonnet python3 curl

COMPRESSION=30
DUESLAG=30
OUTAGE_S=36
storm="$OPS_DIR/storm.py"

# The shipped rules, 30 times faster.
jsonnet -S -J "$REPO_ROOT/mixin" --tla-code "timeCompression=$COMPRESSION" \
  "$REPO_ROOT/mixin/rules-file.jsonnet" >"$OPS_TMP/rules.yml"
promtool check rules "$OPS_TMP/rules.yml" >/dev/null

port="$(ops_free_port)"
webhook="http://127.0.0.1:$port"
ops_start webhook "$OPS_TMP/webhook.log" python3 "$storm" webhook --port "$port" --log "$OPS_TMP/notifications.jsonl"
ops_wait_http webhook "$webhook/-/healthy" 30 "${OPS_PIDS[-1]}" "$OPS_TMP/webhook.log"
touch "$OPS_TMP/notifications.jsonl"

python3 "$storm" alertmanager "$OPS_TMP/alertmanager.yml" \
  --config "$REPO_ROOT/deploy/alertmanager/alertmanager.yml" --webhook "$webhook" --compression "$COMPRESSION"
amtool check-config "$OPS_TMP/alertmanager.yml" >/dev/null
ops_start_alertmanager "$OPS_TMP/am" "$OPS_TMP/alertmanager.yml" || exit 1

port="$(ops_free_port)"
exporter="127.0.0.1:$port"
ops_start fake-exporter "$OPS_TMP/exporter.log" python3 "$storm" exporter --port "$port" \
  --dueslag "$DUESLAG" --interval 1 --timeout 4
ops_wait_http fake-exporter "http://$exporter/-/healthy" 30 "${OPS_PIDS[-1]}" "$OPS_TMP/exporter.log"

# The SLO's recorded rates for the longest window (3d / 30), healthy, ending now.
python3 "$storm" history "$OPS_TMP/history.om" --job bfo-alive --dueslag "$DUESLAG" --interval 1 \
  --seconds 9000 --step 2 --end "$(date +%s)"
mkdir -p "$OPS_TMP/prom/data"
promtool tsdb create-blocks-from openmetrics -q "$OPS_TMP/history.om" "$OPS_TMP/prom/data" >/dev/null

ops_prometheus_config "$OPS_TMP/prometheus.yml" "$OPS_TMP/rules.yml" "$AM_ADDR" "$exporter"
ops_start_prometheus "$OPS_TMP/prom" "$OPS_TMP/prometheus.yml" || exit 1

query() { curl -fsS --max-time 5 "$PROM_URL/api/v1/query" --data-urlencode "query=$1"; }
firing() { # firing alerts by name, "name count" per line
  query 'count by (alertname) (ALERTS{alertname=~"BfoAlive.*",alertstate="firing"})' |
    python3 -c 'import json,sys; [print(r["metric"]["alertname"], r["value"][1]) for r in json.load(sys.stdin)["data"]["result"]]'
}
fail() {
  ops_log "FAIL: $*"
  ops_log "prometheus log (tail):"
  tail -n 20 "$OPS_TMP/prom/prometheus.log" >&2
  exit 1
}

# Healthy: every dueslag evaluated, nothing firing, nothing notified.
python3 "$OPS_DIR/promwait.py" "$PROM_URL" "count(dueslag:bfo_alive_last_success_timestamp_seconds:age) == $DUESLAG" 60 \
  "all $DUESLAG dueslag evaluated" || fail "the rules never saw the fake exporter's dueslag"
python3 "$OPS_DIR/promwait.py" "$PROM_URL" 'count_over_time(job_dueslag:bfo_alive_probes:rate5m[30s]) >= 10' 60 \
  "the SLO's live rates" || fail "no live SLO rates"
[ -z "$(firing)" ] || fail "alerts fire before the outage: $(firing | tr '\n' ' ')"
[ ! -s "$OPS_TMP/notifications.jsonl" ] || fail "notifications before the outage: $(cat "$OPS_TMP/notifications.jsonl")"

ops_log "broker outage for ${OUTAGE_S}s ($((OUTAGE_S * COMPRESSION / 60)) minutes at full scale)"
curl -fsS -X POST "http://$exporter/outage/on"
sleep "$OUTAGE_S"
ops_log "firing in Prometheus at the end of the outage:"
firing | sed 's/^/    /' >&2
counts="$(firing)"
grep -qx "BfoAliveNoSuccess $DUESLAG" <<<"$counts" || fail "BfoAliveNoSuccess does not fire for all $DUESLAG dueslag: the storm did not happen"
grep -qx "BfoAliveBrokerConnectionDown 2" <<<"$counts" || fail "BfoAliveBrokerConnectionDown does not fire for afsend and afhent"
inhibited="$(curl -fsS --max-time 5 "$AM_URL/api/v2/alerts?active=false&silenced=false&inhibited=true&unprocessed=false" |
  python3 -c 'import json,sys; print(sum(1 for a in json.load(sys.stdin) if a["status"]["inhibitedBy"]))')"
ops_log "Alertmanager holds back $inhibited alerts (inhibited)"
problem=""
[ "$inhibited" -ge "$DUESLAG" ] || problem="Alertmanager inhibits only $inhibited alerts"

curl -fsS -X POST "http://$exporter/outage/off"
ops_log "outage over; waiting until every alert has resolved"
python3 "$OPS_DIR/promwait.py" "$PROM_URL" 'absent(ALERTS{alertname=~"BfoAlive.*"})' 150 "all alerts resolved" ||
  fail "alerts still pending or firing: $(firing | tr '\n' ' ')"
# Alertmanager sends the resolved notifications at its groups' next interval (20 s here).
sleep 25

rc=0
python3 "$storm" report --log "$OPS_TMP/notifications.jsonl" --max-pages 1 --max-notifications 3 \
  --expect-page BfoAliveBrokerConnectionDown || rc=1
[ -z "$problem" ] || { ops_log "FAIL: $problem"; rc=1; }
exit "$rc"
