"""Checks the deployment files in deploy/ offline, with what runs here.

usage: deploy_check.py DEPLOY_DIR
  - the Kubernetes manifests against the Kubernetes API schemas
    (kubernetes-validate bundles them), and what Hearth needs of them;
  - the Nomad jobs parsed as HCL2 (python-hcl2), and their structure.
Prints `ok: …` lines and ends with `all checks passed`.
"""

import os
import sys

import hcl2
import kubernetes_validate
import yaml

KUBERNETES = "1.31.0"


def check(name, cond, detail=""):
    if not cond:
        print(f"FAILED: {name} {detail}", flush=True)
        sys.exit(1)
    print(f"ok: {name}", flush=True)


def kubernetes(directory):
    documents = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name)) as f:
            for doc in yaml.safe_load_all(f):
                try:
                    kubernetes_validate.validate(doc, KUBERNETES, strict=True)
                except kubernetes_validate.ValidationError as e:
                    check(f"{name}: {doc['kind']} is valid", False, e.message)
                check(f"{name}: {doc['kind']} {doc['metadata']['name']} is valid Kubernetes {KUBERNETES}", True)
                documents[(doc["kind"], doc["metadata"]["name"])] = doc
    node = documents[("DaemonSet", "hearth-node")]["spec"]["template"]["spec"]
    container = node["containers"][0]
    check("nodes run `hearth node`", container["args"][0] == "node")
    check("nodes are privileged on the host network",
          container["securityContext"]["privileged"] and node["hostNetwork"])
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    check("nodes get KVM, cgroups and the host's data and run directories",
          {"/dev/kvm", "/sys/fs/cgroup", "/var/lib/hearth", "/run/hearth"} <= mounts, mounts)
    api = documents[("Deployment", "hearth-api")]["spec"]
    check("API servers run `hearth api`, several",
          api["template"]["spec"]["containers"][0]["args"][0] == "api" and api["replicas"] >= 2)
    service = documents[("Service", "hearth-api")]["spec"]
    check("the Service selects the API servers",
          service["selector"] == api["selector"]["matchLabels"])
    secret = documents[("Secret", "hearth-cluster")]["stringData"]
    check("the Secret holds the store and the cluster secret",
          set(secret) == {"HEARTH_STORE", "HEARTH_CLUSTER_SECRET"})
    for kind, name in [("DaemonSet", "hearth-node"), ("Deployment", "hearth-api")]:
        spec = documents[(kind, name)]["spec"]["template"]["spec"]
        refs = [e["secretRef"]["name"] for e in spec["containers"][0].get("envFrom", [])]
        check(f"{name} reads the Secret", refs == ["hearth-cluster"], refs)


def unquote(value):
    """python-hcl2 keeps the quotes of HCL strings."""
    return value.strip('"') if isinstance(value, str) else value


def nomad(directory):
    jobs = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name)) as f:
            parsed = hcl2.load(f)
        check(f"{name} parses as HCL2, one job", len(parsed["job"]) == 1, parsed.keys())
        for job in parsed["job"]:
            for job_name, body in job.items():
                jobs[job_name.strip('"')] = body
    node = jobs["hearth-node"]
    check("nodes are a system job", unquote(node["type"]) == "system", node["type"])
    task = node["group"][0]['"node"']["task"][0]['"node"']
    check("the node task runs `hearth node` as root (raw_exec)",
          unquote(task["driver"]) == "raw_exec" and unquote(task["config"][0]["args"][0]) == "node")
    check("nodes get the store and the secret", "HEARTH_CLUSTER_SECRET" in task["template"][0]["data"])
    api = jobs["hearth-api"]
    check("API servers are a service job", unquote(api["type"]) == "service", api["type"])
    group = api["group"][0]['"api"']
    check("two API servers", group["count"] == 2)
    task = group["task"][0]['"api"']
    check("the API task runs `hearth api`", unquote(task["config"][0]["args"][0]) == "api")
    check("the API service has a health check",
          unquote(group["service"][0]["check"][0]["path"]) == "/health")


def main():
    deploy = sys.argv[1]
    kubernetes(os.path.join(deploy, "kubernetes"))
    nomad(os.path.join(deploy, "nomad"))
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
