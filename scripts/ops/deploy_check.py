#!/usr/bin/env python3
"""Consistency of the deploy/ examples with each other and with the alert rules.

- Every manifest in deploy/kubernetes parses and names apiVersion, kind and metadata.name;
  kustomization.yaml lists exactly the manifests there.
- The exporter runs as a StatefulSet, not a Deployment (a Deployment starts a replacement
  pod while the old one drains: two consumers of each pull queue); it shards by pod
  ordinal (--shard=auto/n with n = replicas, POD_NAME from the pod's name) and is
  governed by the Service.
- No volume is mounted with subPath (such a mount never receives ConfigMap updates); the
  --config.file lies in a ConfigMap volume mounted as a directory, and
  --config.watch-interval is set so that a new version is reloaded.
- Memory requests and limits are set.
- StatefulSet selector = its pod labels; the Service selects those pods and targets a named
  container port; the ServiceMonitor selects the Service, scrapes one of its ports and
  gives every target a shard label (relabeling or pod label).
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

    if "Deployment" in docs:
        errors.append(f"{docs['Deployment'][0]}: a Deployment; the exporter must run as a StatefulSet (deploy/sharding.md)")
    for kind in ("StatefulSet", "Service", "ServiceMonitor", "PrometheusRule"):
        if kind not in docs:
            errors.append(f"deploy/kubernetes has no {kind}")
    if errors:
        return report(errors)

    sts, svc, sm, pr = (docs[k][1] for k in ("StatefulSet", "Service", "ServiceMonitor", "PrometheusRule"))
    pod = sts["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    sel = sts["spec"]["selector"]["matchLabels"]
    if any(pod_labels.get(k) != v for k, v in sel.items()):
        errors.append(f"StatefulSet selector {sel} does not match its pod labels {pod_labels}")
    if any(pod_labels.get(k) != v for k, v in svc["spec"]["selector"].items()):
        errors.append(f"Service selector {svc['spec']['selector']} does not select the pods {pod_labels}")
    if sts["spec"].get("serviceName") != svc["metadata"]["name"]:
        errors.append(f"StatefulSet serviceName {sts['spec'].get('serviceName')!r} is not the Service {svc['metadata']['name']!r}")
    errors += check_pod(pod["spec"], sts["spec"].get("replicas", 1))
    cports = {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])}
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
        if not shard_label(e, sm["spec"], pod_labels, f"{sts['metadata']['name']}-2"):
            errors.append(f"ServiceMonitor endpoint {e.get('port')}: no shard target label (relabeling or podTargetLabels)")

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


def check_pod(spec, replicas):
    """The pod template: no subPath, the config in a ConfigMap directory that is watched,
    --shard=auto/n with n = replicas and POD_NAME set, memory requests and limits."""
    errors = []
    config_dirs = {
        m["mountPath"].rstrip("/")
        for c in spec["containers"]
        for m in c.get("volumeMounts", [])
        if any(v["name"] == m["name"] and "configMap" in v for v in spec.get("volumes", []))
    }
    for c in spec.get("initContainers", []) + spec["containers"]:
        name = c.get("name")
        for m in c.get("volumeMounts", []):
            if "subPath" in m or "subPathExpr" in m:
                errors.append(f"container {name}: volume {m['name']} is mounted with subPath; ConfigMap and Secret updates never reach such a mount")
    exporter = spec["containers"][0]
    args = exporter.get("args", [])
    flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
    cfg = flags.get("config.file", "")
    if os.path.dirname(cfg) not in config_dirs:
        errors.append(f"--config.file={cfg} is not in a ConfigMap volume mounted as a directory {sorted(config_dirs)}")
    if flags.get("config.watch-interval", "0s") in ("0", "0s"):
        errors.append("no --config.watch-interval: a new ConfigMap version would not be reloaded")
    m = re.fullmatch(r"auto/(\d+)", flags.get("shard", ""))
    if not m:
        errors.append(f"--shard={flags.get('shard')}: want auto/n, the shard from the pod's ordinal")
    elif int(m.group(1)) != replicas:
        errors.append(f"--shard=auto/{m.group(1)} but replicas: {replicas}; pods would run no shard, or shards no pod")
    env = {e["name"]: e for e in exporter.get("env", [])}
    if env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
        errors.append("POD_NAME is not set from metadata.name (--shard=auto/n reads the ordinal from it)")
    res = exporter.get("resources", {})
    for kind in ("requests", "limits"):
        if not res.get(kind, {}).get("memory"):
            errors.append(f"container {exporter.get('name')}: no memory {kind}")
    return errors


def shard_label(endpoint, sm_spec, pod_labels, sample_pod):
    """True when scraped targets get a shard label: a pod label carried over by
    podTargetLabels, or a relabeling that, applied to sample_pod's name, yields its
    ordinal."""
    if "shard" in sm_spec.get("podTargetLabels", []) and "shard" in pod_labels:
        return True
    for r in endpoint.get("relabelings", []):
        if r.get("targetLabel") != "shard" or r.get("sourceLabels") != ["__meta_kubernetes_pod_name"]:
            continue
        m = re.fullmatch(r.get("regex", "(.*)"), sample_pod)
        value = m.expand(r.get("replacement", "$1").replace("$", "\\")) if m else None
        return value == sample_pod.rsplit("-", 1)[1]
    return False


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
    print("deploy check: StatefulSet sharded by ordinal, config watched without subPath, shard label; manifests consistent, job names agree, PrometheusRule equals the rules, Alertmanager names real alerts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
