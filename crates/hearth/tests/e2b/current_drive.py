"""What the current e2b SDK does beyond the core calls, through its sync
and async clients against a real `hearth server` (configured only by
E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY): timeout policies (pause with
or without memory, auto-resume by traffic), filesystem-only pauses, signed
file URLs opened by anyone holding them, a sandbox killed under a streaming
command, forks with per-copy results, and the log, API-key and team-metric
routes.

usage: current_drive.py
Prints `figure name=value` lines and ends with `all checks passed`.
"""

import asyncio
import datetime
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

from e2b import AsyncSandbox, Sandbox
from e2b.exceptions import SandboxException, SandboxNotRunningException

API = os.environ["E2B_API_URL"]
KEY = os.environ["E2B_API_KEY"]


def check(name, cond, detail=""):
    if not cond:
        print(f"FAILED: {name} {detail}", flush=True)
        sys.exit(1)
    print(f"ok: {name}", flush=True)


def http(method, path, body=None, headers=None, base=API, raw=None, content_type="application/json"):
    """A raw request; returns (status, body bytes)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(path if path.startswith("http") else base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", content_type)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def keyed(method, path, body=None):
    return http(method, path, body, {"X-API-Key": KEY})


def state_of(sandbox_id):
    status, body = keyed("GET", f"/sandboxes/{sandbox_id}")
    return json.loads(body)["state"] if status == 200 else f"status {status}"


def wait_state(sandbox_id, want, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if state_of(sandbox_id) == want:
            return True
        time.sleep(0.25)
    return False


def alive(sbx, pid):
    return sbx.commands.run(f"kill -0 {pid} && echo alive || echo gone").stdout.strip()


# Timeout policies.

def on_timeout_pause_keeps_memory_by_default():
    sbx = Sandbox.create(timeout=120, lifecycle={"on_timeout": "pause"})
    info = sbx.get_info()
    check("get_info lifecycle: pause, no auto-resume",
          info.lifecycle == {"on_timeout": "pause", "auto_resume": False}, info.lifecycle)
    pid = sbx.commands.run("sleep 600", background=True).pid
    sbx.set_timeout(1)
    check("on_timeout pause: paused at its timeout", wait_state(sbx.sandbox_id, "paused"),
          state_of(sbx.sandbox_id))
    resumed = Sandbox.connect(sbx.sandbox_id, timeout=60)
    check("a full auto-pause (keep_memory unset) resumes its processes", alive(resumed, pid) == "alive")
    resumed.kill()


def on_timeout_pause_filesystem_only():
    sbx = Sandbox.create(timeout=120, lifecycle={"on_timeout": {"action": "pause", "keep_memory": False}})
    sbx.files.write("/home/user/kept.txt", "kept across a reboot")
    pid = sbx.commands.run("sleep 600", background=True).pid
    sbx.set_timeout(1)
    check("keep_memory False: paused at its timeout", wait_state(sbx.sandbox_id, "paused"),
          state_of(sbx.sandbox_id))
    started = time.monotonic()
    resumed = Sandbox.connect(sbx.sandbox_id, timeout=60)
    print(f"figure filesystem_resume_ms={(time.monotonic() - started) * 1000:.0f}", flush=True)
    check("a filesystem-only pause keeps the files",
          resumed.files.read("/home/user/kept.txt") == "kept across a reboot")
    check("a filesystem-only pause boots again: the process is gone", alive(resumed, pid) == "gone")
    check("the booted sandbox has the template's defaults",
          resumed.commands.run("whoami; pwd").stdout.split() == ["user", "/home/user"])
    # Booted in another slot than it was made in, it still pauses with its
    # memory (its disk belongs to its new VMM).
    later = resumed.commands.run("sleep 600", background=True).pid
    resumed.pause()
    again = Sandbox.connect(sbx.sandbox_id, timeout=60)
    check("a rebooted sandbox pauses and resumes with its memory", alive(again, later) == "alive")
    again.kill()


def auto_resume_by_traffic():
    sbx = Sandbox.create(timeout=120, lifecycle={"on_timeout": "pause", "auto_resume": True})
    check("get_info lifecycle: auto-resume", sbx.get_info().lifecycle["auto_resume"] is True)
    pid = sbx.commands.run("sleep 600", background=True).pid
    sbx.set_timeout(1)
    check("auto_resume: paused at its timeout", wait_state(sbx.sandbox_id, "paused"), state_of(sbx.sandbox_id))
    started = time.monotonic()
    # No connect: the request itself wakes the sandbox and is answered.
    answer = alive(sbx, pid)
    print(f"figure auto_resume_request_ms={(time.monotonic() - started) * 1000:.0f}", flush=True)
    check("a request to a paused auto-resume sandbox is answered by its resumed processes", answer == "alive")
    check("and it is running again", state_of(sbx.sandbox_id) == "running")
    # An explicit filesystem-only pause is not woken by traffic.
    sbx.pause(mode="filesystem")
    try:
        sbx.commands.run("true")
        check("a filesystem-only pause is not auto-resumed", False)
    except SandboxException as e:  # the SDK's "not running" error
        check("a filesystem-only pause is not auto-resumed", "paused" in str(e), e)
    Sandbox.kill(sbx.sandbox_id)
    status, body = keyed("POST", "/sandboxes",
                         {"templateID": "base", "autoPause": True, "autoPauseMemory": False,
                          "autoResume": {"enabled": True}})
    check("autoResume with autoPauseMemory false → 400", status == 400 and b"autoResume" in body, (status, body))
    status, body = keyed("POST", "/sandboxes", {"templateID": "base", "autoResume": {"enabled": True}})
    check("autoResume without autoPause → 400", status == 400 and b"autoPause" in body, (status, body))


# Signed URLs.

def signed_urls():
    sbx = Sandbox.create(secure=True)
    check("secure sandbox has a token", sbx._envd_access_token is not None)
    sbx.files.write("/home/user/signed.txt", "signed content")
    url = sbx.download_url("/home/user/signed.txt")
    check("the download URL names no sandbox", sbx.sandbox_id not in url and "signature=" in url, url)
    status, body = http("GET", url)
    check("a signed download URL works with no key or token", status == 200 and body == b"signed content",
          (status, body[:200]))
    status, body = http("GET", url.replace("signature=v1_", "signature=v1_x"))
    check("a tampered signature → 403", status == 403, (status, body))
    status, body = http("GET", url.replace("signed.txt", "other.txt"))
    check("a signature for another path → 403", status == 403, (status, body))
    up = sbx.upload_url("/home/user/uploaded.txt")
    boundary = uuid.uuid4().hex
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"uploaded.txt\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\nuploaded by url\r\n--{boundary}--\r\n").encode()
    status, body = http("POST", up, raw=form, content_type=f"multipart/form-data; boundary={boundary}")
    check("a signed upload URL works with no key or token", status == 200, (status, body[:200]))
    check("the upload landed", sbx.files.read("/home/user/uploaded.txt") == "uploaded by url")
    status, body = http("POST", url, raw=form, content_type=f"multipart/form-data; boundary={boundary}")
    check("a read signature does not allow a write → 403", status == 403, (status, body))
    expiring = sbx.download_url("/home/user/signed.txt", use_signature_expiration=1)
    time.sleep(2.2)
    status, body = http("GET", expiring)
    check("an expired signature → 403 that says so", status == 403 and b"expired" in body, (status, body))
    sbx.kill()
    status, body = http("GET", url)
    check("a killed sandbox's URL → 403", status == 403, (status, body))


# A sandbox that goes away under its clients.

def killed_while_streaming():
    sbx = Sandbox.create()
    handle = sbx.commands.run("sleep 120", background=True)
    threading.Timer(1.0, lambda: Sandbox.kill(sbx.sandbox_id)).start()
    started = time.monotonic()
    try:
        handle.wait()
        check("a kill ends a streaming command", False)
    except SandboxNotRunningException as e:
        elapsed = time.monotonic() - started
        print(f"figure killed_stream_error_s={elapsed:.2f}", flush=True)
        check("a kill ends a streaming command at once with E2B's error",
              elapsed < 10 and "killed or reached its end of life" in str(e), (elapsed, e))
    started = time.monotonic()
    running = sbx.is_running()
    check("is_running() of a killed sandbox is False, quickly",
          running is False and time.monotonic() - started < 5, (running, time.monotonic() - started))


# Forks.

def forks():
    sbx = Sandbox.create(timeout=300)
    sbx.files.write("/home/user/parent.txt", "from the parent")
    copies = sbx.fork(count=3, timeout=120)
    check("fork(count=3) answers one entry per copy", len(copies) == 3, copies)
    check("every copy started", all(isinstance(c, Sandbox) for c in copies), copies)
    check("copies have the parent's files",
          all(c.files.read("/home/user/parent.txt") == "from the parent" for c in copies))
    for c in copies:
        c.kill()
    # E2B's limit: 100 copies in one request.
    started = time.monotonic()
    status, body = keyed("POST", f"/sandboxes/{sbx.sandbox_id}/fork", {"count": 100, "timeout": 120})
    results = json.loads(body) if status == 201 else []
    print(f"figure fork_100_s={time.monotonic() - started:.1f}", flush=True)
    ok = [r["sandbox"]["sandboxID"] for r in results if "sandbox" in r]
    check("fork count=100 → 100 per-copy results, all started", status == 201 and len(ok) == 100,
          (status, [r for r in results if "error" in r][:3]))
    check("100 distinct copies", len(set(ok)) == 100)
    status, body = keyed("POST", f"/sandboxes/{sbx.sandbox_id}/fork", {"count": 101})
    check("fork count=101 → 400", status == 400 and b"count" in body, (status, body))
    # With the 100 running, more copies than the server has room for (it
    # runs with --max-sandboxes 110): each succeeds or fails on its own.
    copies = sbx.fork(count=12, timeout=60)
    started_ok = [c for c in copies if isinstance(c, Sandbox)]
    failed = [c for c in copies if isinstance(c, Exception)]
    check("a fork beyond capacity answers per copy: some started, the rest failed with a reason",
          len(copies) == 12 and started_ok and failed and all("slot" in str(f) or "sandboxes" in str(f) for f in failed),
          [str(f) for f in failed][:2])
    for c in started_ok:
        check("a started copy of a partial fork works", c.files.read("/home/user/parent.txt") == "from the parent")
        c.kill()
    for copy in ok:
        Sandbox.kill(copy)
    sbx.kill()


# Routes.

def logs_routes():
    sbx = Sandbox.create()
    sbx.commands.run("for i in 1 2 3; do echo console-line-$i > /dev/console; sleep 0.05; done", user="root")
    status, body = keyed("GET", f"/v2/sandboxes/{sbx.sandbox_id}/logs")
    newest = json.loads(body)["logs"]
    check("v2 logs answer newest first",
          status == 200 and [e["message"] for e in newest if e["message"].startswith("console-line")]
          == ["console-line-3", "console-line-2", "console-line-1"],
          (status, body[:300]))
    times = [e["timestamp"] for e in newest]
    check("v2 logs: backward by default", times == sorted(times, reverse=True))
    oldest_ms = int(datetime.datetime.fromisoformat(newest[-1]["timestamp"].replace("Z", "+00:00")).timestamp() * 1000)
    status, body = keyed("GET", f"/v2/sandboxes/{sbx.sandbox_id}/logs?direction=forward&limit=2&cursor={oldest_ms}")
    forward = json.loads(body)["logs"]
    check("v2 logs: forward from a cursor, limited",
          status == 200 and len(forward) == 2 and forward[0]["timestamp"] <= forward[1]["timestamp"], body[:300])
    status, body = keyed("GET", f"/v2/sandboxes/{sbx.sandbox_id}/logs?search=line-2")
    found = [e["message"] for e in json.loads(body)["logs"]]
    check("v2 logs: search", status == 200 and found == ["console-line-2"], body[:300])
    status, body = keyed("GET", f"/v2/sandboxes/{sbx.sandbox_id}/logs?direction=up")
    check("v2 logs: a bad direction → 400", status == 400, (status, body))
    sbx.kill()


def api_key_routes():
    status, body = keyed("GET", "/api-keys")
    keys = json.loads(body)
    check("GET /api-keys lists masked keys", status == 200 and keys and all(
        k["mask"]["prefix"] == "e2b_" and k["mask"]["valueLength"] == 40 and "key" not in k for k in keys), body)
    mine = [k for k in keys if KEY[4:6] == k["mask"]["maskedValuePrefix"] and KEY.endswith(k["mask"]["maskedValueSuffix"])]
    check("the key in use is listed by its mask", len(mine) >= 1, keys)
    status, body = keyed("POST", "/api-keys", {"name": "made-by-api"})
    made = json.loads(body)
    check("POST /api-keys → 201 with the key once", status == 201 and made["key"].startswith("e2b_")
          and len(made["key"]) == 44 and made["mask"]["maskedValueSuffix"] == made["key"][-4:], body)
    status, _ = http("GET", "/v2/sandboxes", headers={"X-API-Key": made["key"]})
    check("the new key works", status == 200, status)
    status, _ = keyed("PATCH", f"/api-keys/{made['id']}", {"name": "renamed"})
    names = [k["name"] for k in json.loads(keyed("GET", "/api-keys")[1]) if k["id"] == made["id"]]
    check("PATCH /api-keys/{id} renames it", status == 200 and names == ["renamed"], (status, names))
    status, _ = keyed("DELETE", f"/api-keys/{made['id']}")
    check("DELETE /api-keys/{id} → 204", status == 204, status)
    status, _ = http("GET", "/v2/sandboxes", headers={"X-API-Key": made["key"]})
    check("a deleted key stops working at once", status == 401, status)
    status, _ = keyed("DELETE", f"/api-keys/{made['id']}")
    check("deleting it again → 404", status == 404, status)
    only = [k["id"] for k in json.loads(keyed("GET", "/api-keys")[1])]
    if len(only) == 1:
        status, body = keyed("DELETE", f"/api-keys/{only[0]}")
        check("the last key that works cannot be deleted → 409", status == 409, (status, body))


def team_metric_routes():
    status, body = keyed("GET", "/teams/local/metrics")
    points = json.loads(body)
    check("team metrics: 200 with samples", status == 200 and points, (status, body[:200]))
    check("team metrics counted the sandboxes this script ran",
          max(p["concurrentSandboxes"] for p in points) >= 100 and any(p["sandboxStartRate"] > 0 for p in points),
          points[-5:])
    status, body = keyed("GET", "/teams/local/metrics/max?metric=concurrent_sandboxes")
    high = json.loads(body)
    check("team metrics max: the 100 forks at once", status == 200 and high["value"] >= 100, body)
    status, body = keyed("GET", "/teams/other/metrics")
    check("another team → 403", status == 403, (status, body))
    status, body = keyed("GET", "/teams/local/metrics/max?metric=nope")
    check("an unknown metric → 400", status == 400, (status, body))


# The async client.

async def async_checks():
    sbx = await AsyncSandbox.create(timeout=120, lifecycle={"on_timeout": "pause", "auto_resume": True})
    info = await sbx.get_info()
    check("async: lifecycle in get_info", info.lifecycle == {"on_timeout": "pause", "auto_resume": True},
          info.lifecycle)
    pid = (await sbx.commands.run("sleep 600", background=True)).pid
    await sbx.set_timeout(1)
    check("async: paused at its timeout", await asyncio.to_thread(wait_state, sbx.sandbox_id, "paused"))
    out = await sbx.commands.run(f"kill -0 {pid} && echo alive || echo gone")
    check("async: auto-resume answers the request that woke it", out.stdout.strip() == "alive", out)
    await sbx.files.write("/home/user/async.txt", "async kept")
    await sbx.pause(mode="filesystem")
    check("async: pause(mode=filesystem) pauses", state_of(sbx.sandbox_id) == "paused")
    resumed = await AsyncSandbox.connect(sbx.sandbox_id, timeout=60)
    check("async: connect boots it again with its files",
          await resumed.files.read("/home/user/async.txt") == "async kept")
    gone = await resumed.commands.run(f"kill -0 {pid} && echo alive || echo gone")
    check("async: ... and without its processes", gone.stdout.strip() == "gone")
    url = resumed.download_url("/home/user/async.txt")
    status, body = await asyncio.to_thread(http, "GET", url)
    check("async: a signed URL of a rebooted sandbox works", status == 200 and body == b"async kept", (status, body))
    handle = await resumed.commands.run("sleep 120", background=True)
    asyncio.get_running_loop().call_later(1.0, lambda: asyncio.ensure_future(AsyncSandbox.kill(resumed.sandbox_id)))
    started = time.monotonic()
    try:
        await handle.wait()
        check("async: a kill ends a streaming command", False)
    except SandboxNotRunningException as e:
        check("async: a kill ends a streaming command at once with E2B's error",
              time.monotonic() - started < 10 and "killed or reached its end of life" in str(e), e)
    check("async: is_running() is False", await resumed.is_running() is False)
    parent = await AsyncSandbox.create()
    copies = await parent.fork(count=2)
    check("async: fork(count=2) → two copies", len(copies) == 2 and all(isinstance(c, AsyncSandbox) for c in copies),
          copies)
    for c in [parent, *copies]:
        await c.kill()


def main():
    on_timeout_pause_keeps_memory_by_default()
    on_timeout_pause_filesystem_only()
    auto_resume_by_traffic()
    signed_urls()
    killed_while_streaming()
    logs_routes()
    api_key_routes()
    forks()
    asyncio.run(async_checks())
    # Samples are taken every 5 s: the forks are in them by now.
    time.sleep(6)
    team_metric_routes()
    print("all checks passed", flush=True)


main()
