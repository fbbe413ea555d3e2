#!/usr/bin/env python3
"""Assertions of the end-to-end alert test.

1. The no-success alert for the failing dueslag reaches Alertmanager (polled, bounded by
   --timeout), as a critical alert with summary, description and runbook_url.
2. The --also-firing alerts fire in Prometheus for the failing dueslag too (the failure
   ratio and error-budget alerts): by then every rule had time to misfire.
3. Each healthy dueslag has had successful probes (else the next check would prove nothing).
4. No alert with a healthy dueslag's label is pending or firing in Prometheus, nor active
   in Alertmanager.

Usage: e2e_assert.py --prometheus URL --alertmanager URL --failing NAME --healthy NAME[,NAME]
                     [--also-firing ALERT[,ALERT]] [--timeout SECONDS]
"""
import argparse
import json
import sys
import time
import urllib.parse
import urllib.request

ALERT = "BfoAliveNoSuccess"


def get(url, params=None):
    if params:
        url = f"{url}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def prom_query(prom, q):
    body = get(f"{prom}/api/v1/query", {"query": q})
    if body.get("status") != "success":
        raise RuntimeError(f"{q}: {body}")
    return body["data"]["result"]


def show(title, alerts):
    print(f"[e2e] {title}: {len(alerts)}")
    for a in alerts:
        labels = a.get("labels", {})
        state = a.get("state") or a.get("status", {}).get("state", "")
        print(f"        {labels.get('alertname')} {state} dueslag={labels.get('dueslag', '-')} "
              f"severity={labels.get('severity', '-')}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--alertmanager", required=True)
    ap.add_argument("--failing", required=True)
    ap.add_argument("--healthy", required=True)
    ap.add_argument("--also-firing", default="")
    ap.add_argument("--timeout", type=float, default=150)
    args = ap.parse_args()
    prom, am = args.prometheus.rstrip("/"), args.alertmanager.rstrip("/")
    healthy = [h for h in args.healthy.split(",") if h]
    problems = []

    # 1. The alert for the failing dueslag reaches Alertmanager.
    deadline = time.monotonic() + args.timeout
    got = None
    while time.monotonic() < deadline and got is None:
        for a in get(f"{am}/api/v2/alerts", {"active": "true", "silenced": "false", "inhibited": "false"}):
            lab = a.get("labels", {})
            if lab.get("alertname") == ALERT and lab.get("dueslag") == args.failing:
                got = a
        if got is None:
            time.sleep(1)
    if got is None:
        problems.append(f"{ALERT} for dueslag {args.failing} did not reach Alertmanager within {args.timeout:.0f}s")
        show("alerts in Prometheus", get(f"{prom}/api/v1/alerts")["data"]["alerts"])
    else:
        ann, lab = got.get("annotations", {}), got.get("labels", {})
        print(f"[e2e] Alertmanager has {ALERT} for {args.failing}: {ann.get('description')}")
        if lab.get("severity") != "critical":
            problems.append(f"{ALERT} has severity {lab.get('severity')!r}, want critical")
        for key in ("summary", "description", "runbook_url"):
            if not ann.get(key):
                problems.append(f"{ALERT} reached Alertmanager without annotation {key}")
        if args.failing not in ann.get("description", ""):
            problems.append(f"{ALERT} description does not name the dueslag: {ann.get('description')!r}")

    # 2. The other alerts that must fire for the failing dueslag.
    for name in [x for x in args.also_firing.split(",") if x]:
        q = f'ALERTS{{alertname="{name}",alertstate="firing",dueslag="{args.failing}"}}'
        while time.monotonic() < deadline and not prom_query(prom, q):
            time.sleep(1)
        if prom_query(prom, q):
            print(f"[e2e] Prometheus fires {name} for {args.failing}")
        else:
            problems.append(f"{name} did not fire for dueslag {args.failing} within {args.timeout:.0f}s")

    # 3. The healthy dueslag really were probed successfully.
    for h in healthy:
        ok = prom_query(prom, f'sum(bfo_alive_probes_total{{dueslag="{h}",result="success"}}) > 0')
        if not ok:
            problems.append(f"healthy dueslag {h} has no successful probe: the no-alert check would prove nothing")

    # 4. No alert of any kind for a healthy dueslag, pending or firing, nor in Alertmanager.
    prom_alerts = get(f"{prom}/api/v1/alerts")["data"]["alerts"]
    am_alerts = get(f"{am}/api/v2/alerts")
    show("alerts in Prometheus (pending or firing)", prom_alerts)
    show("alerts in Alertmanager", am_alerts)
    for where, alerts in (("Prometheus", prom_alerts), ("Alertmanager", am_alerts)):
        for a in alerts:
            lab = a.get("labels", {})
            if lab.get("dueslag") in healthy:
                problems.append(f"{where} has {lab.get('alertname')} for healthy dueslag {lab.get('dueslag')}")

    for p in problems:
        print(f"[e2e] FAIL {p}")
    if problems:
        return 1
    print(f"[e2e] ok: {ALERT} for {args.failing} reached Alertmanager; no alert for {', '.join(healthy)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
