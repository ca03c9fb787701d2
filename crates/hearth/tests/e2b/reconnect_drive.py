"""The stock e2b SDK reconnects to sandboxes that a restarted server took
over: each one answers, and the counter started before the restarts still
runs in it (its tick file keeps growing).

usage: reconnect_drive.py SANDBOX_ID...
Prints `figure name=value` lines and ends with `all checks passed`.
"""

import sys
import time

from e2b import Sandbox


def check(name, cond, detail=""):
    if not cond:
        print(f"FAILED: {name} {detail}", flush=True)
        sys.exit(1)
    print(f"ok: {name}", flush=True)


def ticks(sbx):
    out = sbx.commands.run("wc -l < /tmp/ticks").stdout
    return int(out.strip())


def main(ids):
    started = time.monotonic()
    for sandbox_id in ids:
        sbx = Sandbox.connect(sandbox_id)
        check(f"{sandbox_id} runs", sbx.is_running())
        before = ticks(sbx)
        time.sleep(0.5)
        after = ticks(sbx)
        check(f"the counter in {sandbox_id} still counts", after > before, f"{before} -> {after}")
    per = (time.monotonic() - started) * 1000 / len(ids)
    print(f"figure sdk_reconnect_and_check_ms_per_sandbox={per:.0f}")
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
