"""Egress by domain through the stock e2b SDK against a real `hearth
server`: a sandbox created with domain names in `allow_out` and all other
traffic denied reaches the named hosts over HTTP and TLS, and nothing else:
not another name on the same address, not an address of its choosing under
an allowed name, not the host through a name that resolves to it, not
another port, not another resolver. Bad policies are refused by name.

usage: egress_drive.py PROBE
PROBE is egress_guest.py; HEARTH_WEB, HEARTH_DNS, HEARTH_ROGUE and
HEARTH_HOST name its addresses. Ends with `all checks passed`.
"""

import json
import os
import sys
import urllib.error
import urllib.request

from e2b import ALL_TRAFFIC, Sandbox
from e2b.exceptions import InvalidArgumentException, SandboxException

API = os.environ["E2B_API_URL"]
KEY = os.environ["E2B_API_KEY"]
WEB, DNS, ROGUE = (os.environ[k] for k in ("HEARTH_WEB", "HEARTH_DNS", "HEARTH_ROGUE"))


def check(name, cond, detail=""):
    if not cond:
        print(f"FAILED: {name} {detail}", flush=True)
        sys.exit(1)
    print(f"ok: {name}", flush=True)


def metrics():
    req = urllib.request.Request(API + "/metrics", headers={"X-API-Key": KEY})
    with urllib.request.urlopen(req, timeout=60) as r:
        text = r.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("hearth_egress_proxy_connections_total{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split("{", 1)[1].rstrip("}")] = float(value)
    return found


def refused(network, said):
    try:
        sbx = Sandbox.create(network=network)
    except (InvalidArgumentException, SandboxException) as e:
        return said in str(e), str(e)
    sbx.kill()
    return False, "created"


before = metrics()
sbx = Sandbox.create(network={"allow_out": ["allowed.test", "*.wild.test"],
                              "deny_out": [ALL_TRAFFIC]})
info = sbx.get_info()
sbx.files.write("/tmp/probe.py", open(sys.argv[1]).read())
run = sbx.commands.run(f"python3 /tmp/probe.py {WEB} {DNS} {ROGUE}", timeout=180)
seen = json.loads(run.stdout)
print("guest saw:", json.dumps(seen), flush=True)

check("HTTP to an allowed name", seen["http_allowed"] == "200 web allowed.test", seen)
check("HTTP to an allowed name with its port", seen["http_allowed_with_port"] == "200 web allowed.test", seen)
check("HTTP to another name on the same address: the proxy's 403",
      seen["http_other"].startswith("403 egress proxy: other.test is not allowed"), seen)
check("HTTP to an address of the guest's choosing reaches the allowed name's own",
      seen["http_fronted"] == "200 web allowed.test", seen)
check("TLS to an allowed name", seen["tls_allowed"] == "tls allowed.test", seen)
check("TLS to another name on the same address is cut",
      not seen["tls_other"].startswith("tls"), seen)
check("TLS under a wildcard", seen["tls_wildcard"] == "tls a.wild.test", seen)
check("a wildcard does not allow its apex", not seen["tls_wildcard_apex"].startswith("tls"), seen)
check("TLS to an address of the guest's choosing reaches the allowed name's own",
      seen["tls_fronted"] == "tls allowed.test", seen)
check("an allowed name that resolves to the host does not reach it",
      not seen["tls_to_host"].startswith("tls"), seen)
check("another port of an allowed name's address stays denied",
      seen["tcp_other_port"] in ("EHOSTUNREACH", "timeout"), seen)
check("the guest's nameserver answers", seen["dns_own"] == WEB, seen)
check("another resolver is out of reach", seen["dns_rogue"] in ("EHOSTUNREACH", "timeout"), seen)

after = metrics()
def grew(labels, by):
    return after.get(labels, 0) - before.get(labels, 0) >= by
check("metrics count allowed TLS", grew('port="tls",result="allowed"', 3), (before, after))
check("metrics count refused TLS", grew('port="tls",result="refused"', 2), (before, after))
check("metrics count refused HTTP", grew('port="http",result="refused"', 1), (before, after))
check("metrics count failed TLS (the host)", grew('port="tls",result="failed"', 1), (before, after))

detail = urllib.request.Request(f"{API}/sandboxes/{sbx.sandbox_id}", headers={"X-API-Key": KEY})
with urllib.request.urlopen(detail, timeout=60) as r:
    network = json.loads(r.read())["network"]
check("the sandbox's detail lists its names in allowOut",
      network == {"allowOut": ["allowed.test", "*.wild.test"], "denyOut": ["0.0.0.0/0"]}, network)
sbx.kill()

ok, said = refused({"allow_out": ["allowed.test"]}, "otherwise denied")
check("a name without everything else denied is refused", ok, said)
ok, said = refused({"allow_out": ["bad_name.test"], "deny_out": [ALL_TRAFFIC]}, "network.allowOut")
check("a malformed name is refused naming the field", ok, said)
ok, said = refused({"allow_out": ["1.1.1.1"], "deny_out": ["*.test"]}, "network.denyOut")
check("a name in deny_out is refused", ok, said)
print("all checks passed")
