#!/usr/bin/env python3
"""Write a copy of the alert rules with short timings for the end-to-end test.

The rules are the shipped ones; only what makes them wait for minutes is shortened:
every alert's for: (and keep_firing_for:) becomes FOR (default 5s). The no-success limit
needs no change: it is a multiple of the interval and timeout the exporter reports
(tests/ops/e2e.toml probes every second). Every other threshold, window and expression
stays as shipped. Fails loudly if the shipped rules no longer have the shape this relies
on, so the e2e test never silently tests something else.

Usage: e2e_rules.py RULES.yml OUT.yml [--for 5s]
"""
import argparse
import sys

import yaml

NO_SUCCESS = "BfoAliveNoSuccess"
CYCLE = "dueslag:bfo_alive_probe_cycle_seconds"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rules")
    ap.add_argument("out")
    ap.add_argument("--for", dest="for_", default="5s")
    args = ap.parse_args()
    with open(args.rules) as f:
        doc = yaml.safe_load(f)
    found = 0
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            for key in ("for", "keep_firing_for"):
                if rule.get(key):
                    rule[key] = args.for_
            if rule["alert"] == NO_SUCCESS:
                if CYCLE not in rule["expr"]:
                    sys.exit(f"e2e_rules: {NO_SUCCESS} no longer scales with {CYCLE}: {rule['expr']!r}")
                found += 1
    if found != 1:
        sys.exit(f"e2e_rules: expected one {NO_SUCCESS} rule, found {found}")
    with open(args.out, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
