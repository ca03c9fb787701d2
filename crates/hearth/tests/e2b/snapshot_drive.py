"""Sandbox snapshots through the stock e2b SDK against a real `hearth
server` (configured only by E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY):
a running sandbox saved with its memory starts five independent sandboxes
whose saved process still runs, while the source goes on; a
filesystem-only snapshot starts sandboxes with the files and without the
process; snapshots are listed, named, refused for bad input and deleted,
with the one the caller made with the CLI (named in HEARTH_CLI_SNAPSHOT).

usage: snapshot_drive.py
Prints `figure name=value` lines, `template NAME` for each snapshot it
leaves for the caller to check, and ends with `all checks passed`.
"""

import json
import os
import statistics
import sys
import time
import urllib.error
import urllib.request

from e2b import Sandbox
from e2b.exceptions import NotFoundException, SandboxException

API = os.environ["E2B_API_URL"]
KEY = os.environ["E2B_API_KEY"]
# Each value is written aside and renamed over the last: a read never sees
# the file empty.
COUNTER = ("i=0; while true; do i=$((i+1)); echo $i > /home/user/count.new; "
           "mv /home/user/count.new /home/user/count; sleep 0.2; done")


def check(name, cond, detail=""):
    if not cond:
        print(f"FAILED: {name} {detail}", flush=True)
        sys.exit(1)
    print(f"ok: {name}", flush=True)


def keyed(method, path, body=None):
    """A raw request with the key; returns (status, parsed body or text)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(API + path, data=data, method=method)
    req.add_header("X-API-Key", KEY)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def counting(sbx):
    """Whether the counter process runs: its file grows within a second."""
    first = int(sbx.files.read("/home/user/count"))
    time.sleep(1)
    return int(sbx.files.read("/home/user/count")) > first


def snapshot_ids(**query):
    paginator = Sandbox.list_snapshots(**query)
    ids = []
    while paginator.has_next:
        ids += [s.snapshot_id for s in paginator.next_items()]
    return ids


def main():
    source = Sandbox.create(timeout=600)
    source.files.write("/home/user/kept.txt", "before")
    source.commands.run(COUNTER, background=True)
    time.sleep(1)
    check("the source's process counts", counting(source))

    t = time.monotonic()
    snap = source.create_snapshot()
    print(f"figure snapshot_full_ms={(time.monotonic() - t) * 1000:.0f}", flush=True)
    print(f"template {snap.snapshot_id}", flush=True)
    check("a snapshot has an id and a full name",
          snap.snapshot_id and snap.names == [f"{snap.snapshot_id}:default"], snap)
    check("the source runs on after its snapshot", source.is_running() and counting(source))
    source.files.write("/home/user/kept.txt", "after")

    # Five sandboxes from it: each has the saved file and the saved
    # process, still counting, and each is its own.
    # The first create starts the template's pool (a restore); the checks
    # of each copy give the pool time to refill before the next.
    copies, times = [], []
    for i in range(5):
        t = time.monotonic()
        copy = Sandbox.create(snap.snapshot_id)
        times.append(time.monotonic() - t)
        copies.append(copy)
        check(f"copy {i} has the file as saved", copy.files.read("/home/user/kept.txt") == "before")
        check(f"copy {i}'s saved process still counts", counting(copy))
        copy.files.write("/home/user/mine.txt", str(i))
    print(f"figure create_from_snapshot_first_ms={times[0] * 1000:.0f} "
          f"then_p50_ms={statistics.median(times[1:]) * 1000:.0f} max_ms={max(times[1:]) * 1000:.0f}", flush=True)
    check("five sandboxes, five ids", len({c.sandbox_id for c in copies}) == 5)
    check("the copies' files are their own",
          [c.files.read("/home/user/mine.txt") for c in copies] == [str(i) for i in range(5)])
    check("and not the source's", not source.files.exists("/home/user/mine.txt"))
    info = copies[0].get_info()
    check("a copy's template is the snapshot", info.template_id == snap.snapshot_id, info)
    for copy in copies:
        copy.kill()

    # A filesystem-only snapshot, named: the files, not the process.
    t = time.monotonic()
    disk = source.create_snapshot(name="snap-files", mode="filesystem")
    print(f"figure snapshot_filesystem_ms={(time.monotonic() - t) * 1000:.0f}", flush=True)
    print(f"template {disk.snapshot_id}", flush=True)
    check("a named snapshot is its name", disk.snapshot_id == "snap-files" and disk.names == ["snap-files:default"], disk)
    t = time.monotonic()
    booted = Sandbox.create(disk.snapshot_id)
    print(f"figure first_create_from_filesystem_snapshot_ms={(time.monotonic() - t) * 1000:.0f}", flush=True)
    check("a filesystem snapshot keeps the files", booted.files.read("/home/user/kept.txt") == "after")
    check("  but not the process", not counting(booted))
    booted.kill()

    # Listing: all, by sandbox, by name; paged.
    everything = snapshot_ids()
    check("both are listed", {snap.snapshot_id, disk.snapshot_id} <= set(everything), everything)
    mine = snapshot_ids(sandbox_id=source.sandbox_id)
    check("listed by source sandbox, oldest first", mine == [snap.snapshot_id, disk.snapshot_id], mine)
    check("listed by name", snapshot_ids(name="snap-files:default") == ["snap-files"])
    check("none of another sandbox", snapshot_ids(sandbox_id="nosuchsandbox") == [])
    paged = Sandbox.list_snapshots(sandbox_id=source.sandbox_id, limit=1)
    first = paged.next_items()
    check("a page of one says more follow", len(first) == 1 and paged.has_next, first)
    check("  and the next page has the other", [s.snapshot_id for s in paged.next_items()] == [disk.snapshot_id])
    status, events = keyed("GET", f"/events/sandboxes/{source.sandbox_id}?limit=100")
    checkpoints = [e for e in events if e["type"] == "sandbox.lifecycle.checkpointed"] if status == 200 else events
    check("each snapshot is a checkpointed event of the source",
          status == 200 and sorted(e["eventData"]["snapshot_id"] for e in checkpoints)
          == sorted([snap.snapshot_id, disk.snapshot_id]), checkpoints)

    # Bad input: nothing is made.
    for name, body, want in [
        ("a bad name", {"name": "no spaces"}, 400),
        ("the base template's name", {"name": "base"}, 400),
    ]:
        status, text = keyed("POST", f"/sandboxes/{source.sandbox_id}/snapshots", body)
        check(f"{name} → {want}", status == want and "name" in str(text), (status, text))
    status, text = keyed("POST", "/sandboxes/nosuchsandbox/snapshots", {})
    check("an unknown sandbox → 404", status == 404, (status, text))
    try:
        Sandbox.create_snapshot("nosuchsandbox")  # noqa — the classmethod form
        check("the SDK raises for an unknown sandbox", False)
    except (NotFoundException, SandboxException):
        check("the SDK raises for an unknown sandbox", True)
    source.pause()
    status, text = keyed("POST", f"/sandboxes/{source.sandbox_id}/snapshots", {})
    check("a paused sandbox → 409 saying so", status == 409 and "paused" in text, (status, text))
    check("the failed requests left no snapshot", len(snapshot_ids(sandbox_id=source.sandbox_id)) == 2)
    source = Sandbox.connect(source.sandbox_id)

    # A snapshot outlives its source; deleting it is deleting a template.
    source.kill()
    again = Sandbox.create(snap.snapshot_id)
    check("a snapshot outlives its source", counting(again))
    again.kill()
    check("delete_snapshot deletes it", Sandbox.delete_snapshot(snap.snapshot_id) is True)
    check("  then it is not listed", snap.snapshot_id not in snapshot_ids())
    try:
        Sandbox.create(snap.snapshot_id)
        check("no sandbox starts from a deleted snapshot", False)
    except (NotFoundException, SandboxException) as e:
        check("no sandbox starts from a deleted snapshot", "not found" in str(e), e)
    check("deleting it again says it is gone", Sandbox.delete_snapshot(snap.snapshot_id) is False)

    # What the CLI saved is a snapshot too; the caller checks that every
    # snapshot template is gone from the disk.
    cli = os.environ["HEARTH_CLI_SNAPSHOT"]
    check("the CLI's snapshot is listed", snapshot_ids(name=cli) == [cli])
    for name in (disk.snapshot_id, cli):
        check(f"{name} is deleted", Sandbox.delete_snapshot(name) is True)
    check("no snapshot is left", snapshot_ids() == [], snapshot_ids())
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
