"""Drives a Hearth cluster (two API servers in front of two nodes) with the
stock e2b SDK, as a user would: E2B_API_URL, E2B_SANDBOX_URL and
E2B_API_KEY name one API server or the other.

usage: cluster_drive.py PHASE API1 API2 [N]
  spread  — creates N sandboxes, alternately through API1 and API2; runs a
            command in each through the other API server; prints
            `sandbox <id>` for each and leaves them running
  reach   — reads ids from stdin; runs a command in each through API1 and
            through API2
  create  — creates N sandboxes through API1 (printed as `sandbox <id>`)
  gone    — reads ids from stdin; each is not running, through either API
  kill    — reads ids from stdin; kills each through API2
  build   — reads `template <name> <token>` from stdin; builds template
            <name> from base through API1 with the SDK's Template(), a RUN
            step writing <token> to /home/user/marker
  started — reads `template <name> <token>` from stdin; creates a sandbox
            of <name> through API2 and reads the marker back through API1;
            prints `sandbox <id>` and leaves it running
  latency — N creates (REST, as the SDK sends them) through API1 and N
            straight to node NODE (API2 names it, with the cluster secret
            in HEARTH_CLUSTER_SECRET), interleaved, each killed at once;
            prints the p50 of each
Prints `figure name=value` lines and ends with `all checks passed`.
"""

import json
import os
import statistics
import sys
import time
import urllib.request

from e2b import Sandbox, Template

KEY = os.environ["E2B_API_KEY"]


def check(name, cond, detail=""):
    if not cond:
        print(f"FAILED: {name} {detail}", flush=True)
        sys.exit(1)
    print(f"ok: {name}", flush=True)


def through(api):
    """Points the SDK at API server `api` (read when a client is made)."""
    os.environ["E2B_API_URL"] = api
    os.environ["E2B_SANDBOX_URL"] = api


def echo(api, sandbox_id, word):
    through(api)
    sandbox = Sandbox.connect(sandbox_id)
    result = sandbox.commands.run(f"echo {word}")
    return result.stdout.strip()


def create(api):
    through(api)
    started = time.monotonic()
    sandbox = Sandbox.create("base", timeout=600)
    return sandbox.sandbox_id, (time.monotonic() - started) * 1000


def spread(api1, api2, n):
    ids, times = [], []
    for i in range(n):
        api, other = (api1, api2) if i % 2 == 0 else (api2, api1)
        sandbox_id, ms = create(api)
        times.append(ms)
        ids.append(sandbox_id)
        print(f"sandbox {sandbox_id}", flush=True)
        word = f"hello-{i}"
        check(f"sandbox {i} made through one API answers through the other",
              echo(other, sandbox_id, word) == word)
    check(f"{n} sandboxes, all different", len(set(ids)) == n, ids)
    print(f"figure sdk_create_ms_p50={statistics.median(times):.0f}", flush=True)
    print(f"figure sdk_create_ms_max={max(times):.0f}", flush=True)


def rest(base, method, path, body=None, extra=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("X-API-Key", KEY)
    req.add_header("Content-Type", "application/json")
    for k, v in (extra or {}).items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=120) as r:
        data = r.read()
        return r.status, json.loads(data) if data else None


def latency(api, node, n):
    secret = {"X-Hearth-Cluster-Secret": os.environ["HEARTH_CLUSTER_SECRET"]}
    times = {"cluster": [], "node": []}
    for _ in range(n):
        for name, base, extra in (("cluster", api, None), ("node", node, secret)):
            # Both from a full pool: the kill before has been replaced.
            time.sleep(1.5)
            started = time.monotonic()
            status, body = rest(base, "POST", "/sandboxes", {"templateID": "base", "timeout": 60}, extra)
            times[name].append((time.monotonic() - started) * 1000)
            check(f"create through the {name}", status == 201, (status, body))
            status, _ = rest(base, "DELETE", f"/sandboxes/{body['sandboxID']}", None, extra)
            check(f"kill through the {name}", status == 204, status)
    for name, values in times.items():
        print(f"figure rest_{name}_create_ms_p50={statistics.median(values):.1f}", flush=True)
    ratio = statistics.median(times["cluster"]) / statistics.median(times["node"])
    print(f"figure cluster_over_node_create_p50_ratio={ratio:.2f}", flush=True)


def template_from_stdin():
    for line in sys.stdin:
        if line.startswith("template "):
            _, name, token = line.split()
            return name, token
    sys.exit("no `template NAME TOKEN` line on stdin")


def build(api):
    name, token = template_from_stdin()
    through(api)
    template = Template().from_template("base").run_cmd(f"echo {token} > /home/user/marker")
    started = time.monotonic()
    info = Template.build(template, alias=name)
    print(f"figure sdk_build_s={time.monotonic() - started:.1f}", flush=True)
    check("the build is named after the template", info.template_id == name, info)


def started(api1, api2):
    name, token = template_from_stdin()
    through(api2)
    begun = time.monotonic()
    sandbox = Sandbox.create(name, timeout=600)
    print(f"figure sdk_create_of_template_built_elsewhere_ms={(time.monotonic() - begun) * 1000:.0f}",
          flush=True)
    print(f"sandbox {sandbox.sandbox_id}", flush=True)
    through(api1)
    marker = Sandbox.connect(sandbox.sandbox_id).commands.run("cat /home/user/marker")
    check("the sandbox has the build's file", marker.stdout.strip() == token, marker.stdout)


def ids_from_stdin():
    return [line.split()[1] for line in sys.stdin if line.startswith("sandbox ")]


def main():
    phase, api1, api2 = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    if phase == "spread":
        spread(api1, api2, n)
    elif phase == "create":
        for _ in range(n):
            sandbox_id, _ms = create(api1)
            print(f"sandbox {sandbox_id}", flush=True)
    elif phase == "reach":
        for sandbox_id in ids_from_stdin():
            for api in (api1, api2):
                check(f"{sandbox_id} through {api}", echo(api, sandbox_id, "here") == "here")
    elif phase == "gone":
        for sandbox_id in ids_from_stdin():
            for api in (api1, api2):
                through(api)
                check(f"{sandbox_id} is not running, through {api}", not is_running(sandbox_id))
    elif phase == "build":
        build(api1)
    elif phase == "started":
        started(api1, api2)
    elif phase == "latency":
        latency(api1, api2, n)
    elif phase == "kill":
        through(api2)
        for sandbox_id in ids_from_stdin():
            check(f"kill {sandbox_id}", Sandbox.kill(sandbox_id))
    else:
        sys.exit(f"unknown phase {phase}")
    print("all checks passed", flush=True)


def is_running(sandbox_id):
    """Whether the API lists `sandbox_id` as running."""
    try:
        info = Sandbox.get_info(sandbox_id)
    except Exception:  # NotFoundException: it is gone.
        return False
    return str(info.state).lower().endswith("running")


if __name__ == "__main__":
    main()
