#!/usr/bin/env python3
"""Wait until a PromQL query returns at least one series, polling a Prometheus.

Usage: promwait.py PROMETHEUS_URL QUERY TIMEOUT_SECONDS [DESCRIPTION]
Exits 0 as soon as the query returns something, 1 if it never did within the timeout
(the timeout only bounds a hang; nothing asserts how fast it happens).
"""
import json
import sys
import time
import urllib.parse
import urllib.request


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    prom, query, timeout = sys.argv[1].rstrip("/"), sys.argv[2], float(sys.argv[3])
    what = sys.argv[4] if len(sys.argv) > 4 else query
    url = f"{prom}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
            if body.get("status") == "success" and body["data"]["result"]:
                print(f"[promwait] {what}: yes", file=sys.stderr)
                return 0
            last = body.get("error") or "no series yet"
        except OSError as e:
            last = str(e)
        time.sleep(0.5)
    print(f"[promwait] {what}: not within {timeout:.0f}s ({last}); query: {query}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
