#!/usr/bin/env bash
# The README's commands, run as a new user would type them, so they cannot break unseen:
#   - "Run it": the command block is run literally (`cargo run -- demo`), /metrics must
#     answer on the README's address with the simulator backend, then it is stopped;
#   - "Run the tests": the block must be what .ci/run executes;
#   - "Configure it": every exporter example passes `--config.check` (the web config
#     example with `--web.config.file`), a file without a
#     backend is refused with exit 2, and `--help` works for every subcommand.
# Only what this script starts is stopped, by PID.
set -uo pipefail
# shellcheck source=scripts/ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ops_init readme
cd "$REPO_ROOT" || exit 1
ops_require curl python3

# block HEADING: the first ```sh block under the README's "## HEADING", one command a line.
block() {
  python3 - "$1" <<'PY'
import re, sys
text = open("README.md", encoding="utf-8").read()
sec = re.search(r"^## " + re.escape(sys.argv[1]) + r"\s*$(.*?)(?=^## )", text, re.M | re.S)
if not sec:
    sys.exit(f"README.md has no section '## {sys.argv[1]}'")
code = re.search(r"```sh\n(.*?)```", sec.group(1), re.S)
if not code:
    sys.exit(f"README.md section '## {sys.argv[1]}' has no sh block")
print(code.group(1).strip())
PY
}

fail=0
run_cmd="$(block "Run it")" || exit 1
test_cmd="$(block "Run the tests")" || exit 1
[ "$run_cmd" = "cargo run -- demo" ] || ops_log "note: the run command is now: $run_cmd"

# ---- Run it, literally. The README names http://localhost:9632/.
url="http://127.0.0.1:9632"
if curl -fsS -o /dev/null --max-time 2 "$url/-/healthy" 2>/dev/null; then
  ops_die "something already answers on port 9632; stop it first (the README's command listens there)"
fi
log="$OPS_TMP/run-it.log"
# setsid: its own process group, so cargo and the exporter it started stop together.
setsid bash -c "$run_cmd" >"$log" 2>&1 &
pid=$!
OPS_PIDS+=("$pid")
OPS_NAMES+=("README run command")
ops_log "started the README's run command (pid $pid): $run_cmd"
# cargo may still compile here: the timeout only bounds a hang.
if ops_wait_http "README run command" "$url/metrics" 600 "$pid" "$log"; then
  metrics="$(curl -fsS --max-time 5 "$url/metrics")"
  if grep -q '^bfo_alive_backend_info{backend="sim"} 1' <<<"$metrics" &&
    grep -q '^bfo_alive_probes_total{' <<<"$metrics"; then
    ops_log "ok: '$run_cmd' serves /metrics on the simulator"
  else
    ops_log "FAIL: /metrics of '$run_cmd' lacks the backend or the probe series"
    fail=1
  fi
  grep -q "status page" "$log" || { ops_log "FAIL: the demo did not print where to look"; fail=1; }
else
  fail=1
fi
kill -INT -- "-$pid" 2>/dev/null || true
for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -KILL -- "-$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true

# ---- Run the tests: the README's command is what CI runs.
if grep -qx "exec $test_cmd" .ci/run; then
  ops_log "ok: .ci/run executes the README's test command ($test_cmd)"
else
  ops_log "FAIL: .ci/run does not execute the README's test command ($test_cmd)"
  fail=1
fi

# ---- Configure it: the examples, a file without a backend, --help.
bin="$(ops_exporter_bin)" || exit 1
for f in examples/*.toml; do
  [ "$f" = examples/emulator.toml ] && continue # an emulator file, parsed by the tests
  if out="$("$bin" --config.file "$f" --config.check 2>&1)"; then
    ops_log "ok: $f: $out"
  else
    ops_log "FAIL: $f: $out"
    fail=1
  fi
done
# The web config example (exporter-toolkit format) is checked with a configuration.
if out="$("$bin" --config.file examples/minimal.toml --web.config.file examples/web-config.yml --config.check 2>&1)"; then
  ops_log "ok: examples/web-config.yml: $(head -n 1 <<<"$out")"
else
  ops_log "FAIL: examples/web-config.yml: $out"
  fail=1
fi
nobackend="$OPS_TMP/no-backend.toml"
printf '[identity]\nanvendersystem = "cf12c051-39ce-4066-ba11-704b46fa23c4"\ncvr = "29189846"\n' >"$nobackend"
out="$("$bin" --config.file "$nobackend" --config.check 2>&1)"
rc=$?
if [ "$rc" -eq 2 ] && grep -q 'no backend chosen' <<<"$out"; then
  ops_log "ok: a file without a backend is refused (exit 2)"
else
  ops_log "FAIL: a file without a backend gave exit $rc: $out"
  fail=1
fi
for sub in "" demo probe setup emulate; do
  # shellcheck disable=SC2086
  if "$bin" $sub --help >/dev/null 2>&1; then
    ops_log "ok: bfo-alive-exporter $sub --help"
  else
    ops_log "FAIL: bfo-alive-exporter $sub --help"
    fail=1
  fi
done
exit "$fail"
