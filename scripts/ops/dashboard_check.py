#!/usr/bin/env python3
"""Check a Grafana dashboard's queries.

Static checks (always): stable uid; variables datasource -> job -> instance -> dueslag,
each chained to the one before; every panel has a unit and uses the datasource variable;
every range selector uses $__rate_interval (or $__range, the dashboard's time range);
panel ids unique. Scale (10,000 dueslag): a multi-value variable's "All" is the regex
allValue ".+", not a list of every value; a row repeats per dueslag and is collapsed with
its panels inside, and no panel repeats outside a collapsed row, so "All" draws one row
header per dueslag instead of every panel for every dueslag. On-call: the round-trip
histogram is queried with exemplars; every runbook link names a section of
alerts/runbook.md; a data link leads to the exporter's page /dueslag/{name}.
Every expression (panels and annotations), with the variables substituted, must parse
(promtool check rules).

With --prometheus URL: resolve the variables against that Prometheus as Grafana would
(label_values), substitute them, run every panel expression as an instant query and fail
when one returns no series; for annotations (which show events, usually none), fail when a
metric they use has no series.

Usage: dashboard_check.py DASHBOARD.json [--prometheus URL]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request

CHAIN = ["datasource", "job", "instance", "dueslag"]
UID = "bfo-alive"
# Stand-ins for Grafana's interval variables: in the check Prometheus scrapes every
# second, so 15s windows hold enough samples for rate().
INTERVALS = {"__rate_interval": "15s", "__interval": "5s", "__range": "5m"}
VAR_RE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)\]\]|\$(\w+)")
LABEL_VALUES_RE = re.compile(r"^\s*label_values\(\s*(.*?)\s*,\s*(\w+)\s*\)\s*$", re.S)

# Metrics that the exporters this check scrapes cannot have: they run on the simulator,
# which holds no certificate, so certificate expiry has no series. A query that returns
# nothing because of that is reported as skipped, not failed; nothing else is tolerated.
PENDING_METRICS = {
    "bfo_alive_certificate_expiry_timestamp_seconds",
}
ALLOWED_RANGES = {"$__rate_interval", "$__range"}
METRIC_RE = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")
RUNBOOK_RE = re.compile(r"alerts/runbook\.md#([\w-]+)")
RUNBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "alerts", "runbook.md")

errors = []


def fail(msg):
    errors.append(msg)
    print(f"  FAIL {msg}")


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def var_query(v):
    q = v.get("query")
    if isinstance(q, dict):
        q = q.get("query", "")
    return q or ""


def substitute(expr, values):
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in INTERVALS:
            return INTERVALS[name]
        if name in values:
            return values[name]
        fail(f"unknown variable ${name} in: {expr}")
        return m.group(0)

    return VAR_RE.sub(repl, expr)


def regex_escape(value):
    # Grafana escapes regex metacharacters of Prometheus variable values; in a PromQL
    # string literal the backslash itself is doubled.
    return re.sub(r"([\\.^$*+?()\[\]{}|])", r"\\\\\1", value)


def static_checks(dash):
    print("static checks")
    if dash.get("uid") != UID:
        fail(f"uid is {dash.get('uid')!r}, want {UID!r}")
    variables = dash.get("templating", {}).get("list", [])
    names = [v.get("name") for v in variables]
    if names[: len(CHAIN)] != CHAIN:
        fail(f"variables are {names}, want {CHAIN} first")
    for v in variables:
        if v.get("type") == "query":
            if v.get("datasource", {}).get("uid") != "${datasource}":
                fail(f"variable {v.get('name')} does not use ${{datasource}}")
    for i, name in enumerate(CHAIN[2:], start=2):
        v = next((x for x in variables if x.get("name") == name), None)
        if v is None:
            continue
        q = var_query(v)
        for before in CHAIN[1:i]:
            if f"${before}" not in q:
                fail(f"variable {name} is not chained to ${before}: {q}")
    for v in variables:
        if v.get("includeAll") and v.get("allValue") != ".+":
            fail(f"variable {v.get('name')}: All is {v.get('allValue')!r}, want allValue \".+\" "
                 "(else \"All\" puts every value into every query's regex: 10,000 dueslag names)")
    panels = list(walk_panels(dash.get("panels", [])))
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)):
        fail(f"panel ids are not unique: {ids}")
    scale_checks(dash.get("panels", []))
    oncall_checks(dash, panels)
    for p in panels:
        if p.get("type") == "row":
            continue
        title = p.get("title", "?")
        if not p.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            fail(f"panel {title!r} has no unit")
        if p.get("type") == "heatmap" and not p.get("options", {}).get("yAxis", {}).get("unit"):
            fail(f"heatmap {title!r} has no y-axis unit")
        if p.get("datasource", {}).get("uid") != "${datasource}":
            fail(f"panel {title!r} does not use ${{datasource}}")
        if not p.get("targets"):
            fail(f"panel {title!r} has no query")
        for t in p.get("targets", []):
            expr = t.get("expr", "")
            for rng in re.findall(r"\[([^\]]*)\]", expr):
                if rng not in ALLOWED_RANGES:
                    fail(f"panel {title!r} uses range [{rng}], want [$__rate_interval] or [$__range]: {expr}")


def scale_checks(top):
    """With "All" of 10,000 dueslag a repeated row draws its panels 10,000 times unless it
    is collapsed (Grafana keeps a collapsed row's panels inside the row, unrendered)."""
    repeated = [p for p in top if p.get("type") == "row" and p.get("repeat")]
    if not any(p.get("repeat") == "dueslag" for p in repeated):
        fail("no row repeats per dueslag")
    for r in repeated:
        if not r.get("collapsed"):
            fail(f"row {r.get('title')!r} repeats per ${r['repeat']} but is expanded: at 10,000 dueslag that is 10,000 copies of its panels")
        if not r.get("panels"):
            fail(f"row {r.get('title')!r} repeats per ${r['repeat']} but holds no panels (a collapsed row keeps them inside)")
    for p in top:
        if p.get("type") != "row" and p.get("repeat"):
            fail(f"panel {p.get('title')!r} repeats per ${p['repeat']} outside a collapsed row")


def runbook_anchors():
    anchors = set()
    with open(RUNBOOK, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"#+\s+(.*?)\s*$", line)
            if m:  # GitHub's heading anchors
                anchors.add(re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-"))
    return anchors


def oncall_checks(dash, panels):
    """Exemplars on the round-trip latency, runbook links that resolve, and a way from a
    broken dueslag to its last outcomes on the exporter's status page."""
    if not any(t.get("exemplar") and "bfo_alive_roundtrip_duration_seconds_bucket" in t.get("expr", "")
               for p in panels for t in p.get("targets", [])):
        fail("no round-trip latency query asks for exemplars (the BeskedId of single round trips)")
    text = json.dumps(dash)
    anchors = runbook_anchors()
    linked = set(RUNBOOK_RE.findall(text))
    if not linked:
        fail("no link to alerts/runbook.md")
    for a in sorted(linked - anchors):
        fail(f"runbook link #{a}: alerts/runbook.md has no such section")
    if "/dueslag/${" not in text:
        fail("no data link to the exporter's page /dueslag/{name}")


def collect(dash):
    """(where, expr) for every panel target."""
    out = []
    for p in walk_panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((f"{p.get('title')} [{t.get('refId')}]", t["expr"]))
    return out


def annotations(dash):
    """(where, expr) for every Prometheus annotation query."""
    return [(f"annotation {a.get('name')!r}", a["expr"])
            for a in dash.get("annotations", {}).get("list", []) if a.get("expr")]


def parse_check(exprs, variables):
    print("parse check (promtool check rules)")
    values = {v["name"]: ".+" for v in variables}
    rules = []
    for i, (where, expr) in enumerate(exprs):
        rules.append({"record": f"dashboard_expr_{i}", "expr": substitute(expr, values)})
    for v in variables:
        m = LABEL_VALUES_RE.match(var_query(v))
        if m:
            rules.append({"record": f"dashboard_var_{v['name']}", "expr": substitute(m.group(1), values)})
        elif v.get("type") == "query":
            fail(f"variable {v['name']}: not a label_values(selector, label) query: {var_query(v)}")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "dashboard-exprs.yml")
        with open(path, "w") as f:
            json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, indent=1)
        r = subprocess.run(["promtool", "check", "rules", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            print(r.stdout)
            for i in sorted({int(x) for x in re.findall(r"dashboard_expr_(\d+)", r.stdout)}):
                fail(f"{exprs[i][0]}: does not parse: {exprs[i][1]}")
            for name in sorted(set(re.findall(r"dashboard_var_(\w+)", r.stdout))):
                fail(f"variable {name}: its selector does not parse")
        else:
            print(f"  ok   {len(rules)} expressions parse")


def api(prom, path, params):
    url = f"{prom}{path}?{urllib.parse.urlencode(params, doseq=True)}"
    with urllib.request.urlopen(url, timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{url}: {body}")
    return body["data"]


def resolve_variables(prom, variables):
    values = {}
    for v in variables:
        name = v["name"]
        if v.get("type") == "datasource":
            values[name] = "prometheus"
            continue
        m = LABEL_VALUES_RE.match(var_query(v))
        if not m:
            continue
        selector = substitute(m.group(1), values)
        found = sorted(api(prom, f"/api/v1/label/{m.group(2)}/values", {"match[]": selector}))
        if not found:
            fail(f"variable {name}: label_values({selector}, {m.group(2)}) found no values")
            values[name] = ".+"
            continue
        escaped = [regex_escape(x) for x in found]
        values[name] = escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
        print(f"  var  ${name} = {found}")
    return values


def missing_metrics(prom, expr, cache={}):
    """The metrics an expression selects that have no series at all in Prometheus."""
    out = []
    for m in sorted(set(METRIC_RE.findall(expr))):
        if m not in cache:
            cache[m] = bool(api(prom, "/api/v1/query", {"query": f"count({{__name__={m!r}}})".replace("'", '"')})["result"])
        if not cache[m]:
            out.append(m)
    return out


def query_check(prom, exprs, notes, variables):
    print(f"query check against {prom}")
    values = resolve_variables(prom, variables)
    for where, expr in exprs:
        q = substitute(expr, values)
        try:
            data = api(prom, "/api/v1/query", {"query": q})
        except Exception as e:  # noqa: BLE001 - report every failing query, then fail
            fail(f"{where}: query failed: {e}\n       {q}")
            continue
        result = data.get("result")
        if data.get("resultType") == "scalar" or (isinstance(result, list) and result):
            n = len(result) if isinstance(result, list) else 1
            nan = isinstance(result, list) and all(str(s.get("value", [0, ""])[1]).lower() == "nan" for s in result)
            print(f"  ok   {where}: {n} series{' (all NaN so far)' if nan else ''}")
            continue
        missing = missing_metrics(prom, q)
        if missing and set(missing) <= PENDING_METRICS:
            print(f"  SKIP {where}: returned nothing; {', '.join(missing)} has no series on the simulator (PENDING_METRICS)")
        else:
            fail(f"{where}: returned nothing\n       {q}")
    for where, expr in notes:
        missing = missing_metrics(prom, substitute(expr, values))
        if set(missing) - PENDING_METRICS:
            fail(f"{where}: no series of {', '.join(missing)}\n       {expr}")
        else:
            print(f"  ok   {where}: its metrics exist")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dashboard")
    ap.add_argument("--prometheus", help="base URL of a Prometheus that scrapes the exporter")
    args = ap.parse_args()
    with open(args.dashboard) as f:
        dash = json.load(f)
    variables = dash.get("templating", {}).get("list", [])
    exprs = collect(dash)
    notes = annotations(dash)
    static_checks(dash)
    parse_check(exprs + notes, variables)
    if args.prometheus:
        query_check(args.prometheus.rstrip("/"), exprs, notes, variables)
    if errors:
        print(f"dashboard check: {len(errors)} problem(s) in {args.dashboard}")
        return 1
    print(f"dashboard check: {len(exprs)} queries ok in {args.dashboard}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
