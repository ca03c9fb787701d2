"""What the stock e2b SDK sees of a sandbox whose VMM is killed: is_running()
turns False at once, and connecting to it again is a NotFound.

usage: supervisor_drive.py SANDBOX_ID VMM_PID_FILE
Prints `figure name=value` lines and ends with `all checks passed`.
"""

import os
import signal
import sys
import time

from e2b import Sandbox
from e2b.exceptions import NotFoundException


def check(name, cond, detail=""):
    if not cond:
        print(f"FAILED: {name} {detail}", flush=True)
        sys.exit(1)
    print(f"ok: {name}", flush=True)


def main(sandbox_id, pid_file):
    sbx = Sandbox.connect(sandbox_id)
    check("the sandbox runs", sbx.is_running())
    with open(pid_file) as f:
        pid = int(f.read().strip())
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    while sbx.is_running(request_timeout=5):
        check("is_running() turns False within 1 s", time.monotonic() - killed < 1.0)
        time.sleep(0.01)
    print(f"figure sdk_is_running_false_after_kill9_ms={(time.monotonic() - killed) * 1000:.0f}")
    try:
        Sandbox.connect(sandbox_id)
        check("connecting to the stopped sandbox fails", False)
    except NotFoundException:
        check("connecting to the stopped sandbox is a NotFound", True)
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
