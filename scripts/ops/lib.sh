# shellcheck shell=bash
# Shared helpers of the operations checks (sourced by scripts/ops/*.sh).
#
# Processes started with ops_start are recorded by PID, and ops_cleanup (installed as an
# EXIT trap by ops_init) stops exactly those, and nothing else, even when a check fails.

OPS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$OPS_DIR/../.." && pwd)"
OPS_PIDS=()
OPS_NAMES=()
OPS_TMP=""

ops_log() { printf '[%s] %s\n' "${OPS_SCRIPT:-ops}" "$*" >&2; }
ops_die() { ops_log "ERROR: $*"; exit 1; }

# ops_init NAME: set the log prefix, make a temp dir, install the cleanup trap.
ops_init() {
  OPS_SCRIPT="$1"
  OPS_TMP="$(mktemp -d "${TMPDIR:-/tmp}/bfo-ops-$1.XXXXXX")"
  trap ops_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

ops_cleanup() {
  local rc=$? i pid n
  for ((i = ${#OPS_PIDS[@]} - 1; i >= 0; i--)); do
    pid="${OPS_PIDS[$i]}"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for ((i = ${#OPS_PIDS[@]} - 1; i >= 0; i--)); do
    pid="${OPS_PIDS[$i]}"
    for ((n = 0; n < 50; n++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      ops_log "${OPS_NAMES[$i]} (pid $pid) ignored SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  OPS_PIDS=()
  OPS_NAMES=()
  if [ -n "$OPS_TMP" ] && [ -d "$OPS_TMP" ]; then
    if [ "$rc" -ne 0 ] && [ -n "${OPS_KEEP_LOGS:-}" ]; then
      ops_log "logs kept in $OPS_TMP"
    else
      rm -rf "$OPS_TMP"
    fi
  fi
  return "$rc"
}

# ops_start NAME LOGFILE CMD [ARGS...]: run CMD in the background, record its PID.
ops_start() {
  local name="$1" logfile="$2"
  shift 2
  "$@" >"$logfile" 2>&1 &
  OPS_PIDS+=("$!")
  OPS_NAMES+=("$name")
  ops_log "started $name (pid $!): $*"
}

# ops_apt_install PKG...: install Debian packages (no recommends), after waiting for another
# apt/dpkg (e.g. a background install) to let go of its lock.
ops_apt_install() {
  local i=0
  while fuser /var/lib/dpkg/lock-frontend /var/lib/apt/lists/lock >/dev/null 2>&1; do
    [ $((i++)) -eq 0 ] && ops_log "waiting for another apt/dpkg to finish"
    [ "$i" -gt 300 ] && break
    sleep 1
  done
  ops_log "installing $*"
  if ! { apt-get -o DPkg::Lock::Timeout=300 update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
      --no-install-recommends "$@" >/dev/null; }; then
    ops_log "apt-get install $* failed"
    return 1
  fi
}

# ops_free_port: print a TCP port that is free on 127.0.0.1 right now.
ops_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ops_wait_http NAME URL TIMEOUT_S PID LOGFILE: wait until URL answers 2xx; fail early if
# the process died. Polls; the timeout only bounds a hang, it asserts no speed.
ops_wait_http() {
  local name="$1" url="$2" timeout="$3" pid="$4" logfile="$5" i
  for ((i = 0; i < timeout * 4; i++)); do
    if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      ops_log "$name exited before it answered $url; its log:"
      tail -n 40 "$logfile" >&2
      return 1
    fi
    sleep 0.25
  done
  ops_log "$name did not answer $url within ${timeout}s; its log:"
  tail -n 40 "$logfile" >&2
  return 1
}

# ops_exporter_bin: the exporter binary: $BFO_ALIVE_EXPORTER, else target/debug/bfo-alive-exporter.
ops_exporter_bin() {
  local bin="${BFO_ALIVE_EXPORTER:-$REPO_ROOT/target/debug/bfo-alive-exporter}"
  [ -x "$bin" ] || ops_die "exporter binary not found or not executable: $bin (run cargo build, or set BFO_ALIVE_EXPORTER)"
  printf '%s\n' "$bin"
}

# ops_require CMD...: fail unless every command exists.
ops_require() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || ops_die "'$c' is not installed (scripts/ops/check.sh installs it)"
  done
}

# ops_start_exporter LOGFILE ARGS...: start the exporter on a free port; sets EXPORTER_ADDR.
ops_start_exporter() {
  local logfile="$1" bin port
  shift
  bin="$(ops_exporter_bin)" || exit 1
  port="$(ops_free_port)"
  EXPORTER_ADDR="127.0.0.1:$port"
  ops_start exporter "$logfile" "$bin" "$@" --web.listen-address "$EXPORTER_ADDR"
  ops_wait_http exporter "http://$EXPORTER_ADDR/-/healthy" 30 "${OPS_PIDS[-1]}" "$logfile"
}

# ops_sim_config FILE FAILING: write a simulator configuration with two healthy dueslag,
# aa-healthy-pull and mm-healthy-push, and FAILING, a pull dueslag that loses every
# message (and has half its sends refused). Probes every 200 ms with a 600 ms timeout: FAILING fails within a second. Each
# dueslag has a static `kommune` label (two municipalities), as the dashboard's
# per-municipality panels group by it.
ops_sim_config() {
  cat >"$1" <<EOF
[exporter]
instance = "ops-$OPS_SCRIPT"

[identity]
anvendersystem = "cf12c051-39ce-4066-ba11-704b46fa23c4"
cvr = "29189846"

[broker]
backend = "sim"

[defaults]
interval = "200ms"
timeout = "600ms"
send_timeout = "300ms"

[[dueslag]]
name = "aa-healthy-pull"
mode = "pull"
queue = "q-aa"
id = "0a5e7c1b-3d2f-4e6a-8b9c-1d2e3f4a5b01"
labels = { kommune = "aarhus" }

[[dueslag]]
name = "mm-healthy-push"
mode = "push"
id = "0a5e7c1b-3d2f-4e6a-8b9c-1d2e3f4a5b02"
labels = { kommune = "aarhus" }

[[dueslag]]
name = "$2"
mode = "pull"
queue = "q-$2"
id = "0a5e7c1b-3d2f-4e6a-8b9c-1d2e3f4a5b03"
labels = { kommune = "odense" }

[sim.faults.$2]
loss = 1.0
# Half its sends are refused too: failure reasons are series only once they happen, and
# the dashboard's failures-by-reason panel needs one.
reject = 0.5
EOF
}

# ops_start_prometheus DIR CONFIG [ARGS...]: start Prometheus on a free port with storage in
# DIR, with ARGS added (e.g. --enable-feature=native-histograms); sets PROM_URL. Short resend
# delay: alerts that fired before Alertmanager was known are resent at once rather than
# after a minute.
ops_start_prometheus() {
  local dir="$1" config="$2" port
  shift 2
  port="$(ops_free_port)"
  PROM_URL="http://127.0.0.1:$port"
  mkdir -p "$dir/data"
  ops_start prometheus "$dir/prometheus.log" prometheus \
    --config.file="$config" \
    --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$port" \
    --rules.alert.resend-delay=1s \
    --log.level=warn "$@"
  ops_wait_http prometheus "$PROM_URL/-/ready" 60 "${OPS_PIDS[-1]}" "$dir/prometheus.log"
}

# ops_prometheus_config OUT RULES ALERTMANAGER TARGET: a Prometheus configuration that
# scrapes TARGET as job bfo-alive and evaluates RULES every second, sending alerts to
# ALERTMANAGER (host:port); checked with promtool.
ops_prometheus_config() {
  local out="$1" rules="$2" am="$3" target="$4"
  cat >"$out" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $rules
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["$am"]
scrape_configs:
  - job_name: bfo-alive
    static_configs:
      - targets: ["$target"]
EOF
  promtool check config "$out" >/dev/null
}

# ops_start_alertmanager DIR CONFIG: start Alertmanager on a free port, clustering off;
# sets AM_URL and AM_ADDR.
ops_start_alertmanager() {
  local dir="$1" config="$2" port
  port="$(ops_free_port)"
  AM_ADDR="127.0.0.1:$port"
  AM_URL="http://$AM_ADDR"
  mkdir -p "$dir/data"
  ops_start alertmanager "$dir/alertmanager.log" prometheus-alertmanager \
    --config.file="$config" \
    --storage.path="$dir/data" \
    --web.listen-address="$AM_ADDR" \
    --cluster.listen-address= \
    --log.level=warn
  ops_wait_http alertmanager "$AM_URL/-/ready" 60 "${OPS_PIDS[-1]}" "$dir/alertmanager.log"
}
