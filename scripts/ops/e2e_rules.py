#!/usr/bin/env python3
"""Write a copy of the alert rules with short timings for the end-to-end test.

The rules are the shipped ones; only what makes them wait for minutes is shortened:
every alert's for: becomes FOR (default 5s), and the no-success threshold of
BfoAliveNoSuccess (600 s) becomes THRESHOLD seconds (default 10). Every other threshold,
window and expression stays as shipped. Fails loudly if the shipped rules no longer
have the shape this relies on, so the e2e test never silently tests something else.

Usage: e2e_rules.py RULES.yml OUT.yml [--for 5s] [--no-success-threshold 10]
"""
import argparse
import sys

import yaml

NO_SUCCESS = "BfoAliveNoSuccess"
NO_SUCCESS_THRESHOLD = "> 600"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rules")
    ap.add_argument("out")
    ap.add_argument("--for", dest="for_", default="5s")
    ap.add_argument("--no-success-threshold", default="10")
    args = ap.parse_args()
    with open(args.rules) as f:
        doc = yaml.safe_load(f)
    found = 0
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            if rule.get("for"):
                rule["for"] = args.for_
            if rule["alert"] == NO_SUCCESS:
                expr = rule["expr"]
                if expr.count(NO_SUCCESS_THRESHOLD) != 1:
                    sys.exit(f"e2e_rules: {NO_SUCCESS} expr no longer contains '{NO_SUCCESS_THRESHOLD}' once: {expr!r}")
                rule["expr"] = expr.replace(NO_SUCCESS_THRESHOLD, f"> {args.no_success_threshold}")
                found += 1
    if found != 1:
        sys.exit(f"e2e_rules: expected one {NO_SUCCESS} rule, found {found}")
    with open(args.out, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
