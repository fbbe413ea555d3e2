#!/usr/bin/env python3
"""Assert on the status page's DOM as headless Chromium rendered it.

- the summary line counts one failing dueslag and the healthy ones as ok;
- the table lists every dueslag, the failing one first (worst first, whatever its name);
- every row has its picture: an <svg> with a path; the failing row's has red failures;
- no <script> and no external asset (src or stylesheet link).

Usage: status_page_check.py DOM.html --failing NAME --healthy NAME,NAME
"""
import argparse
import sys
from html.parser import HTMLParser

RED = "#c00"


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.summary = {}
        self.rows = []  # [{"name", "state", "svgs", "paths": [stroke, ...]}]
        self.scripts = 0
        self.external = []
        self._in_table = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if a.get("src") or (tag == "link" and a.get("href")):
            self.external.append(f"<{tag} {a}>")
        if a.get("id") == "summary":
            self.summary = {k[5:]: v for k, v in a.items() if k.startswith("data-")}
        if tag == "table" and a.get("id") == "dueslag":
            self._in_table = True
        if not self._in_table:
            return
        if tag == "tr" and "data-dueslag" in a:
            self.rows.append({"name": a["data-dueslag"], "state": a.get("data-state", ""), "svgs": 0, "paths": []})
        elif tag == "svg" and self.rows:
            self.rows[-1]["svgs"] += 1
        elif tag == "path" and self.rows:
            self.rows[-1]["paths"].append(a.get("stroke"))

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dom")
    ap.add_argument("--failing", required=True)
    ap.add_argument("--healthy", required=True)
    args = ap.parse_args()
    healthy = [h for h in args.healthy.split(",") if h]
    page = Page()
    with open(args.dom, encoding="utf-8") as f:
        page.feed(f.read())

    errors = []
    want = {"failing": "1", "ok": str(len(healthy))}
    for k, v in want.items():
        if page.summary.get(k) != v:
            errors.append(f"summary line: {k} = {page.summary.get(k)!r}, want {v!r} ({page.summary})")
    names = [r["name"] for r in page.rows]
    if sorted(names) != sorted([args.failing] + healthy):
        errors.append(f"rows {names}, want {[args.failing] + healthy}")
    if not names or names[0] != args.failing:
        errors.append(f"the failing dueslag {args.failing!r} is not the first row: {names}")
    for r in page.rows:
        if r["svgs"] != 1 or not r["paths"]:
            errors.append(f"row {r['name']}: {r['svgs']} <svg>, {len(r['paths'])} paths; want one picture with outcomes")
        if r["name"] == args.failing and (r["state"] != "failing" or RED not in r["paths"]):
            errors.append(f"row {r['name']}: state {r['state']!r}, strokes {r['paths']}; want failing with red marks")
        if r["name"] in healthy and r["state"] != "ok":
            errors.append(f"row {r['name']}: state {r['state']!r}, want ok")
    if page.scripts:
        errors.append(f"{page.scripts} <script> elements; the page needs no JavaScript")
    if page.external:
        errors.append(f"external assets: {page.external}")

    print("".join(f"  FAIL {e}\n" for e in errors), end="")
    verdict = f"{len(errors)} problem(s) in {args.dom}" if errors else f"{len(names)} rows, {args.failing} first, a picture in each"
    print(f"status page check: {verdict}; summary {page.summary}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
