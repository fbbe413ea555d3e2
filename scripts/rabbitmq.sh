#!/usr/bin/env bash
#: scripts/rabbitmq.sh — owns the private RabbitMQ test broker: start, stop, env.
#
#   scripts/rabbitmq.sh start DIR   start a private node whose files all live in DIR
#   scripts/rabbitmq.sh stop DIR    stop what `start DIR` started (by PID, nothing else)
#   scripts/rabbitmq.sh restart DIR start the node of DIR again after it died (e.g. a test
#                                   killed it): same name, ports, data and certificates,
#                                   new PIDs in DIR/env, so clients reconnect to it
#   scripts/rabbitmq.sh env DIR     print DIR/env (source it, or point BFO_TEST_AMQP_ENV at it)
#
# The node listens on 127.0.0.1 only, on ports picked free at start: plain AMQP, AMQPS with
# mutual TLS (verify_peer + fail_if_no_peer_cert; CA, server and client certificates are
# made with openssl into DIR/tls), Erlang distribution, and its own epmd. It raises
# `initial_frame_max` so a multi-KB SAML token fits in the pre-auth connection.start-ok,
# enables SASL EXTERNAL (rabbitmq_auth_mechanism_ssl, user = client certificate CN) next to
# PLAIN, and loads definitions: vhosts `BF` and `/`, a test user with full permissions on
# both, and the certificate user likewise.
#
# DIR/env (KEY=value lines, no quoting, shell-sourceable) gets AMQP_URL, AMQPS_URL,
# AMQP_CA, AMQP_CLIENT_CERT, AMQP_CLIENT_KEY, AMQP_CLIENT_P12, AMQP_CLIENT_P12_PASSWORD_FILE,
# AMQP_CERT_USER, AMQP_USER, AMQP_PASSWORD, RABBITMQ_NODENAME, ERL_EPMD_PORT and the PIDs
# this script started (RABBITMQ_PID, RABBITMQ_WRAPPER_PID, EPMD_PID).
#
# rabbitmq-server is installed with apt-get only when missing. The Debian wrapper in
# /usr/sbin switches to the rabbitmq user; this script runs the real scripts as the
# current user with HOME=DIR/home (own Erlang cookie), so nothing outside DIR is touched.
set -euo pipefail

PROG=${0##*/}
START_TIMEOUT=${RABBITMQ_START_TIMEOUT:-90}
TEST_USER=bfo-test
TEST_PASS=bfo-test-password
CERT_USER=bfo-test-client

die() { echo "$PROG: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }

usage() {
    echo "usage: $PROG start|stop|restart|env DIR" >&2
    exit 2
}

# ---------------------------------------------------------------- installation

wait_for_dpkg() {
    # apt may be installing in the background (e.g. a provisioning step); wait for it.
    local waited=0
    while fuser /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock >/dev/null 2>&1 \
        || pgrep -x apt-get >/dev/null 2>&1 || pgrep -x dpkg >/dev/null 2>&1; do
        if (( waited == 0 )); then log "waiting for a running apt/dpkg to finish..."; fi
        sleep 2
        waited=$((waited + 2))
        (( waited < 900 )) || die "apt/dpkg still busy after ${waited}s"
    done
}

rabbit_installed() {
    dpkg -s rabbitmq-server 2>/dev/null | grep -q '^Status: install ok installed' \
        || command -v rabbitmq-server >/dev/null 2>&1
}

ensure_installed() {
    if ! rabbit_installed; then
        command -v apt-get >/dev/null || die "rabbitmq-server is missing and apt-get is not available"
        wait_for_dpkg
        if ! rabbit_installed; then
            log "installing rabbitmq-server with apt-get..."
            local sudo=
            (( EUID == 0 )) || sudo=sudo
            # policy-rc.d exit 101 keeps the package from starting its system-wide node.
            local policy=/usr/sbin/policy-rc.d made_policy=
            if [[ $EUID == 0 && ! -e $policy ]]; then
                printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
            fi
            local rc=0
            { $sudo apt-get update -q -o DPkg::Lock::Timeout=600 \
                && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q \
                    -o DPkg::Lock::Timeout=600 rabbitmq-server openssl; } >&2 || rc=$?
            [[ -n $made_policy ]] && rm -f "$policy"
            (( rc == 0 )) || die "apt-get install rabbitmq-server failed (exit $rc)"
        fi
    fi
    command -v openssl >/dev/null || die "openssl is missing (apt-get install openssl)"
}

find_sbin() {
    # The real scripts, not the Debian wrapper that su's to the rabbitmq user.
    local d
    for d in /usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin; do
        [[ -x $d/rabbitmq-server ]] && { echo "$d"; return; }
    done
    local s
    s=$(command -v rabbitmq-server 2>/dev/null) || die "cannot find rabbitmq-server"
    s=$(readlink -f "$s")
    if grep -q 'su rabbitmq' "$s" 2>/dev/null; then
        die "found only the wrapper $s; cannot find the real rabbitmq-server scripts"
    fi
    dirname "$s"
}

find_epmd() {
    local e
    if e=$(command -v epmd 2>/dev/null); then echo "$e"; return; fi
    for e in /usr/lib/erlang/erts-*/bin/epmd; do
        [[ -x $e ]] && { echo "$e"; return; }
    done
    die "cannot find epmd (is erlang installed?)"
}

# ---------------------------------------------------------------- ports

declare -A TAKEN=()

port_busy() {
    # A successful connect means something listens there.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() { # VAR: sets VAR to a free port (no subshell, so TAKEN is kept)
    # Random port in [20000, 44000): dist port + 10000.. is used by the CLI tools, keep it < 65536.
    local p tries=0
    while :; do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 24000))
        tries=$((tries + 1))
        (( tries < 200 )) || die "no free port found"
        [[ -n ${TAKEN[$p]:-} || -n ${TAKEN[$((p + 10000))]:-} ]] && continue
        port_busy "$p" && continue
        TAKEN[$p]=1
        TAKEN[$((p + 10000))]=1
        printf -v "$1" '%s' "$p"
        return
    done
}

# ---------------------------------------------------------------- certificates

make_certs() {
    local t=$1
    mkdir -p "$t"
    (
        cd "$t"
        umask 077
        local ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
        openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 3650 \
            -subj "/CN=bfo-test-ca" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        leaf() { # name cn ext
            openssl req "${ec[@]}" -keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
            printf '%s\n' "$3" >"$1.ext"
            openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
                -days 3650 -sha256 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
            rm -f "$1.csr" "$1.ext"
        }
        leaf server localhost "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"
        leaf client "$CERT_USER" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
        printf 'p12-test-password\n' >client.p12.pass
        openssl pkcs12 -export -in client.pem -inkey client.key -certfile ca.pem \
            -passout file:client.p12.pass -out client.p12 2>/dev/null
        # The node may run as another user in odd setups; the keys are test-only anyway.
        chmod 644 ./*.pem ./*.key client.p12 client.p12.pass
    ) || die "making test certificates with openssl failed"
}

# ---------------------------------------------------------------- start

rabbit_env() {
    # Environment shared by the node and its CLI tools.
    export HOME="$DIR/home"
    export RABBITMQ_NODENAME="$NODENAME"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT="$AMQP_PORT"
    export RABBITMQ_DIST_PORT="$DIST_PORT"
    export ERL_EPMD_PORT="$EPMD_PORT"
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf"
    export RABBITMQ_CONFIG_FILE="$DIR/rabbitmq.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$DIR/advanced.config"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$DIR/mnesia"
    export RABBITMQ_LOG_BASE="$DIR/log"
    export RABBITMQ_PID_FILE="$DIR/rabbitmq.pid"
    export ERL_CRASH_DUMP="$DIR/log/erl_crash.dump"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}"
    export RABBITMQ_USE_LONGNAME=false
}

show_failure() {
    log "---- tail of the node log ($DIR/log) ----"
    local f
    for f in "$DIR"/log/*.log "$DIR/log/startup.out"; do
        [[ -s $f ]] || continue
        echo "== $f" >&2
        tail -n 40 "$f" >&2
    done
    log "----"
}

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

pid_is() { # pid pattern: the process still runs the program we started
    [[ -r /proc/$1/cmdline ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q -- "$2"
}

cmd_start() {
    [[ $DIR != *[[:space:]]* ]] || die "DIR must not contain white space: $DIR"
    if [[ -f $DIR/env ]]; then
        # shellcheck disable=SC1091
        if (source "$DIR/env" && pid_alive "${RABBITMQ_PID:-}"); then
            die "a node started from $DIR is still running; run: $PROG stop $DIR"
        fi
    fi
    ensure_installed
    local epmd t0=$SECONDS
    sbin=$(find_sbin)
    epmd=$(find_epmd)

    rm -rf "${DIR:?}/mnesia" "${DIR:?}/log" "${DIR:?}/tls" "${DIR:?}/home" "${DIR:?}/env"
    mkdir -p "$DIR/home" "$DIR/log" "$DIR/mnesia"
    chmod 700 "$DIR/home"

    NODENAME="bfo-test-$$@localhost"
    free_port AMQP_PORT
    free_port AMQPS_PORT
    free_port DIST_PORT
    free_port EPMD_PORT

    make_certs "$DIR/tls"
    local tls="$DIR/tls"

    : >"$DIR/rabbitmq-env.conf"
    echo '[].' >"$DIR/advanced.config"
    echo '[rabbitmq_auth_mechanism_ssl].' >"$DIR/enabled_plugins"
    cat >"$DIR/rabbitmq.conf" <<EOF
listeners.ssl.default = 127.0.0.1:$AMQPS_PORT
ssl_options.cacertfile = $tls/ca.pem
ssl_options.certfile = $tls/server.pem
ssl_options.keyfile = $tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
ssl_cert_login_from = common_name
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
# SAML tokens of several KB go in connection.start-ok, before frame_max is negotiated.
initial_frame_max = 65536
load_definitions = $DIR/definitions.json
disk_free_limit.absolute = 10MB
log.console = false
log.file.level = info
EOF
    cat >"$DIR/definitions.json" <<EOF
{
  "users": [
    {"name": "$TEST_USER", "password": "$TEST_PASS", "tags": ["administrator"]},
    {"name": "$CERT_USER", "password_hash": "", "tags": []}
  ],
  "vhosts": [{"name": "BF"}, {"name": "/"}],
  "permissions": [
    {"user": "$TEST_USER", "vhost": "BF", "configure": ".*", "write": ".*", "read": ".*"},
    {"user": "$TEST_USER", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
    {"user": "$CERT_USER", "vhost": "BF", "configure": ".*", "write": ".*", "read": ".*"},
    {"user": "$CERT_USER", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
  ]
}
EOF

    rabbit_env

    # Our own epmd, in the foreground of its own background job, so its PID is known.
    "$epmd" -port "$EPMD_PORT" -address 127.0.0.1 >"$DIR/log/epmd.out" 2>&1 &
    EPMD_PID=$!
    for _ in $(seq 1 50); do
        port_busy "$EPMD_PORT" && break
        pid_alive "$EPMD_PID" || { cat "$DIR/log/epmd.out" >&2; die "epmd failed to start"; }
        sleep 0.1
    done

    launch_node
    log "node $NODENAME up in $((SECONDS - t0))s: amqp 127.0.0.1:$AMQP_PORT, amqps 127.0.0.1:$AMQPS_PORT; env in $DIR/env"
}

launch_node() { # the node of rabbit_env's settings, in the background; waits until it booted
    (cd "$DIR" && exec nohup "$sbin/rabbitmq-server" >"$DIR/log/startup.out" 2>&1 </dev/null) &
    RABBITMQ_WRAPPER_PID=$!
    write_env "" # PIDs known so far: a failed start can still be stopped

    # await_startup gives up at once while the node is not yet registered with epmd.
    local deadline=$((SECONDS + START_TIMEOUT)) short=${NODENAME%@*} ok=
    while (( SECONDS < deadline )); do
        if "$epmd" -port "$EPMD_PORT" -names 2>/dev/null | grep -q "^name $short at"; then
            ok=1
            break
        fi
        pid_alive "$RABBITMQ_WRAPPER_PID" || break
        sleep 0.2
    done
    if [[ -z $ok ]]; then
        if pid_alive "$RABBITMQ_WRAPPER_PID"; then
            fail_start "node $NODENAME did not register with epmd within ${START_TIMEOUT}s"
        fi
        fail_start "node $NODENAME exited during start-up"
    fi
    if ! "$sbin/rabbitmqctl" -q -n "$NODENAME" await_startup --timeout "$START_TIMEOUT" \
        >"$DIR/log/await.out" 2>&1; then
        cat "$DIR/log/await.out" >&2 || true
        fail_start "node $NODENAME did not finish booting within ${START_TIMEOUT}s"
    fi
    local pid=
    [[ -s $DIR/rabbitmq.pid ]] && pid=$(tr -dc '0-9' <"$DIR/rabbitmq.pid")
    write_env "$pid"
}

cmd_restart() {
    [[ -f $DIR/env ]] || die "no $DIR/env: nothing to restart (run: $PROG start $DIR)"
    local line key val t0=$SECONDS
    while IFS= read -r line; do
        key=${line%%=*}
        val=${line#*=}
        case $key in
            RABBITMQ_PID | EPMD_PID | AMQP_PORT | AMQPS_PORT | ERL_EPMD_PORT) printf -v "$key" '%s' "$val" ;;
            RABBITMQ_NODENAME) NODENAME=$val ;;
            RABBITMQ_DIST_PORT) DIST_PORT=$val ;;
        esac
    done <"$DIR/env"
    EPMD_PORT=$ERL_EPMD_PORT
    if pid_alive "${RABBITMQ_PID:-}" && pid_is "$RABBITMQ_PID" "-home $DIR/home"; then
        die "node $NODENAME (PID $RABBITMQ_PID) still runs; stop it first"
    fi
    pid_alive "${EPMD_PID:-}" || die "epmd of $DIR is gone; run: $PROG stop $DIR && $PROG start $DIR"
    sbin=$(find_sbin)
    epmd=$(find_epmd)
    rm -f "$DIR/rabbitmq.pid"
    rabbit_env
    launch_node
    log "node $NODENAME up again in $((SECONDS - t0))s: amqp 127.0.0.1:$AMQP_PORT"
}

fail_start() { # message: show the logs, stop what was started, exit
    show_failure
    RABBITMQ_NODENAME_V=$NODENAME ERL_EPMD_PORT_V=$EPMD_PORT RABBITMQ_SBIN=$sbin
    if [[ -s $DIR/rabbitmq.pid ]]; then RABBITMQ_PID=$(tr -dc '0-9' <"$DIR/rabbitmq.pid"); fi
    cmd_stop_quiet
    die "$1"
}

write_env() {
    local tls="$DIR/tls"
    cat >"$DIR/env.tmp" <<EOF
AMQP_URL=amqp://$TEST_USER:$TEST_PASS@127.0.0.1:$AMQP_PORT/BF
AMQPS_URL=amqps://$TEST_USER:$TEST_PASS@localhost:$AMQPS_PORT/BF
AMQPS_EXTERNAL_URL=amqps://localhost:$AMQPS_PORT/BF
AMQP_USER=$TEST_USER
AMQP_PASSWORD=$TEST_PASS
AMQP_PORT=$AMQP_PORT
AMQPS_PORT=$AMQPS_PORT
AMQP_CA=$tls/ca.pem
AMQP_CLIENT_CERT=$tls/client.pem
AMQP_CLIENT_KEY=$tls/client.key
AMQP_CLIENT_P12=$tls/client.p12
AMQP_CLIENT_P12_PASSWORD_FILE=$tls/client.p12.pass
AMQP_CERT_USER=$CERT_USER
RABBITMQ_NODENAME=$NODENAME
RABBITMQ_DIST_PORT=$DIST_PORT
ERL_EPMD_PORT=$EPMD_PORT
RABBITMQ_HOME_DIR=$DIR/home
RABBITMQ_SBIN=$(find_sbin)
RABBITMQ_PID=$1
RABBITMQ_WRAPPER_PID=$RABBITMQ_WRAPPER_PID
EPMD_PID=$EPMD_PID
EOF
    mv "$DIR/env.tmp" "$DIR/env"
}

# ---------------------------------------------------------------- stop

wait_gone() { # pid seconds
    local n=$(($2 * 10))
    while pid_alive "$1" && (( n-- > 0 )); do sleep 0.1; done
    ! pid_alive "$1"
}

kill_ours() { # pid pattern name
    local pid=$1
    pid_alive "$pid" || return 0
    if ! pid_is "$pid" "$2"; then
        log "PID $pid is no longer our $3; leaving it alone"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 && return 0
    log "$3 (PID $pid) ignored SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 5 || log "$3 (PID $pid) is still there"
}

cmd_stop_quiet() {
    # Called from a failed start (variables set) or from cmd_stop (after sourcing env).
    if pid_alive "${RABBITMQ_PID:-}" || pid_alive "${RABBITMQ_WRAPPER_PID:-}"; then
        if [[ -n ${RABBITMQ_SBIN:-} ]]; then
            HOME="$DIR/home" ERL_EPMD_PORT="$ERL_EPMD_PORT_V" \
                timeout 60 "$RABBITMQ_SBIN/rabbitmqctl" -q -n "$RABBITMQ_NODENAME_V" \
                stop >"$DIR/log/stop.out" 2>&1 || log "rabbitmqctl stop failed; killing by PID"
        fi
        # After a clean stop the node and its wrapper exit on their own; give them time.
        if [[ -n ${RABBITMQ_PID:-} ]]; then
            wait_gone "$RABBITMQ_PID" 30 \
                || kill_ours "$RABBITMQ_PID" "-home $DIR/home" "RabbitMQ node"
        fi
        if [[ -n ${RABBITMQ_WRAPPER_PID:-} ]]; then
            wait_gone "$RABBITMQ_WRAPPER_PID" 5 \
                || kill_ours "$RABBITMQ_WRAPPER_PID" "rabbitmq-server" "rabbitmq-server wrapper"
        fi
    fi
    # rabbitmqctl stop leaves epmd running: it is ours, end it.
    kill_ours "${EPMD_PID:-}" "epmd -port ${ERL_EPMD_PORT_V:-}" "epmd"
}

cmd_stop() {
    [[ -f $DIR/env ]] || { log "no $DIR/env: nothing started from $DIR is running"; return 0; }
    local line key val
    while IFS= read -r line; do
        key=${line%%=*}
        val=${line#*=}
        case $key in
            RABBITMQ_PID | RABBITMQ_WRAPPER_PID | EPMD_PID | RABBITMQ_SBIN) printf -v "$key" '%s' "$val" ;;
            RABBITMQ_NODENAME) RABBITMQ_NODENAME_V=$val ;;
            ERL_EPMD_PORT) ERL_EPMD_PORT_V=$val ;;
        esac
    done <"$DIR/env"
    cmd_stop_quiet
    rm -f "$DIR/rabbitmq.pid"
    # Its PIDs are dead now and may be reused: keep the record, but not as DIR/env.
    mv -f "$DIR/env" "$DIR/env.stopped"
    log "stopped ${RABBITMQ_NODENAME_V:-node}"
}

# ---------------------------------------------------------------- main

[[ $# == 2 ]] || usage
CMD=$1
mkdir -p "$2" 2>/dev/null || true
[[ -d $2 ]] || die "cannot create DIR $2"
DIR=$(cd "$2" && pwd -P)

case $CMD in
    start)
        cmd_start
        ;;
    stop) cmd_stop ;;
    restart) cmd_restart ;;
    env)
        [[ -f $DIR/env ]] || die "no $DIR/env (run: $PROG start $DIR)"
        cat "$DIR/env"
        ;;
    *) usage ;;
esac
