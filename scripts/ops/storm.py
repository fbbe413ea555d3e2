#!/usr/bin/env python3
"""Helpers of the alert storm test (scripts/ops/storm.sh).

  storm.py exporter --port P [--dueslag 30] [--interval 1] [--timeout 4]
      A fake bfo-alive-exporter: /metrics with the exporter's series for N dueslag of one
      instance, probed every --interval seconds. POST /outage/on and /outage/off switch a
      broker outage: both AMQP connections down, every send fails (send_error,
      reason=connection), no success. Why fake: the simulator backend cannot lose its
      broker connections (bfo_alive_connection_up stays 1), and the test needs the outage
      at a moment it chooses, after Prometheus has the history it needs.
  storm.py webhook --port P --log FILE
      Receives Alertmanager's webhooks on /<receiver>, one JSON line per notification.
  storm.py alertmanager OUT --config deploy/alertmanager/alertmanager.yml --webhook URL
           --compression N
      The example configuration with every receiver pointed at URL/<receiver> and its
      group_wait, group_interval and repeat_interval divided by N. Routes, grouping,
      inhibitions and time intervals stay as shipped.
  storm.py history OUT --job J --dueslag 30 --interval 1 --seconds S --step T --end UNIX
      OpenMetrics for promtool tsdb create-blocks-from: S seconds of healthy history of the
      SLO's recorded 5-minute rates, so the long SLO windows hold the past a real
      Prometheus would have (a fresh one would judge an 18-minute outage against 2 minutes).
  storm.py report --log FILE [--max-pages 1] [--max-notifications 3]
      Counts pages (notifications of the pager receiver with firing alerts) and
      notifications, prints them, and fails above the limits or without a page.
"""
import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def dueslag_names(n):
    return [f"d{i:02d}" for i in range(1, n + 1)]


# ---------------------------------------------------------------- fake exporter
class Model:
    """Probes of N dueslag, each every `interval` s at its own phase, finishing at once."""

    def __init__(self, n, interval, timeout):
        self.names = dueslag_names(n)
        self.interval = interval
        self.timeout = timeout
        self.start = time.time()
        self.outages = []  # [start, end or None] in seconds since start
        self.lock = threading.Lock()

    def set_outage(self, on):
        with self.lock:
            now = time.time() - self.start
            if on and not (self.outages and self.outages[-1][1] is None):
                self.outages.append([now, None])
            elif not on and self.outages and self.outages[-1][1] is None:
                self.outages[-1][1] = now

    def down_at(self, t):
        return any(s <= t and (e is None or t < e) for s, e in self.outages)

    def probes(self, k, now):
        """Successful and failed probes of dueslag k until `now`, and its last success."""
        phase = self.interval * k / len(self.names)
        ok = failed = 0
        last_ok = last_at = None
        t = phase
        while t <= now:
            if self.down_at(t):
                failed += 1
            else:
                ok += 1
                last_ok = t
            last_at = t
            t += self.interval
        return ok, failed, last_ok, last_at

    def exposition(self):
        with self.lock:
            now = time.time() - self.start
            down = self.down_at(now)
            start = self.start
            lines = []

            def metric(name, kind, helptext, samples):
                lines.append(f"# HELP {name} {helptext}")
                lines.append(f"# TYPE {name} {kind}")
                for labels, value in samples:
                    lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
                    lines.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")

            per = {d: self.probes(k, now) for k, d in enumerate(self.names)}
            metric("process_start_time_seconds", "gauge", "Start time.", [({}, start)])
            metric("bfo_alive_exporter_build_info", "gauge", "Build.", [({"version": "storm", "revision": "storm"}, 1)])
            metric("bfo_alive_backend_info", "gauge", "Backend.", [({"backend": "amqp"}, 1)])
            metric("bfo_alive_shard_info", "gauge", "Shard.", [({"shard": "1", "shards": "1"}, 1)])
            metric("bfo_alive_shards", "gauge", "Shards.", [({}, 1)])
            metric("bfo_alive_config_last_reload_successful", "gauge", "Reload.", [({}, 1)])
            metric("bfo_alive_connection_up", "gauge", "Connection.",
                   [({"connection": c, "cvr": "29189846"}, 0 if down else 1) for c in ("afsend", "afhent")])
            metric("bfo_alive_token_expiry_timestamp_seconds", "gauge", "Token.",
                   [({"service": c, "cvr": "29189846"}, start + 86400) for c in ("afsend", "afhent")])
            metric("bfo_alive_token_renewal_failures_total", "counter", "Renewals.",
                   [({"service": c, "cvr": "29189846"}, 0) for c in ("afsend", "afhent")])
            metric("bfo_alive_certificate_expiry_timestamp_seconds", "gauge", "Certificates.",
                   [({"use": u}, start + 365 * 86400) for u in ("broker", "sts")])
            metric("bfo_alive_probe_interval_seconds", "gauge", "Interval.",
                   [({"dueslag": d}, self.interval) for d in self.names])
            metric("bfo_alive_probe_timeout_seconds", "gauge", "Timeout.",
                   [({"dueslag": d}, self.timeout) for d in self.names])
            metric("bfo_alive_dueslag_started_timestamp_seconds", "gauge", "Loop start.",
                   [({"dueslag": d}, start) for d in self.names])
            probes, success, attempt, ok_gauge, failures, received, rt = [], [], [], [], [], [], []
            for d, (ok, failed, last_ok, last_at) in per.items():
                dm = {"dueslag": d, "mode": "pull"}
                probes += [({**dm, "result": "success"}, ok), ({**dm, "result": "timeout"}, 0),
                           ({**dm, "result": "send_error"}, failed)]
                success.append((dm, start + last_ok + 0.05 if last_ok is not None else 0))
                attempt.append((dm, start + last_at if last_at is not None else 0))
                ok_gauge.append((dm, 0 if last_at is None or self.down_at(last_at) else 1))
                failures += [({"dueslag": d, "reason": r}, failed if r == "connection" else 0)
                             for r in ("rejected", "token", "timeout", "connection", "unroutable")]
                received.append(({**dm, "kind": "matched"}, ok))
                rt += [({**dm, "le": "0.1"}, ok), ({**dm, "le": "30"}, ok), ({**dm, "le": "+Inf"}, ok)]
            metric("bfo_alive_probes_total", "counter", "Probes.", probes)
            metric("bfo_alive_last_success_timestamp_seconds", "gauge", "Last success.", success)
            metric("bfo_alive_last_attempt_timestamp_seconds", "gauge", "Last attempt.", attempt)
            metric("bfo_alive_probe_success", "gauge", "Last probe.", ok_gauge)
            metric("bfo_alive_send_failures_total", "counter", "Send failures.", failures)
            metric("bfo_alive_received_total", "counter", "Received.", received)
            metric("bfo_alive_lost_total", "counter", "Lost.",
                   [({"dueslag": d, "mode": "pull"}, 0) for d in self.names])
            metric("bfo_alive_roundtrip_duration_seconds", "histogram", "Round trips.", [])
            lines += [f'bfo_alive_roundtrip_duration_seconds_bucket{{dueslag="{l["dueslag"]}",mode="pull",le="{l["le"]}"}} {v}'
                      for l, v in rt]
            lines += [f'bfo_alive_roundtrip_duration_seconds_count{{dueslag="{d}",mode="pull"}} {per[d][0]}'
                      for d in self.names]
            for family in ("inflight", "held_messages", "consumer_paused"):
                metric(f"bfo_alive_{family}", "gauge", family, [({"dueslag": d}, 0) for d in self.names])
            return "\n".join(lines) + "\n"


def serve_exporter(args):
    model = Model(args.dueslag, args.interval, args.timeout)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path.startswith("/metrics"):
                body = model.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
            elif self.path == "/-/healthy":
                body = b"ok\n"
                self.send_response(200)
            else:
                body = b"not found\n"
                self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            if self.path in ("/outage/on", "/outage/off"):
                model.set_outage(self.path.endswith("/on"))
                self.send_response(204)
            else:
                self.send_response(404)
            self.end_headers()

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


# ---------------------------------------------------------------- webhook
def serve_webhook(args):
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200 if self.path == "/-/healthy" else 404)
            self.end_headers()

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            record = {
                "at": time.time(),
                "receiver": self.path.strip("/"),
                "status": body.get("status"),
                "groupKey": body.get("groupKey"),
                "alerts": [{"status": a.get("status"), "labels": a.get("labels", {})} for a in body.get("alerts", [])],
            }
            with lock, open(args.log, "a") as f:
                f.write(json.dumps(record) + "\n")
            self.send_response(200)
            self.end_headers()

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


# ---------------------------------------------------------------- alertmanager config
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(d):
    import re

    return sum(int(n) * UNITS[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d)", d))


def alertmanager_config(args):
    import yaml

    with open(args.config) as f:
        cfg = yaml.safe_load(f)

    def scale(route):
        for key in ("group_wait", "group_interval", "repeat_interval"):
            if key in route:
                route[key] = f"{max(1, round(seconds(route[key]) / args.compression))}s"
        for r in route.get("routes", []):
            scale(r)

    scale(cfg["route"])
    for rec in cfg["receivers"]:
        rec.pop("webhook_configs", None)
        rec["webhook_configs"] = [{"url": f"{args.webhook.rstrip('/')}/{rec['name']}", "send_resolved": True}]
    with open(args.out, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)


# ---------------------------------------------------------------- history
def history(args):
    start = args.end - args.seconds
    with open(args.out, "w") as f:
        for name, value in (("job_dueslag:bfo_alive_probes:rate5m", 1.0 / args.interval),
                            ("job_dueslag:bfo_alive_probes_failed:rate5m", 0.0)):
            f.write(f"# TYPE {name} gauge\n")
            for d in dueslag_names(args.dueslag):
                t = start
                while t <= args.end:
                    f.write(f'{name}{{job="{args.job}",dueslag="{d}"}} {value} {t:.3f}\n')
                    t += args.step
        f.write("# EOF\n")


# ---------------------------------------------------------------- report
def report(args):
    with open(args.log) as f:
        notes = [json.loads(l) for l in f if l.strip()]
    pages = [n for n in notes if n["receiver"] == args.pager and n["status"] == "firing"]
    print(f"[storm] notifications: {len(notes)} (limit {args.max_notifications}); pages: {len(pages)} (limit {args.max_pages})")
    t0 = notes[0]["at"] if notes else 0
    for n in notes:
        names = sorted({a["labels"].get("alertname", "?") for a in n["alerts"]})
        firing = sum(1 for a in n["alerts"] if a["status"] == "firing")
        print(f"[storm]   +{n['at'] - t0:5.1f}s {n['receiver']:<12} {n['status']:<9} {len(n['alerts'])} alert(s), "
              f"{firing} firing: {', '.join(names)}")
    problems = []
    if not pages:
        problems.append("no page at all: the outage must page once")
    if len(pages) > args.max_pages:
        problems.append(f"{len(pages)} pages, at most {args.max_pages}")
    if len(notes) > args.max_notifications:
        problems.append(f"{len(notes)} notifications, at most {args.max_notifications}")
    if args.expect_page:
        paged = {a["labels"].get("alertname") for n in pages for a in n["alerts"]}
        if args.expect_page not in paged:
            problems.append(f"the page is not for {args.expect_page}: {sorted(paged)}")
    for p in problems:
        print(f"[storm] FAIL {p}")
    return 1 if problems else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("exporter")
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--dueslag", type=int, default=30)
    e.add_argument("--interval", type=float, default=1)
    e.add_argument("--timeout", type=float, default=4)
    w = sub.add_parser("webhook")
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--log", required=True)
    a = sub.add_parser("alertmanager")
    a.add_argument("out")
    a.add_argument("--config", required=True)
    a.add_argument("--webhook", required=True)
    a.add_argument("--compression", type=float, required=True)
    h = sub.add_parser("history")
    h.add_argument("out")
    h.add_argument("--job", required=True)
    h.add_argument("--dueslag", type=int, default=30)
    h.add_argument("--interval", type=float, default=1)
    h.add_argument("--seconds", type=float, required=True)
    h.add_argument("--step", type=float, required=True)
    h.add_argument("--end", type=float, required=True)
    r = sub.add_parser("report")
    r.add_argument("--log", required=True)
    r.add_argument("--pager", default="bfo-pager")
    r.add_argument("--max-pages", type=int, default=1)
    r.add_argument("--max-notifications", type=int, default=3)
    r.add_argument("--expect-page", default="")
    args = ap.parse_args()
    return {"exporter": serve_exporter, "webhook": serve_webhook, "alertmanager": alertmanager_config,
            "history": history, "report": report}[args.cmd](args) or 0


if __name__ == "__main__":
    sys.exit(main())
