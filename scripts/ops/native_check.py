#!/usr/bin/env python3
"""Assertions of scripts/ops/native-check.sh, against one Prometheus per histograms setting.

Usage: native_check.py DASHBOARD.json MODE=PROMETHEUS_URL...   (MODE: classic, native, both)

Per setting: the round trip is a native histogram in Prometheus (native, both: the query
result carries "histogram", not "value"; histogram_count() works on the raw series) or
classic buckets (classic: `_bucket` series, no raw series); the round-trip recording rules
of alerts/bfo-alive.rules.yml have data (quantiles, round trips, slow ones); the series per
dueslag (count by (dueslag)) are printed, and must be at most 30 with native histograms;
every dashboard query returns data (dashboard_check.py --prometheus).
"""
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
RT = "bfo_alive_roundtrip_duration_seconds"
HEALTHY = "aa-healthy-pull"
MAX_SERIES_NATIVE = 30


def query(prom, q):
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{q}: {body}")
    return body["data"]["result"]


def wait(prom, q, what, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if query(prom, q):
            return
        time.sleep(1)
    raise AssertionError(f"{prom}: no {what} within {timeout}s ({q})")


def check(mode, prom, dashboard):
    failures = []

    def expect(cond, msg):
        print(f"  {'ok  ' if cond else 'FAIL'} {mode}: {msg}")
        if not cond:
            failures.append(msg)

    # 16 scrapes (for the 15s windows of the dashboard check), a success of the healthy
    # dueslag, and the 5m quantile rule evaluated over at least two of its samples.
    wait(prom, 'min(count_over_time(up{job="bfo-alive"}[1m])) >= 16', "16 scrapes")
    wait(prom, f'sum(increase(bfo_alive_probes_total{{result="success",dueslag="{HEALTHY}"}}[1m])) > 0', "successful probe")
    wait(prom, 'sum(bfo_alive_send_failures_total) > 0', "rejected send (a failure reason series)")
    wait(prom, f'dueslag_quantile:{RT}:histogram_quantile_rate5m{{dueslag="{HEALTHY}",quantile="0.99"}} > 0', "round-trip quantile rule", 60)

    raw = query(prom, f'{RT}{{dueslag="{HEALTHY}"}}')
    buckets = query(prom, f'{RT}_bucket{{dueslag="{HEALTHY}"}}')
    if mode == "classic":
        expect(not raw and len(buckets) > 1, f"round trip stored as classic buckets ({len(buckets)} _bucket series, {len(raw)} raw)")
    else:
        expect(len(raw) == 1 and "histogram" in raw[0] and "value" not in raw[0],
               f"round trip stored as a native histogram ({json.dumps(raw)[:160]})")
        expect(not buckets, f"no classic _bucket series stored ({len(buckets)}): Prometheus keeps the native one")
        count = query(prom, f'histogram_count({RT}{{dueslag="{HEALTHY}"}})')
        expect(bool(count) and float(count[0]["value"][1]) > 0, "histogram_count() of the raw series")

    for rule in [f'dueslag_quantile:{RT}:histogram_quantile_rate5m{{dueslag="{HEALTHY}"}}',
                 f'dueslag:bfo_alive_roundtrip:increase1h{{dueslag="{HEALTHY}"}} > 0',
                 f'dueslag:bfo_alive_roundtrip_slow:increase1h{{dueslag="{HEALTHY}"}}']:
        r = query(prom, rule)
        expect(bool(r), f"rule has data: {rule} -> {[x.get('value', ['', ''])[1] for x in r]}")
    # The alert-style and dashboard-style quantile forms, on whichever histogram is stored.
    for q in [f'histogram_quantile(0.99, sum by (dueslag, le) (rate({RT}_bucket[1m]))) or histogram_quantile(0.99, sum by (dueslag) (rate({RT}[1m])))',
              f'histogram_quantile(0.5, sum by (le) (rate(bfo_alive_send_duration_seconds_bucket[1m]))) or histogram_quantile(0.5, sum(rate(bfo_alive_send_duration_seconds[1m])))']:
        r = query(prom, q)
        expect(bool(r) and any(x["value"][1] not in ("NaN",) for x in r), f"quantile query has data: {q[:90]}…")

    series = query(prom, 'count by (dueslag) ({__name__=~"bfo_alive_.+", dueslag!=""})')
    per = {s["metric"]["dueslag"]: int(s["value"][1]) for s in series}
    print(f"  info {mode}: series per dueslag: {per}")
    if mode != "classic":
        expect(per and max(per.values()) <= MAX_SERIES_NATIVE, f"at most {MAX_SERIES_NATIVE} series per dueslag")

    r = subprocess.run([sys.executable, os.path.join(HERE, "dashboard_check.py"), dashboard, "--prometheus", prom])
    expect(r.returncode == 0, "every dashboard query returns data")
    return failures


def main():
    dashboard, targets = sys.argv[1], sys.argv[2:]
    failed = []
    for t in targets:
        mode, prom = t.split("=", 1)
        print(f"== histograms = \"{mode}\" ({prom})")
        failed += [f"{mode}: {m}" for m in check(mode, prom, dashboard)]
    if failed:
        print(f"native check: {len(failed)} failed")
        sys.exit(1)
    print(f"native check: {len(targets)} settings ok")


if __name__ == "__main__":
    main()
