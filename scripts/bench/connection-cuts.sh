#!/usr/bin/env bash
#: scripts/bench/connection-cuts.sh — owns the connection-cut measurement: the exporter
#: probing pull and push dueslag through the emulator on RabbitMQ while its broker
#: connections are closed every CUT_EVERY seconds; prints probes and failures by reason.
#
# Why: the Beskedfordeler ends every connection when the hour its connection authoriser
# granted is over, and networks drop connections. The exporter reconnects and retries the
# Afsend within its attempts (ARCHITECTURE.md §2), so a cut should cost no probe. This
# measures that; it asserts nothing (target: 0 failed probes).
#
#   scripts/bench/connection-cuts.sh            # 10 minutes
#   DURATION=60 scripts/bench/connection-cuts.sh
#
# Environment (all optional):
#   BFO_TEST_AMQP_ENV   a broker started by scripts/rabbitmq.sh (its DIR/env); without it a
#                       private node is started in a temporary directory and stopped after
#   DURATION=600        seconds of cutting
#   CUT_EVERY=20        seconds between cuts; each cut closes every exporter connection
#                       (afsend and afhent) with `rabbitmqctl close_connection`
#   CUT_BY=ctl          ctl: this script cuts; emulator: the emulator's own
#                       max_connection_age = CUT_EVERY does (each connection at that age)
#   PULL=4 PUSH=4       dueslag of each mode
#   REPLY_DELAY=200ms   the emulator answers every Afsend this late (fault reply_delay), so
#                       that cuts find attempts waiting for their StandardRetur
#   INTERVAL=1s TIMEOUT=30s SEND_TIMEOUT=10s SEND_ATTEMPTS=3   the exporter's [defaults]
#   MAX_CONNECTION_AGE=55m   the exporter's [broker] max_connection_age
#   BFO_ALIVE_EXPORTER  the binary (default: target/debug/bfo-alive-exporter, built here)
#   OUT                 where logs, configurations and the final scrape go
#                       (default: target/bench/connection-cuts-<time>)
#
# Loopback only: the broker, the emulator and the exporter listen on 127.0.0.1. Bounded:
# warm-up, DURATION, then at most TIMEOUT for in-flight probes to end.
set -euo pipefail

# shellcheck source=../ops/lib.sh
source "$(dirname "$0")/../ops/lib.sh"
cd "$REPO_ROOT"

DURATION=${DURATION:-600}
CUT_EVERY=${CUT_EVERY:-20}
CUT_BY=${CUT_BY:-ctl}
PULL=${PULL:-4}
PUSH=${PUSH:-4}
REPLY_DELAY=${REPLY_DELAY:-200ms}
INTERVAL=${INTERVAL:-1s}
TIMEOUT=${TIMEOUT:-30s}
SEND_TIMEOUT=${SEND_TIMEOUT:-10s}
SEND_ATTEMPTS=${SEND_ATTEMPTS:-3}
MAX_CONNECTION_AGE=${MAX_CONNECTION_AGE:-55m}
OUT=${OUT:-target/bench/connection-cuts-$(date +%Y%m%d-%H%M%S)}
case $CUT_BY in ctl | emulator) ;; *) ops_die "CUT_BY must be ctl or emulator, not $CUT_BY" ;; esac

ops_init connection-cuts
ops_require curl python3
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

BROKER_DIR=""
VHOST=""
bench_cleanup() {
    local rc=$?
    ops_cleanup || true
    if [ -n "$VHOST" ]; then ctl delete_vhost "$VHOST" >/dev/null 2>&1 || true; fi
    if [ -n "$BROKER_DIR" ]; then
        scripts/rabbitmq.sh stop "$BROKER_DIR" >&2 || true
        rm -rf "$BROKER_DIR"
    fi
    exit "$rc"
}
trap bench_cleanup EXIT

if [ -z "${BFO_TEST_AMQP_ENV:-}" ]; then
    BROKER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/bfo-bench-broker.XXXXXX")
    ops_log "no BFO_TEST_AMQP_ENV: starting a private RabbitMQ in $BROKER_DIR"
    scripts/rabbitmq.sh start "$BROKER_DIR" >&2
    BFO_TEST_AMQP_ENV=$BROKER_DIR/env
fi
# shellcheck disable=SC1090
source "$BFO_TEST_AMQP_ENV"

# rabbitmqctl against the broker's node, with its own HOME (Erlang cookie) and epmd port.
ctl() {
    HOME=$RABBITMQ_HOME_DIR ERL_EPMD_PORT=$ERL_EPMD_PORT \
        "$RABBITMQ_SBIN/rabbitmqctl" -q -n "$RABBITMQ_NODENAME" "$@"
}

if [ -z "${BFO_ALIVE_EXPORTER:-}" ]; then
    ops_log "building the exporter (cargo build)"
    cargo build --locked --bin bfo-alive-exporter >&2
fi
BIN=$(ops_exporter_bin)

VHOST=cuts-$$-$RANDOM
ctl add_vhost "$VHOST" >/dev/null
ctl set_permissions -p "$VHOST" "$AMQP_USER" '.*' '.*' '.*' >/dev/null
URL="${AMQP_URL%/*}/$VHOST"
PORT=$(ops_free_port)
ADDR=127.0.0.1:$PORT

# ------------------------------------------------------------------ configurations

dueslag_toml() { # MODE: the [[dueslag]] tables, for the exporter (no push_url) or the emulator
    local i
    for ((i = 1; i <= PULL; i++)); do
        # Named queues: each dueslag gets a UUID of its own (the RelateretObjekt it is
        # routed by), the same on both sides.
        printf '[[dueslag]]\nname = "pull-%d"\nmode = "pull"\nqueue = "q-cuts-%d"\nid = "00000000-0000-4000-8000-%012d"\n\n' "$i" "$i" "$i"
    done
    for ((i = 1; i <= PUSH; i++)); do
        printf '[[dueslag]]\nname = "push-%d"\nmode = "push"\nid = "00000000-0000-4000-9000-%012d"\n' "$i" "$i"
        [ "$1" = emulator ] && printf 'push_url = "http://%s/push/push-%d"\n' "$ADDR" "$i"
        printf '\n'
    done
}

faults_toml() { # a [faults.NAME] table per dueslag: the emulator's slow replies
    local i
    for ((i = 1; i <= PULL; i++)); do printf '[faults.pull-%d]\nreply_delay = "%s"\n' "$i" "$REPLY_DELAY"; done
    for ((i = 1; i <= PUSH; i++)); do printf '[faults.push-%d]\nreply_delay = "%s"\n' "$i" "$REPLY_DELAY"; done
}

emulator_age=""
if [ "$CUT_BY" = emulator ]; then
    emulator_age="max_connection_age = \"${CUT_EVERY}s\"
[emulator.rabbitmqctl]
path = \"$RABBITMQ_SBIN/rabbitmqctl\"
node = \"$RABBITMQ_NODENAME\"
env = { HOME = \"$RABBITMQ_HOME_DIR\", ERL_EPMD_PORT = \"$ERL_EPMD_PORT\" }"
fi

cat >"$OUT/emulator.toml" <<EOF
[emulator]
url = "$URL"
anvendersystem = "cf12c051-39ce-4066-ba11-704b46fa23c4"
cvr = "29189846"
require_token = false
$emulator_age

$(dueslag_toml emulator)
$(faults_toml)
EOF

cat >"$OUT/exporter.toml" <<EOF
[exporter]
instance = "connection-cuts"

[identity]
anvendersystem = "cf12c051-39ce-4066-ba11-704b46fa23c4"
cvr = "29189846"

[broker]
backend = "amqp"
url = "$URL"
auth = "plain"
max_connection_age = "$MAX_CONNECTION_AGE"

[defaults]
interval = "$INTERVAL"
timeout = "$TIMEOUT"
send_timeout = "$SEND_TIMEOUT"
send_attempts = $SEND_ATTEMPTS

$(dueslag_toml exporter)
EOF

# ------------------------------------------------------------------ run

ops_start emulator "$OUT/emulator.log" "$BIN" emulate --config "$OUT/emulator.toml"
EMULATOR_PID=${OPS_PIDS[-1]}
for ((i = 0; i < 120; i++)); do
    grep -q "emulator ready" "$OUT/emulator.log" && break
    kill -0 "$EMULATOR_PID" 2>/dev/null || { tail -n 40 "$OUT/emulator.log" >&2; ops_die "the emulator exited"; }
    sleep 0.25
done
grep -q "emulator ready" "$OUT/emulator.log" || ops_die "the emulator was not ready within 30s"

ops_start exporter "$OUT/exporter.log" "$BIN" --config.file "$OUT/exporter.toml" \
    --web.listen-address "$ADDR" --log.level info
EXPORTER_PID=${OPS_PIDS[-1]}
ops_wait_http exporter "http://$ADDR/-/healthy" 30 "$EXPORTER_PID" "$OUT/exporter.log"

# The exporter's connections in our vhost, as "pid<TAB>connection_name" lines. The table,
# not --formatter json: only the table writes pids as close_connection takes them.
exporter_connections() {
    ctl list_connections --no-table-headers pid vhost client_properties |
        awk -F'\t' -v vhost="$VHOST" '
            $2 == vhost && match($3, /\{"connection_name","bfo-alive-exporter[^"]*"\}/) {
                print $1 "\t" substr($3, RSTART + 20, RLENGTH - 22)
            }'
}

ops_log "probing $PULL pull and $PUSH push dueslag every $INTERVAL for ${DURATION}s; cutting every ${CUT_EVERY}s by $CUT_BY; output in $OUT"
cuts=0
start=$SECONDS
next_cut=$((start + CUT_EVERY))
while ((SECONDS - start < DURATION)); do
    kill -0 "$EXPORTER_PID" 2>/dev/null || ops_die "the exporter exited; see $OUT/exporter.log"
    kill -0 "$EMULATOR_PID" 2>/dev/null || ops_die "the emulator exited; see $OUT/emulator.log"
    if [ "$CUT_BY" = ctl ] && ((SECONDS >= next_cut)); then
        while IFS=$'\t' read -r pid name; do
            [ -n "$pid" ] || continue
            # </dev/null: rabbitmqctl would read the rest of the list from stdin.
            if ctl close_connection "$pid" "bench: connection cut" </dev/null >/dev/null; then
                cuts=$((cuts + 1))
                printf '%s cut %s (%s)\n' "$(date +%T)" "$pid" "$name" >>"$OUT/cuts.log"
            fi
        done < <(exporter_connections)
        next_cut=$((next_cut + CUT_EVERY))
    fi
    sleep 1
done
if [ "$CUT_BY" = emulator ]; then
    cuts=$(grep -c "ended a client connection" "$OUT/emulator.log" || true)
fi

# Graceful stop: no new probes, in-flight ones arrive or time out; /metrics answers until
# the end, so the last scrape has the final counts.
ops_log "stopping the exporter; waiting for in-flight probes (at most $TIMEOUT)"
curl -fsS --max-time 5 "http://$ADDR/metrics" >"$OUT/metrics.txt" || ops_die "cannot scrape the exporter"
kill -TERM "$EXPORTER_PID"
while kill -0 "$EXPORTER_PID" 2>/dev/null; do
    if curl -fsS --max-time 2 "http://$ADDR/metrics" >"$OUT/metrics.tmp" 2>/dev/null; then
        mv "$OUT/metrics.tmp" "$OUT/metrics.txt"
    fi
    sleep 0.2
done

# ------------------------------------------------------------------ report

sum() { # REGEX: the sum of every series whose line matches
    awk -v re="$1" '$0 ~ re { s += $NF } END { printf "%d\n", s }' "$OUT/metrics.txt"
}
{
    echo "connection cuts: ${DURATION}s, $PULL pull + $PUSH push dueslag every $INTERVAL, Afsend replies $REPLY_DELAY late, cut every ${CUT_EVERY}s by $CUT_BY"
    echo "connections cut:          $cuts"
    echo "probes:                   $(sum '^bfo_alive_probes_total\{')"
    for r in success timeout send_error; do
        printf '  %-22s  %s\n' "$r" "$(sum "^bfo_alive_probes_total\\{.*result=\"$r\"")"
    done
    echo "send failures by reason:  $(sum '^bfo_alive_send_failures_total\{')"
    for r in rejected token timeout connection unroutable; do
        printf '  %-22s  %s\n' "$r" "$(sum "^bfo_alive_send_failures_total\\{.*reason=\"$r\"")"
    done
    echo "received by kind:"
    for k in matched late duplicate out_of_order foreign unexpected; do
        printf '  %-22s  %s\n' "$k" "$(sum "^bfo_alive_received_total\\{.*kind=\"$k\"")"
    done
    echo "lost:                     $(sum '^bfo_alive_lost_total\{')"
    echo "in flight at the end:     $(sum '^bfo_alive_inflight\{')"
    echo "rotations (max age):      $(sum '^bfo_alive_connection_rotations_total\{')"
    echo "connection losses logged: $(grep -c 'connection lost' "$OUT/exporter.log" || true)"
} | tee "$OUT/summary.txt"
