#!/usr/bin/env python3
"""Lint the alert rules against the conventions the project follows (monitoring mixins).

For every alerting rule in alerts/*.rules.yml:
  - the name is UpperCamelCase and starts with BfoAlive;
  - labels.severity is critical, warning or info;
  - annotations summary, description and runbook_url are set; runbook_url points to an
    anchor of alerts/runbook.md that exists (a "## AlertName" heading);
  - alerts/tests/ has, in one test group, an evaluation where the rule fires (with its
    annotations) and one evaluation interval before it an evaluation where it does not:
    just after and just before its for: (or its condition, when it has no for:);
  - where the tests show the alert carrying a dueslag label, the description names
    {{ $labels.dueslag }}.
And every "## " section of the runbook belongs to an alert that exists.

Usage: check_alerts.py [REPO_ROOT]
"""
import glob
import os
import re
import sys

import yaml

SEVERITIES = {"critical", "warning", "info"}
RUNBOOK_PATH = "alerts/runbook.md"


def duration(s):
    total = 0
    for n, unit in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", str(s)):
        total += int(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}[unit]
    return total


def github_anchor(heading):
    a = heading.strip().lower()
    a = re.sub(r"[^\w\- ]", "", a)
    return a.replace(" ", "-")


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")
    errors = []

    rules = []
    for path in sorted(glob.glob(os.path.join(root, "alerts", "*.rules.yml"))):
        with open(path) as f:
            doc = yaml.safe_load(f)
        for g in doc["groups"]:
            for r in g["rules"]:
                if "alert" in r:
                    rules.append(r)
    if not rules:
        errors.append("no alerting rules found in alerts/*.rules.yml")

    with open(os.path.join(root, RUNBOOK_PATH)) as f:
        runbook = f.read()
    sections = re.findall(r"^## (.+)$", runbook, re.M)
    anchors = {github_anchor(s): s.strip() for s in sections}

    # Collect what the tests expect: per test group, per alertname, eval time -> alerts.
    firing = {}  # alertname -> list of (group index, eval seconds, exp_alert)
    quiet = {}  # alertname -> set of (group index, eval seconds)
    eval_interval = {}
    for path in sorted(glob.glob(os.path.join(root, "alerts", "tests", "*.yml"))):
        with open(path) as f:
            doc = yaml.safe_load(f)
        interval = duration(doc.get("evaluation_interval", "1m"))
        for gi, test in enumerate(doc.get("tests", [])):
            key = (path, gi)
            eval_interval[key] = interval
            for t in test.get("alert_rule_test", []) or []:
                name, when = t["alertname"], duration(t["eval_time"])
                exp = t.get("exp_alerts") or []
                if exp:
                    for a in exp:
                        firing.setdefault(name, []).append((key, when, a))
                else:
                    quiet.setdefault(name, set()).add((key, when))

    names = set()
    for r in rules:
        name = r["alert"]
        names.add(name)
        where = f"{name}{' ' + str(r.get('labels', {})) if r.get('labels', {}).keys() - {'severity'} else ''}"
        if not re.fullmatch(r"BfoAlive([A-Z][a-z0-9]+)+", name):
            errors.append(f"{name}: name is not UpperCamelCase BfoAlive<Component><Symptom>")
        labels, ann = r.get("labels", {}), r.get("annotations", {})
        if labels.get("severity") not in SEVERITIES:
            errors.append(f"{where}: severity {labels.get('severity')!r} not in {sorted(SEVERITIES)}")
        for key in ("summary", "description", "runbook_url"):
            if not ann.get(key):
                errors.append(f"{where}: annotation {key} missing")
        url = ann.get("runbook_url", "")
        m = re.search(re.escape(RUNBOOK_PATH) + r"#([\w-]+)$", url)
        if not m:
            errors.append(f"{where}: runbook_url does not point into {RUNBOOK_PATH}#...: {url}")
        elif m.group(1) not in anchors:
            errors.append(f"{where}: runbook anchor #{m.group(1)} has no '## ' section in {RUNBOOK_PATH}")
        elif anchors[m.group(1)] != name:
            errors.append(f"{where}: runbook anchor #{m.group(1)} is the section of {anchors[m.group(1)]}")

        # This rule's firing expectations: exp_labels carry the rule's static labels.
        mine = [(k, t, a) for k, t, a in firing.get(name, [])
                if all(str(a.get("exp_labels", {}).get(lk)) == str(lv) for lk, lv in labels.items())]
        if not mine:
            errors.append(f"{where}: no test where it fires (with its labels {labels})")
            continue
        before_ok = False
        for key, when, a in mine:
            if not a.get("exp_annotations"):
                errors.append(f"{where}: a test at {when}s expects it without exp_annotations")
            step = eval_interval[key]
            before = when - step
            # Just before: no alert of this name at all, or (for shared names) not this rule.
            if (key, before) in quiet.get(name, set()):
                before_ok = True
            elif any(k == key and t == before for k, t, _ in firing.get(name, [])) and not any(
                k == key and t == before for k, t, _ in mine
            ):
                before_ok = True
        if not before_ok:
            errors.append(f"{where}: no test one evaluation before a firing one where it does not fire yet")
        if any("dueslag" in a.get("exp_labels", {}) for _, _, a in mine):
            if "$labels.dueslag" not in ann.get("description", ""):
                errors.append(f"{where}: fires per dueslag but its description does not name {{{{ $labels.dueslag }}}}")

    for s in sections:
        if re.fullmatch(r"BfoAlive\w+", s.strip()) and s.strip() not in names:
            errors.append(f"{RUNBOOK_PATH}: section '{s.strip()}' has no alert")
    for n in sorted(names):
        if n not in [s.strip() for s in sections]:
            errors.append(f"{RUNBOOK_PATH}: no section for {n}")

    for e in errors:
        print(f"  FAIL {e}")
    if errors:
        print(f"alert lint: {len(errors)} problem(s)")
        return 1
    print(f"alert lint: {len(rules)} alerting rules ({len(names)} alerts) ok: labels, annotations, runbook, tests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
