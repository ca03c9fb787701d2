"""Drives a real `hearth server` with the stock e2b SDK, configured only by
E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY, as a user would.

usage: server_drive.py PHASE
  main    — everything that fits one server run; leaves one paused sandbox
            and prints `paused <id>` for the restart phase
  restart — after a server restart: the paused sandbox resumes with its
            files and its process; then it is killed
Prints `figure name=value` lines and ends with `all checks passed`.
"""

import asyncio
import ctypes
import datetime
import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

from e2b import AsyncSandbox, PtySize, Sandbox, SandboxQuery
from e2b.exceptions import NotFoundException, SandboxException, SandboxNotRunningException

API = os.environ["E2B_API_URL"]
KEY = os.environ["E2B_API_KEY"]


def check(name, cond, detail=""):
    if not cond:
        print(f"FAILED: {name} {detail}", flush=True)
        sys.exit(1)
    print(f"ok: {name}", flush=True)


def http(method, path, body=None, headers=None, base=API):
    """A raw request; returns (status, headers, body bytes)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def api_routes():
    status, _, _ = http("GET", "/health")
    check("health needs no key", status == 200, status)
    status, _, body = http("GET", "/v2/sandboxes")
    check("no key → 401", status == 401, (status, body))
    check("error body is E2B's", json.loads(body)["code"] == 401, body)
    status, _, _ = http("GET", "/v2/sandboxes", headers={"X-API-Key": "e2b_" + "0" * 40})
    check("wrong key → 401", status == 401, status)
    status, _, body = http("POST", "/v2/sandboxes", {"timeout": 10}, {"X-API-Key": KEY})
    check("missing templateID → 400 naming it", status == 400 and b"templateID" in body, (status, body))
    status, _, body = http(
        "POST", "/v2/sandboxes", {"templateID": "nope"}, {"X-API-Key": KEY}
    )
    check("unknown template → 404", status == 404, (status, body))
    status, _, body = http(
        "POST", "/v2/sandboxes", {"templateID": "base", "network": {"allowOut": ["api.example.com"]}},
        {"X-API-Key": KEY},
    )
    check("a domain in allowOut is refused, not ignored", status == 400 and b"network.allowOut" in body,
          (status, body))
    status, _, body = http(
        "POST", "/v2/sandboxes", {"templateID": "base", "volumeMounts": [{"name": "v", "path": "/data"}]},
        {"X-API-Key": KEY},
    )
    check("volumeMounts are refused, not ignored", status == 400 and b"volumeMounts" in body, (status, body))
    status, _, body = http("GET", "/sandboxes/doesnotexist", headers={"X-API-Key": KEY})
    check("unknown sandbox → 404", status == 404, (status, body))
    status, _, body = http("GET", "/templates", headers={"X-API-Key": KEY})
    check("templates list base", status == 200 and any(t["templateID"] == "base" for t in json.loads(body)), body)
    status, _, body = http("GET", "/templates/aliases/base", headers={"X-API-Key": KEY})
    check("an alias names its template", status == 200 and json.loads(body)["templateID"] == "base", (status, body))
    status, _, body = http("GET", "/templates/aliases/nope", headers={"X-API-Key": KEY})
    check("an unknown alias → 404", status == 404, (status, body))


def create_and_run():
    totals, creates, commands = [], [], []
    for _ in range(20):
        t = time.monotonic()
        sbx = Sandbox.create()
        created = time.monotonic()
        out = sbx.commands.run("true")
        done = time.monotonic()
        totals.append(done - t)
        creates.append(created - t)
        commands.append(done - created)
        sbx.kill()
        check("first command", out.exit_code == 0)

    def figure(name, times):
        times = sorted(times)
        p50, p95 = times[len(times) // 2], times[int(len(times) * 0.95) - 1]
        print(f"figure {name}_p50_ms={p50 * 1000:.0f} p95_ms={p95 * 1000:.0f}", flush=True)

    figure("create_to_first_command", totals)
    figure("of_which_create", creates)
    figure("of_which_first_command", commands)

    sbx = Sandbox.create("base", envs={"GREETING": "hi"}, metadata={"suite": "hearth", "run": "1"})
    out = sbx.commands.run("uname -r; echo $GREETING; hostname")
    lines = out.stdout.split()
    check("uname through the proxy", out.exit_code == 0 and lines[0].startswith("6.1"), out.stdout)
    check("env vars from create", lines[1] == "hi", out.stdout)
    check("host name is the sandbox id", lines[2] == sbx.sandbox_id, out.stdout)
    sbx.files.write("/home/user/note.txt", "kept")
    check("files through the proxy", sbx.files.read("/home/user/note.txt") == "kept")
    seen = bytearray()
    pty = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.send_stdin(pty.pid, b"echo pty-$((6*7)); exit\n")
    pty.wait(on_pty=seen.extend)
    check("a PTY through the proxy", b"pty-42" in seen, bytes(seen[-200:]))
    info = sbx.get_info()
    check("get_info metadata", info.metadata == {"suite": "hearth", "run": "1"}, info)
    metrics = sbx.get_metrics()
    check(
        "metrics of the guest",
        len(metrics) == 1 and metrics[0].cpu_count == 2 and 0 < metrics[0].mem_used < metrics[0].mem_total,
        metrics,
    )
    # v1 first: the guest may log more between the two requests, so the v1
    # lines must be a run of the v2 ones, not necessarily their end.
    status, _, body = http("GET", f"/sandboxes/{sbx.sandbox_id}/logs?limit=5", headers={"X-API-Key": KEY})
    v1 = json.loads(body) if status == 200 else {}
    # v2 logs: newest first by default (E2B's backward direction).
    status, _, body = http("GET", f"/v2/sandboxes/{sbx.sandbox_id}/logs", headers={"X-API-Key": KEY})
    newest = json.loads(body)["logs"] if status == 200 else []
    messages = [e["message"] for e in reversed(newest)]
    check("logs hold the guest's console", any("applied /init" in m for m in messages), (status, body[:300]))
    check("v2 logs come newest first",
          [e["timestamp"] for e in newest] == sorted((e["timestamp"] for e in newest), reverse=True), newest[:3])
    lines = [l["line"] for l in v1.get("logs", [])]
    runs = [messages[i:i + 5] for i in range(len(messages) - 4)]
    check("v1 logs give the last lines, oldest first",
          len(lines) == 5 and lines in runs and len(v1.get("logEntries", [])) == 5,
          (lines, messages[-8:]))
    return sbx


def listing(sbx):
    other = Sandbox.create(metadata={"suite": "other"})
    found = Sandbox.list(query=SandboxQuery(metadata={"suite": "hearth"})).next_items()
    ids = [s.sandbox_id for s in found]
    check("list filters by metadata", ids == [sbx.sandbox_id], ids)
    pages, seen = Sandbox.list(limit=1), []
    while pages.has_next:
        seen += [s.sandbox_id for s in pages.next_items()]
    check("pagination sees every sandbox once", sorted(seen) == sorted([sbx.sandbox_id, other.sandbox_id]), seen)
    # `other` started after `sbx`: oldest first and newest first, a page at a time.
    for order, expected in [("asc", [sbx.sandbox_id, other.sandbox_id]), ("desc", [other.sandbox_id, sbx.sandbox_id])]:
        pages, seen = Sandbox.list(limit=1, order=order), []
        while pages.has_next:
            seen += [s.sandbox_id for s in pages.next_items()]
        check(f"list order={order}", seen == expected, seen)
    started = Sandbox.list(query=SandboxQuery(metadata={"suite": "other"})).next_items()[0].started_at
    after = [s.sandbox_id for s in Sandbox.list(query=SandboxQuery(started_after=started)).next_items()]
    check("list started_after keeps those started then or later", after == [other.sandbox_id], after)
    later = started + datetime.timedelta(seconds=1)
    none = Sandbox.list(query=SandboxQuery(started_after=later)).next_items()
    check("  and none started before", none == [], none)
    by_template = {s.sandbox_id for s in Sandbox.list(query=SandboxQuery(template="base")).next_items()}
    check("list template=base", by_template == {sbx.sandbox_id, other.sandbox_id}, by_template)
    check("list template=nope is empty", Sandbox.list(query=SandboxQuery(template="nope")).next_items() == [])
    async def async_order(order):
        pages, seen = AsyncSandbox.list(limit=1, order=order), []
        while pages.has_next:
            seen += [s.sandbox_id for s in await pages.next_items()]
        return seen

    check("async list order=asc", asyncio.run(async_order("asc")) == [sbx.sandbox_id, other.sandbox_id])
    check("async list order=desc", asyncio.run(async_order("desc")) == [other.sandbox_id, sbx.sandbox_id])
    status, _, body = http("GET", "/v2/sandboxes?order=sideways", headers={"X-API-Key": KEY})
    check("a bad order is a 400 that names it", status == 400 and b"order" in body, (status, body))
    other.kill()
    try:
        Sandbox.connect(other.sandbox_id)
        check("killed sandbox is gone", False)
    except (NotFoundException, SandboxException):
        check("killed sandbox is gone", True)
    check("a killed sandbox is not running", other.is_running() is False)
    try:
        other.commands.run("true")
        check("a command in a killed sandbox raises SandboxNotRunningException", False)
    except SandboxNotRunningException:
        check("a command in a killed sandbox raises SandboxNotRunningException", True)


def user_port(sbx):
    sbx.commands.run("python3 -m http.server 8000 --directory /home/user", background=True)
    headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8000"}
    status, body = None, b""
    for _ in range(50):
        status, _, body = http("GET", "/note.txt", headers=headers, base=os.environ["E2B_SANDBOX_URL"])
        if status == 200:
            break
        time.sleep(0.2)
    check("a user port through the proxy (headers)", status == 200 and body == b"kept", (status, body))
    status, _, body = http("GET", "/", headers={**headers, "E2b-Sandbox-Port": "8001"},
                           base=os.environ["E2B_SANDBOX_URL"])
    check("a closed port → 502 'port is not open'", status == 502 and b"port is not open" in body, (status, body))
    domain = os.environ.get("HEARTH_DOMAIN")
    if domain:
        status, _, body = http(
            "GET", "/note.txt", headers={"Host": f"8000-{sbx.sandbox_id}.{domain}"},
            base=os.environ["E2B_SANDBOX_URL"],
        )
        check("a user port through the proxy (host name)", status == 200 and body == b"kept", (status, body))
    status, _, _ = http(
        "POST", "/init", {}, {"E2b-Sandbox-Id": sbx.sandbox_id}, base=os.environ["E2B_SANDBOX_URL"]
    )
    check("/init is not proxied", status == 403, status)


# A guest server that accepts an HTTP/1.1 Upgrade to a made-up protocol and
# then echoes bytes: enough to show the proxy splices upgraded connections
# (as it does WebSockets) without a WebSocket library in the guest.
UPGRADE_SERVER = r"""
import socket
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 8001))
srv.listen()
while True:
    conn, _ = srv.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        head += conn.recv(1024)
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
    while True:
        data = conn.recv(1024)
        if not data:
            break
        conn.sendall(data)
    conn.close()
"""


def proxy_protocols(sbx):
    import socket
    import httpx

    base = os.environ["E2B_SANDBOX_URL"]
    headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8000"}
    with httpx.Client(http1=False, http2=True) as client:
        r = client.get(base + "/note.txt", headers=headers)
    check("h2c through the proxy", r.status_code == 200 and r.text == "kept" and r.http_version == "HTTP/2",
          (r.status_code, r.http_version, r.text))

    sbx.files.write("/home/user/upgrade.py", UPGRADE_SERVER)
    sbx.commands.run("python3 /home/user/upgrade.py", background=True)
    host, port = base.removeprefix("http://").split(":")
    reply = b""
    for _ in range(50):
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(
                f"GET /x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n"
                f"E2b-Sandbox-Id: {sbx.sandbox_id}\r\nE2b-Sandbox-Port: 8001\r\n\r\n".encode()
            )
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(1024)
                if not chunk:
                    break
                head += chunk
            if head.startswith(b"HTTP/1.1 101"):
                conn.sendall(b"ping through the proxy")
                while len(reply) < 22:
                    chunk = conn.recv(1024)
                    if not chunk:
                        break
                    reply += chunk
                break
        time.sleep(0.2)
    check("an upgraded connection is spliced both ways", reply == b"ping through the proxy", (head[:60], reply))


def timeouts():
    sbx = Sandbox.create(timeout=60)
    sbx.set_timeout(2)
    time.sleep(3.5)
    try:
        sbx.get_info()
        check("timed-out sandbox is killed", False)
    except (NotFoundException, SandboxException):
        check("timed-out sandbox is killed", True)

    kept = Sandbox.create(timeout=60, lifecycle={"on_timeout": "pause"})
    kept.files.write("/home/user/kept-on-timeout", "yes")
    kept.set_timeout(2)
    time.sleep(3.5)
    state = kept.get_info().state
    check("with autoPause a timed-out sandbox is paused", str(state).endswith("paused"), state)
    again = Sandbox.connect(kept.sandbox_id)
    check("and resumes with its files", again.files.read("/home/user/kept-on-timeout") == "yes")
    again.kill()


class Listener:
    """A TCP server outside the host (in the network namespace the test
    harness made for it, HEARTH_OUTSIDE_NETNS), as the internet is: guests
    may not reach the host's own addresses. Records what each connection
    sends."""

    def __init__(self):
        made = {}

        def bind():
            # setns moves only this thread; the socket stays in that netns.
            libc = ctypes.CDLL(None, use_errno=True)
            with open(os.environ["HEARTH_OUTSIDE_NETNS"]) as ns:
                if libc.setns(ns.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
                    made["error"] = os.strerror(ctypes.get_errno())
                    return
            sock = socket.socket()
            sock.bind((os.environ["HEARTH_OUTSIDE_IP"], 0))
            sock.listen(16)
            made["sock"] = sock

        t = threading.Thread(target=bind)
        t.start()
        t.join()
        if "sock" not in made:
            raise SystemExit(f"FAILED: cannot listen outside: {made.get('error')}")
        self.sock = made["sock"]
        self.port = self.sock.getsockname()[1]
        self.seen = set()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(5)
                data = b""
                while chunk := conn.recv(64):
                    data += chunk
                self.seen.add(data.decode().strip())

    def got(self, tag):
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if tag in self.seen:
                return True
            time.sleep(0.05)
        return False


def egress():
    ip, listener = os.environ["HEARTH_OUTSIDE_IP"], Listener()

    def reach(sbx, tag):
        """Whether the guest's connection got through; the guest's error otherwise."""
        out = sbx.commands.run(
            f"timeout 10 bash -c 'echo {tag} > /dev/tcp/{ip}/{listener.port}' 2>&1; echo rc=$?"
        )
        return out.stdout.endswith("rc=0\n") and listener.got(tag), out.stdout

    opened = Sandbox.create()
    ok, out = reach(opened, "open")
    check("an open sandbox connects out", ok, out)
    opened.kill()

    closed = Sandbox.create(allow_internet_access=False)
    t = time.monotonic()
    ok, out = reach(closed, "closed")
    check("a closed sandbox cannot connect out, and fails at once",
          not ok and "No route to host" in out and time.monotonic() - t < 5, out)
    check("  nor did the connection arrive", "closed" not in listener.seen)
    check("  while the proxy and its agent still work", closed.files.read("/etc/hostname").strip() == closed.sandbox_id)
    status, _, body = http("GET", f"/sandboxes/{closed.sandbox_id}", headers={"X-API-Key": KEY})
    detail = json.loads(body)
    check("its detail reports the policy",
          detail["allowInternetAccess"] is False and detail["network"]["denyOut"] == ["0.0.0.0/0"], detail)

    only = Sandbox.create(network={"deny_out": ["0.0.0.0/0"], "allow_out": [ip]})
    ok, out = reach(only, "allowed")
    check("allowOut wins over denyOut", ok, out)
    only.update_network({"deny_out": [f"{ip}/32"]})
    ok, out = reach(only, "updated")
    check("an update closes a running sandbox", not ok and "No route to host" in out, out)
    only.update_network({})
    ok, out = reach(only, "reopened")
    check("an empty update opens it again", ok, out)
    only.kill()

    closed.pause()
    again = Sandbox.connect(closed.sandbox_id)
    ok, out = reach(again, "resumed")
    check("a resumed sandbox keeps its policy", not ok and "No route to host" in out, out)
    copy = again.fork(count=1)[0]
    ok, out = reach(copy, "forked")
    check("a fork keeps its parent's policy", not ok and "No route to host" in out, out)
    copy.kill()
    again.kill()


def secure():
    """The SDK creates through POST /v2/sandboxes, which is always secure: the
    SDK gets an access token and sends it; a request without it is refused."""
    sbx = Sandbox.create()
    out = sbx.commands.run("echo secret")
    check("secure sandbox runs commands", out.stdout == "secret\n", out.stdout)
    url = sbx.download_url("/home/user/.profile")
    check("download URLs are signed", "signature=" in url, url)
    status, _, _ = http(
        "GET", "/envs", headers={"E2b-Sandbox-Id": sbx.sandbox_id}, base=os.environ["E2B_SANDBOX_URL"]
    )
    check("secure sandbox refuses requests without the token", status == 401, status)
    sbx.kill()


def fork(sbx):
    sbx.files.write("/home/user/fork-origin", "parent")
    copies = sbx.fork(count=2)
    check("fork gives two sandboxes", len(copies) == 2 and all(isinstance(c, Sandbox) for c in copies), copies)
    ids = {c.sandbox_id for c in copies}
    check("copies have their own ids", len(ids) == 2 and sbx.sandbox_id not in ids, ids)
    for i, copy in enumerate(copies):
        check(f"copy {i} has the parent's file", copy.files.read("/home/user/fork-origin") == "parent")
        copy.files.write("/home/user/fork-origin", f"copy {i}")
        out = copy.commands.run("hostname")
        check(f"copy {i} is named after itself", out.stdout.strip() == copy.sandbox_id, out.stdout)
    check("the parent keeps its own file", sbx.files.read("/home/user/fork-origin") == "parent")
    for copy in copies:
        copy.kill()


def pause(sbx):
    sbx.commands.run(
        "nohup sh -c 'i=0; while true; do i=$((i+1)); echo $i > /home/user/count.new; mv /home/user/count.new /home/user/count; sleep 0.2; done' >/dev/null 2>&1 & "
        "until [ -s /home/user/count ]; do sleep 0.1; done"
    )
    time.sleep(1)
    t = time.monotonic()
    sbx.pause()
    print(f"figure pause_ms={(time.monotonic() - t) * 1000:.0f}", flush=True)
    status, _, body = http("GET", f"/sandboxes/{sbx.sandbox_id}", headers={"X-API-Key": KEY})
    check("paused state", status == 200 and json.loads(body)["state"] == "paused", body)
    status, _, body = http("GET", "/envs", headers={"E2b-Sandbox-Id": sbx.sandbox_id}, base=os.environ["E2B_SANDBOX_URL"])
    check("proxy to a paused sandbox → 502 'was not found'", status == 502 and b"was not found" in body, (status, body))
    check("a paused sandbox is not running", sbx.is_running() is False)
    t = time.monotonic()
    again = Sandbox.connect(sbx.sandbox_id)
    print(f"figure resume_via_connect_ms={(time.monotonic() - t) * 1000:.0f}", flush=True)
    c1 = int(again.files.read("/home/user/count"))
    time.sleep(1)
    c2 = int(again.files.read("/home/user/count"))
    check("process runs across pause/resume", c2 > c1, (c1, c2))
    again.pause()
    print(f"paused {sbx.sandbox_id}", flush=True)


def restart(sid):
    sbx = Sandbox.connect(sid)
    check("paused sandbox resumes after a server restart", sbx.files.read("/home/user/note.txt") == "kept")
    c1 = int(sbx.files.read("/home/user/count"))
    time.sleep(1)
    c2 = int(sbx.files.read("/home/user/count"))
    check("its process still counts", c2 > c1, (c1, c2))
    sbx.kill()


def main():
    phase = sys.argv[1]
    if phase == "main":
        api_routes()
        sbx = create_and_run()
        listing(sbx)
        user_port(sbx)
        proxy_protocols(sbx)
        timeouts()
        egress()
        secure()
        fork(sbx)
        pause(sbx)
    else:
        restart(sys.argv[2])
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
