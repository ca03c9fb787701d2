"""Builds templates on a real `hearth server` with the stock e2b SDK's
`Template()` builder, configured only by E2B_API_URL, E2B_SANDBOX_URL and
E2B_API_KEY, as a user would; then starts a sandbox from one and reaches
its app through the proxy.

usage: template_drive.py PHASE CONTEXT_DIR
  main      — build, start, rebuild, tag, fail, delete
  interrupt — start a slow build and print `building <buildID>` once its
              step runs, for the test to stop the server
  restarted — after a restart: that build failed as interrupted, left no
              template, and is deleted
Prints `figure name=value` lines and ends with `all checks passed`.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

from e2b import Sandbox, Template, wait_for_port
from e2b.exceptions import BuildException

API = os.environ["E2B_API_URL"]
KEY = os.environ["E2B_API_KEY"]
APP = "sdk-app"
FAILING = "sdk-fail"
SLOW = "sdk-slow"
# Unique per run, so the first build uploads its files and runs its steps
# whatever earlier runs left in the caches.
GREETING = f"hello from a template built by the e2b SDK ({os.urandom(8).hex()})\n"
GREETING_2 = GREETING.replace("hello", "hello again")


def check(name, cond, detail=""):
    if not cond:
        print(f"FAILED: {name} {detail}", flush=True)
        sys.exit(1)
    print(f"ok: {name}", flush=True)


def http(method, path, body=None, headers=None, base=API, timeout=30):
    """A raw request; returns (status, body bytes)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def api(method, path, body=None):
    return http(method, path, body, {"X-API-Key": KEY})


def app_template(context):
    return (
        Template(file_context_path=context)
        .from_template("base")
        .copy("app.py", "/home/user/app.py")
        .run_cmd("echo built > /home/user/marker")
        .set_start_cmd("python3 /home/user/app.py", wait_for_port(8000))
    )


def build(template, name, **kwargs):
    logs = []
    started = time.monotonic()
    info = Template.build(template, alias=name, on_build_logs=logs.append, **kwargs)
    secs = time.monotonic() - started
    messages = [str(getattr(entry, "message", entry)) for entry in logs]
    return info, secs, messages


def write_app(context, greeting):
    with open(os.path.join(context, "app.py"), "w") as f:
        f.write(
            "import http.server\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    def do_GET(self):\n"
            f"        body = {greeting!r}.encode()\n"
            "        self.send_response(200)\n"
            "        self.send_header('Content-Length', str(len(body)))\n"
            "        self.end_headers()\n"
            "        self.wfile.write(body)\n"
            "http.server.ThreadingHTTPServer(('0.0.0.0', 8000), H).serve_forever()\n"
        )


def main(context):
    write_app(context, GREETING)

    # The first build: upload, a COPY and a RUN in build VMs, the start
    # command serving, the snapshot.
    info, secs, messages = build(app_template(context), APP)
    print(f"figure sdk_build_s={secs:.1f}", flush=True)
    check("the build is named after the template", info.template_id == APP, info)
    check("the file was uploaded", any("Uploaded 'app.py'" in m for m in messages), messages)
    check(
        "the log shows the builder's steps",
        any(m.startswith("step 2/2 RUN echo built") for m in messages),
        messages,
    )
    check("Template.exists sees it", Template.exists(APP))
    status, body = api("GET", f"/templates/{APP}/builds/{info.build_id}/status?logsOffset=0&limit=5")
    got = json.loads(body)
    check(
        "the status route pages the log",
        status == 200 and got["status"] == "ready" and len(got["logEntries"]) == 5,
        (status, body[:300]),
    )

    # A sandbox of it: the app answers on its first request.
    started = time.monotonic()
    sbx = Sandbox.create(APP)
    host = sbx.get_host(8000)
    status, body = http("GET", "/", headers={"Host": host}, base=os.environ["E2B_SANDBOX_URL"])
    print(f"figure sdk_template_create_and_first_request_ms={(time.monotonic() - started) * 1000:.0f}")
    check("the app answers through the proxy", status == 200 and body.decode() == GREETING, (status, body))
    marker = sbx.commands.run("cat /home/user/marker")
    check("the RUN step's file is there", marker.stdout == "built\n", marker.stdout)
    copied = sbx.commands.run("cat /home/user/app.py").stdout
    check("the copied file is there", "ThreadingHTTPServer" in copied, copied[:200])

    # A filesystem-only pause keeps the files, not the processes: the
    # resume boots the template again, and its start command with it.
    sbx.pause(mode="filesystem")
    sbx = Sandbox.connect(sbx.sandbox_id)
    status, body = None, b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body = http("GET", "/", headers={"Host": host}, base=os.environ["E2B_SANDBOX_URL"])
        if status == 200:
            break
        time.sleep(0.5)
    check("after a filesystem-only pause the start command serves again",
          status == 200 and body.decode() == GREETING, (status, body))
    # Anchored: the shell running pgrep has the pattern in its own command line.
    services = sbx.commands.run("pgrep -fc '^python3 /home/user/app[.]py'").stdout.strip()
    check("  once", services == "1", services)

    # Nothing changed: no upload, every step from the cache.
    info2, secs, messages = build(app_template(context), APP)
    print(f"figure sdk_rebuild_unchanged_s={secs:.1f}", flush=True)
    check("the rebuild skips the upload", any("already cached" in m for m in messages), messages)
    check(
        "the rebuild takes every step from the cache",
        any("2 of 2 steps cached" in m for m in messages),
        messages,
    )
    check("the rebuild is fast", secs < 60, secs)
    check("the rebuild is a new build", info2.build_id != info.build_id)

    # Tags: the current build has `default`; a new tag names it too.
    tags = {t.tag: t.build_id for t in Template.get_tags(APP)}
    check("the current build holds the default tag", tags.get("default") == info2.build_id, tags)
    Template.assign_tags(f"{APP}:default", "v1")
    tagged = Sandbox.create(f"{APP}:v1")
    status, body = http(
        "GET", "/", headers={"Host": tagged.get_host(8000)}, base=os.environ["E2B_SANDBOX_URL"]
    )
    check("name:tag starts the tagged build", status == 200 and body.decode() == GREETING, (status, body))
    tagged.kill()
    status, body = api("POST", "/sandboxes", {"templateID": f"{APP}:nosuchtag"})
    check("an unknown tag is a 404", status == 404 and b"nosuchtag" in body, (status, body))

    # A changed file: a new build, which new sandboxes start from at once;
    # the tag on the old build still starts sandboxes of that build.
    write_app(context, GREETING_2)
    info3, secs, messages = build(app_template(context), APP)
    print(f"figure sdk_rebuild_changed_file_s={secs:.1f}", flush=True)
    check("the changed file is uploaded", any("Uploaded 'app.py'" in m for m in messages), messages)
    fresh = Sandbox.create(APP)
    status, body = http(
        "GET", "/", headers={"Host": fresh.get_host(8000)}, base=os.environ["E2B_SANDBOX_URL"]
    )
    check("a sandbox after the rebuild runs the new app", body.decode() == GREETING_2, (status, body))
    fresh.kill()
    status, body = http(
        "GET", "/", headers={"Host": sbx.get_host(8000)}, base=os.environ["E2B_SANDBOX_URL"]
    )
    check("the older sandbox keeps its build", body.decode() == GREETING, (status, body))
    old = Sandbox.create(f"{APP}:v1")
    status, body = http(
        "GET", "/", headers={"Host": old.get_host(8000)}, base=os.environ["E2B_SANDBOX_URL"]
    )
    check("a tag on an older build starts that build", body.decode() == GREETING, (status, body))
    old.kill()

    status, body = api("GET", f"/templates/{APP}")
    detail = json.loads(body)
    check(
        "the template lists its builds, newest first",
        status == 200
        and [b["status"] for b in detail["builds"]] == ["ready"] * 3
        and detail["builds"][0]["buildID"] == info3.build_id
        and detail["buildID"] == info3.build_id,
        (status, body[:600]),
    )

    # A failing RUN: BuildException naming the step, with the exit status.
    failing = Template(file_context_path=context).from_template("base").run_cmd(
        "echo doomed; exit 3"
    )
    try:
        Template.build(failing, alias=FAILING)
        check("a failing RUN fails the build", False)
    except BuildException as e:
        message = str(e)
        check(
            "a failing RUN names its step and status",
            "step 1" in message and "status 3" in message and "doomed" in message,
            message,
        )

    status, body = api("DELETE", f"/templates/{APP}")
    check("a template in use is not deleted", status == 409, (status, body))
    sbx.kill()
    for name in (APP, FAILING):
        status, body = api("DELETE", f"/templates/{name}")
        check(f"{name} is deleted", status == 204, (status, body))
        status, _ = api("GET", f"/templates/{name}")
        check(f"{name} is gone", status == 404, status)
    check("Template.exists no longer sees it", not Template.exists(APP))


def interrupt(context):
    slow = Template(file_context_path=context).from_template("base").run_cmd(
        "echo sleeping now; sleep 600"
    )
    info = Template.build_in_background(slow, alias=SLOW)
    deadline = time.monotonic() + 120
    while True:
        status, body = api("GET", f"/templates/{SLOW}/builds/{info.build_id}/status")
        got = json.loads(body)
        # Its output: the step runs in its build VM.
        if any(e["message"] == "sleeping now" for e in got["logEntries"]):
            break
        check("the slow build runs its step", time.monotonic() < deadline, got)
        time.sleep(0.5)
    check(
        "the slow build is building its step 1",
        got["status"] == "building" and got["logEntries"][-1]["step"] == "1",
        got,
    )
    print(f"building {info.build_id}", flush=True)


def restarted(build_id):
    status, body = api("GET", f"/templates/{SLOW}/builds/{build_id}/status")
    got = json.loads(body)
    check(
        "a build the server stopped during failed as interrupted",
        status == 200
        and got["status"] == "error"
        and got["reason"]["message"] == "interrupted: the server stopped during the build",
        (status, body),
    )
    check("it left no template", not Template.exists(SLOW))
    status, body = api("DELETE", f"/templates/{SLOW}")
    check("its records are deleted", status == 204, (status, body))


if __name__ == "__main__":
    phase, arg = sys.argv[1], sys.argv[2]
    {"main": main, "interrupt": interrupt, "restarted": restarted}[phase](arg)
    print("all checks passed", flush=True)
