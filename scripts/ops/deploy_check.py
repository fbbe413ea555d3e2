#!/usr/bin/env python3
"""Consistency of the deploy/ examples with each other and with the alert rules.

- Every manifest in deploy/kubernetes parses and names apiVersion, kind and metadata.name;
  kustomization.yaml lists exactly the manifests there.
- Deployment selector = its pod labels; the Service selects those pods and targets a named
  container port; the ServiceMonitor selects the Service and scrapes one of its ports.
- The job the alerts select (job="..." in alerts/bfo-alive.rules.yml) is the Service's
  name (the Prometheus Operator's job label) and the job_name of
  deploy/prometheus/prometheus.yml.
- The PrometheusRule's spec equals alerts/bfo-alive.rules.yml.
- Every alert name deploy/alertmanager/alertmanager.yml routes or inhibits by exists in
  the rules (an inhibition of a renamed alert would silently hold back nothing).

Usage: deploy_check.py [REPO_ROOT]
"""
import glob
import os
import re
import sys

import yaml


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")
    k8s = os.path.join(root, "deploy", "kubernetes")
    errors = []
    docs = {}
    for path in sorted(glob.glob(os.path.join(k8s, "*.yaml"))):
        name = os.path.basename(path)
        with open(path) as f:
            for d in yaml.safe_load_all(f):
                if d is None:
                    continue
                if name == "kustomization.yaml":
                    docs["Kustomization"] = (name, d)
                    continue
                for key in ("apiVersion", "kind"):
                    if key not in d:
                        errors.append(f"{name}: no {key}")
                if not d.get("metadata", {}).get("name"):
                    errors.append(f"{name}: no metadata.name")
                docs[d.get("kind")] = (name, d)

    manifests = {os.path.basename(p) for p in glob.glob(os.path.join(k8s, "*.yaml"))} - {"kustomization.yaml"}
    listed = set(docs.get("Kustomization", ("", {}))[1].get("resources", []))
    if listed != manifests:
        errors.append(f"kustomization.yaml resources {sorted(listed)} != manifests {sorted(manifests)}")

    for kind in ("Deployment", "Service", "ServiceMonitor", "PrometheusRule"):
        if kind not in docs:
            errors.append(f"deploy/kubernetes has no {kind}")
    if errors:
        return report(errors)

    dep, svc, sm, pr = (docs[k][1] for k in ("Deployment", "Service", "ServiceMonitor", "PrometheusRule"))
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    sel = dep["spec"]["selector"]["matchLabels"]
    if any(pod_labels.get(k) != v for k, v in sel.items()):
        errors.append(f"Deployment selector {sel} does not match its pod labels {pod_labels}")
    if any(pod_labels.get(k) != v for k, v in svc["spec"]["selector"].items()):
        errors.append(f"Service selector {svc['spec']['selector']} does not select the pods {pod_labels}")
    cports = {p.get("name") for c in dep["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    for p in svc["spec"]["ports"]:
        if isinstance(p.get("targetPort"), str) and p["targetPort"] not in cports:
            errors.append(f"Service targetPort {p['targetPort']} is not a container port {sorted(cports)}")
    svc_labels = svc["metadata"].get("labels", {})
    if any(svc_labels.get(k) != v for k, v in sm["spec"]["selector"]["matchLabels"].items()):
        errors.append("ServiceMonitor does not select the Service")
    sports = {p.get("name") for p in svc["spec"]["ports"]}
    for e in sm["spec"]["endpoints"]:
        if e.get("port") not in sports:
            errors.append(f"ServiceMonitor endpoint port {e.get('port')} is not a Service port {sorted(sports)}")

    rules_path = os.path.join(root, "alerts", "bfo-alive.rules.yml")
    with open(rules_path) as f:
        rules_text = f.read()
    jobs = set(re.findall(r'\bjob="([^"]+)"', "\n".join(l for l in rules_text.splitlines() if not l.lstrip().startswith("#"))))
    if len(jobs) != 1:
        errors.append(f"alerts select jobs {sorted(jobs)}, want exactly one")
    else:
        job = jobs.pop()
        if svc["metadata"]["name"] != job:
            errors.append(f"Service is named {svc['metadata']['name']!r}; the Operator would set job to that, alerts want {job!r}")
        with open(os.path.join(root, "deploy", "prometheus", "prometheus.yml")) as f:
            prom = yaml.safe_load(f)
        if job not in [s.get("job_name") for s in prom.get("scrape_configs", [])]:
            errors.append(f"deploy/prometheus/prometheus.yml has no scrape job {job!r}")

    if pr.get("spec") != yaml.safe_load(rules_text):
        errors.append("PrometheusRule spec differs from alerts/bfo-alive.rules.yml: run deploy/kubernetes/generate-prometheusrule.sh")
    errors += alertmanager_names(root, yaml.safe_load(rules_text))
    return report(errors)


def alertmanager_names(root, rules):
    """Alert names in the example Alertmanager configuration that no rule defines."""
    names = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    with open(os.path.join(root, "deploy", "alertmanager", "alertmanager.yml")) as f:
        am = yaml.safe_load(f)
    matchers = []

    def walk(route):
        matchers.extend(route.get("matchers", []))
        for r in route.get("routes", []):
            walk(r)

    walk(am.get("route", {}))
    for rule in am.get("inhibit_rules", []):
        matchers += rule.get("source_matchers", []) + rule.get("target_matchers", [])
    errors = []
    for m in matchers:
        found = re.match(r'\s*alertname\s*(=~|!~|!=|=)\s*"(.*)"\s*$', m)
        if not found:
            continue
        for alt in found.group(2).split("|"):
            if re.fullmatch(r"\w+", alt) and alt not in names:
                errors.append(f"alertmanager.yml matcher {m!r}: no alert named {alt}")
    return errors


def report(errors):
    for e in errors:
        print(f"  FAIL {e}")
    if errors:
        print(f"deploy check: {len(errors)} problem(s)")
        return 1
    print("deploy check: manifests consistent, job names agree, PrometheusRule equals the rules, Alertmanager names real alerts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
