"""The operator dashboard in a real headless Chromium (Playwright, driving
the system's browser), against a real `hearth server` configured for the
stock e2b SDK by E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY: log in with
the key, see a sandbox the SDK creates appear in the table, run a command
in its terminal (whose shell dies when the terminal closes), kill it from
the page and see it leave the table and the API; and a template build
that fails, with its log. Saves login.png, table.png and terminal.png
under ARTIFACTS.

usage: dashboard_drive.py CHROMIUM ARTIFACTS
Prints `figure name=value` lines and ends with `all checks passed`.
"""

import json
import os
import re
import sys
import time
import urllib.error
import urllib.request

from e2b import Sandbox
from playwright.sync_api import expect, sync_playwright

API = os.environ["E2B_API_URL"]
KEY = os.environ["E2B_API_KEY"]
CHROMIUM, ARTIFACTS = sys.argv[1], sys.argv[2]
# Sandboxes boot under software emulation here: give the page time.
TIMEOUT_MS = 120_000


def check(name, cond, detail=""):
    if not cond:
        print(f"FAILED: {name} {detail}", flush=True)
        sys.exit(1)
    print(f"ok: {name}", flush=True)


def api(method, path, body=None):
    """A keyed REST call: (status, parsed JSON answer or None)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        API + path,
        data=data,
        method=method,
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


# The page's terminal renderer, fed bytes in the browser: (what the shell
# writes, in chunks), columns, rows, the screen's text expected.
RENDERER_CASES = [
    ([b"ab\tc\rX"], 20, 2, "Xb      c"),
    ([b"hello\x1b[2Dxy"], 20, 2, "helxy"),
    ([b"abc\x08\x08X"], 20, 2, "aXc"),
    ([b"abcdef\x1b[3G\x1b[P"], 20, 2, "abdef"),
    ([b"abcdef\x1b[3G\x1b[K"], 20, 2, "ab"),
    ([b"abcdef\x1b[3G\x1b[1K"], 20, 2, "   def"),
    ([b"one\r\ntwo\x1b[H\x1b[2J"], 20, 2, ""),
    ([b"one\r\ntwo\x1b[1;2Hx"], 20, 2, "oxe\ntwo"),
    ([b"0123456789ab"], 10, 2, "0123456789\nab"),
    ([b"1\r\n2\r\n3\r\n4"], 10, 3, "2\n3\n4"),
    ([b"\x1b]0;user@host: ~\x07\x1b[01;32mok\x1b[00m\x1b[?2004h"], 10, 2, "ok"),
    ([b"caf\xc3", b"\xa9"], 10, 2, "caf\u00e9"),
]


def check_renderer(page):
    for chunks, cols, rows, expected in RENDERER_CASES:
        text = page.evaluate(
            """([chunks, cols, rows]) => {
                const term = new window.HearthTerminal(null, cols, rows);
                for (const chunk of chunks) term.write(new Uint8Array(chunk));
                return term.screenText();
            }""",
            [[list(c) for c in chunks], cols, rows],
        )
        check(f"the renderer draws {chunks!r}", text == expected, f"as {text!r}")


def terminal_shells(sandbox):
    """The dashboard's terminal processes running in `sandbox`."""
    return [
        p for p in sandbox.commands.list() if (p.tag or "").startswith("dashboard-terminal-")
    ]


def failed_build():
    """A template build through E2B's build API that fails at once (its
    image is missing): its build id."""
    status, requested = api("POST", "/v3/templates", {"name": "dashboard-broken"})
    check("a build is requested", status == 202, f"status {status}")
    build = requested["buildID"]
    status, _ = api(
        "POST",
        f"/v2/templates/dashboard-broken/builds/{build}",
        {"fromImage": "oci:/nonexistent/dashboard-test", "steps": []},
    )
    check("the build starts", status == 202, f"status {status}")
    return build


def main():
    os.makedirs(ARTIFACTS, exist_ok=True)
    with sync_playwright() as p:
        # Root in a container: Chromium's own sandbox cannot start.
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        page.goto(API + "/dashboard")
        page.wait_for_selector("#login-form", state="visible")
        check_renderer(page)
        check("without a key the page shows the login form", page.is_hidden("#app"))
        page.screenshot(path=os.path.join(ARTIFACTS, "login.png"))

        page.fill("#login-key", "e2b_" + "0" * 40)
        page.click("#login-submit")
        expect(page.locator("#login-error")).not_to_be_empty()
        check("a wrong key is refused", page.is_hidden("#app"))

        page.fill("#login-key", KEY)
        page.click("#login-submit")
        page.wait_for_selector("#app", state="visible")
        check("the key is kept in the tab only", page.evaluate("sessionStorage.getItem('hearth.apiKey')") == KEY)
        expect(page.locator("#slots")).to_contain_text("/")
        check("the node's slots are shown", "/" in page.inner_text("#slots"))

        build = failed_build()
        started = time.monotonic()
        sandbox = Sandbox.create(timeout=600)
        print(f"figure sdk_create_s={time.monotonic() - started:.2f}", flush=True)
        row = f"#sandboxes tr[data-id='{sandbox.sandbox_id}']"
        page.wait_for_selector(row, timeout=TIMEOUT_MS)
        check("the sandbox appears in the table", "running" in page.inner_text(row))
        # Its metrics fill the CPU and memory cells once the agent answers.
        expect(page.locator(f"{row} td").nth(6)).to_contain_text("MiB /", timeout=TIMEOUT_MS)
        expect(page.locator("#templates tbody tr[data-template=base]")).to_be_visible()
        build_row = page.locator(f"#builds tr[data-build='{build}']")
        expect(build_row.locator("td").nth(2)).to_have_text("error", timeout=TIMEOUT_MS)
        build_row.locator("a.build").click()
        expect(page.locator("#build-log")).to_contain_text("not an OCI image layout")
        check("a failed build and its log are shown", True)
        # Its creation is among the recent events (from /events/sandboxes).
        expect(page.locator("#events")).to_contain_text(
            f"sandbox.lifecycle.created {sandbox.sandbox_id}", timeout=TIMEOUT_MS
        )
        check("the sandbox's created event is listed", True)
        page.screenshot(path=os.path.join(ARTIFACTS, "table.png"), full_page=True)

        page.click(f"{row} button[data-action=terminal]")
        expect(page.locator("#terminal-state")).to_have_text("connected", timeout=TIMEOUT_MS)
        # The shell's prompt, then a command typed key by key.
        screen = page.locator("#terminal-screen")
        expect(screen).to_contain_text(re.compile(r"[$#] *$", re.M), timeout=TIMEOUT_MS)
        page.click("#terminal")
        started = time.monotonic()
        page.keyboard.type("echo hearth-$((6*7))")
        page.keyboard.press("Enter")
        expect(screen).to_contain_text("hearth-42", timeout=TIMEOUT_MS)
        print(f"figure terminal_echo_s={time.monotonic() - started:.2f}", flush=True)
        check("the terminal runs a command", True)
        page.keyboard.type("tty; stty size")
        page.keyboard.press("Enter")
        expect(screen).to_contain_text(re.compile(r"/dev/pts/\d+\s+\d+ \d+"), timeout=TIMEOUT_MS)
        check("the shell has a real PTY", True)
        page.screenshot(path=os.path.join(ARTIFACTS, "terminal.png"), full_page=True)
        check("the shell is a process of the sandbox", terminal_shells(sandbox))
        page.click("#terminal-close")
        deadline = time.monotonic() + 30
        while terminal_shells(sandbox) and time.monotonic() < deadline:
            time.sleep(0.2)
        check("closing the terminal kills its shell", not terminal_shells(sandbox))

        page.click(f"{row} button[data-action=kill]")
        page.wait_for_selector(f"{row} button.armed")
        page.click(f"{row} button[data-action=kill]")
        expect(page.locator(row)).to_have_count(0, timeout=TIMEOUT_MS)
        check("the killed sandbox leaves the table", True)
        expect(page.locator("#events")).to_contain_text(
            f"sandbox.lifecycle.killed {sandbox.sandbox_id}", timeout=TIMEOUT_MS
        )
        check("its killed event follows", True)
        status, _ = api("GET", f"/sandboxes/{sandbox.sandbox_id}")
        check("the API says the sandbox is gone", status == 404, f"status {status}")
        check("the page threw no errors", not errors, str(errors))
        status, _ = api("DELETE", "/templates/dashboard-broken")
        check("the failed build's template is deleted", status == 204, f"status {status}")
        browser.close()
    print("all checks passed", flush=True)


main()
