"""Named volumes through the stock e2b SDK against a real `hearth server`
(configured only by E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY): a volume
made with Volume.create is mounted by a sandbox restored from the pool, its
data survives a kill -9 of that sandbox's VMM (what was fsynced), a pause
and resume (full and filesystem-only), and is seen by the next sandbox; a
volume is mounted by one sandbox at a time, cannot be removed while
mounted, and bad mounts are refused by name.

usage: volume_drive.py
HEARTH_DATA_DIR names the server's data directory (for the VMM's pid).
Prints `figure name=value` lines and ends with `all checks passed`.
"""

import json
import os
import signal
import statistics
import sys
import time
import urllib.error
import urllib.request

from e2b import Sandbox, Volume
from e2b.exceptions import SandboxException

API = os.environ["E2B_API_URL"]
KEY = os.environ["E2B_API_KEY"]
DATA = os.environ["HEARTH_DATA_DIR"]
# The SDK sends a volume's content requests here (else to api.<domain>).
os.environ["E2B_VOLUME_API_URL"] = API


def check(name, cond, detail=""):
    if not cond:
        print(f"FAILED: {name} {detail}", flush=True)
        sys.exit(1)
    print(f"ok: {name}", flush=True)


def keyed(method, path, body=None):
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


def refused(create, said):
    try:
        sbx = create()
    except SandboxException as e:
        return said in str(e), str(e)
    sbx.kill()
    return False, "created"


def state_of(sandbox_id):
    status, body = keyed("GET", f"/sandboxes/{sandbox_id}")
    return body["state"] if status == 200 else f"status {status}"


def run(sbx, cmd):
    return sbx.commands.run(cmd, timeout=120).stdout.strip()


# The pool warmed (as every figure here is of creates from it).
Sandbox.create().kill()

vol = Volume.create("data")
check("Volume.create gives an id and the name", vol.volume_id and vol.name == "data", vol.volume_id)
check("Volume.list lists it", "data" in [v.name for v in Volume.list()])
info = Volume.get_info(vol.volume_id)
check("Volume.get_info by id", info.name == "data" and info.volume_id == vol.volume_id, info)
status, body = keyed("GET", "/volumes/data")
check("GET /volumes/{name}: 1 GiB, ext4, mounted by none",
      status == 200 and body["sizeBytes"] == 1 << 30 and body["fs"] == "ext4"
      and body["mountedBy"] is None, body)

def wait_pool():
    """Waits until the pool holds a parked sandbox again."""
    deadline = time.time() + 120
    while time.time() < deadline:
        req = urllib.request.Request(API + "/metrics", headers={"X-API-Key": KEY})
        with urllib.request.urlopen(req, timeout=60) as r:
            for line in r.read().decode().splitlines():
                if line.startswith('hearth_pool_sandboxes{template="base"}') and float(line.split()[-1]) >= 1:
                    return
        time.sleep(0.1)
    check("the pool refills", False)


# Create time with and without a volume, from the pool (5 each, alternating,
# the pool refilled before each).
plain, mounted = [], []
for i in range(5):
    wait_pool()
    t = time.monotonic()
    s = Sandbox.create()
    plain.append(time.monotonic() - t)
    s.kill()
    wait_pool()
    t = time.monotonic()
    s = Sandbox.create(volume_mounts={"/data": vol})
    mounted.append(time.monotonic() - t)
    if i == 0:
        check("the mount is there when create returns", run(s, "mountpoint /data") == "/data is a mountpoint")
    s.kill()
p50 = lambda xs: statistics.median(xs) * 1000  # noqa: E731
print(f"figure create_p50_ms={p50(plain):.0f} create_with_volume_p50_ms={p50(mounted):.0f} "
      f"volume_adds_ms={p50(mounted) - p50(plain):.0f}", flush=True)

first = Sandbox.create(volume_mounts={"/data": vol})
check("the default user owns the volume's root", run(first, "stat -c %u:%g /data") == "1000:1000")
run(first, "echo hello > /data/greeting && sync")
run(first, "python3 -c \"import os; f = open('/data/fsynced', 'w'); f.write('kept'); "
           "f.flush(); os.fsync(f.fileno())\"")

ok, said = refused(lambda: Sandbox.create(volume_mounts={"/other": "data"}), "mounted by sandbox")
check("a volume mounted by a running sandbox is refused to another (409)", ok, said)
try:
    Volume.destroy(vol.volume_id)
    check("a mounted volume cannot be removed", False)
except Exception as e:  # noqa: BLE001 — the SDK's VolumeException
    check("a mounted volume cannot be removed", "mounted by sandbox" in str(e), e)
status, body = keyed("GET", "/volumes/data")
check("GET /volumes/{name} names the sandbox that mounts it", body["mountedBy"] == first.sandbox_id, body)
ok, said = refused(lambda: first.create_snapshot(), "mounts volumes")
check("a sandbox with volumes cannot be snapshotted (409)", ok, said)

# kill -9 of the VMM: what was fsynced is on the volume.
pid = int(open(f"{DATA}/sandboxes/{first.sandbox_id}/vmm.pid").read())
os.kill(pid, signal.SIGKILL)
deadline = time.time() + 60
while time.time() < deadline and state_of(first.sandbox_id) == "running":
    time.sleep(0.2)
check("the sandbox whose VMM was killed is gone", state_of(first.sandbox_id) != "running",
      state_of(first.sandbox_id))

second = Sandbox.create(volume_mounts={"/home/user/data": "data"})
check("the next sandbox sees the data (mounted by name elsewhere)",
      run(second, "cat /home/user/data/greeting") == "hello")
check("what was fsynced before the kill -9 survived", run(second, "cat /home/user/data/fsynced") == "kept")
run(second, "echo more >> /home/user/data/greeting")

second.pause()
check("paused", state_of(second.sandbox_id) == "paused")
ok, said = refused(lambda: Sandbox.create(volume_mounts={"/data": "data"}), "mounted by sandbox")
check("a paused sandbox keeps its volume", ok, said)
second = Sandbox.connect(second.sandbox_id)
check("after a resume the volume is mounted with its data",
      run(second, "cat /home/user/data/greeting") == "hello\nmore")
run(second, "echo after-resume > /home/user/data/resumed && sync")
second.pause(mode="filesystem")
second = Sandbox.connect(second.sandbox_id)
check("after a filesystem-only pause the booted guest mounts it again",
      run(second, "cat /home/user/data/resumed") == "after-resume")
second.kill()

# Bad input, each refused by name, nothing half made.
for mounts, said in [
    ({"/proc": "data"}, "system path"),
    ({"relative": "data"}, "not an absolute path"),
    ({"/x": "nosuchvolume"}, "no volume named"),
]:
    ok, text = refused(lambda: Sandbox.create(volume_mounts=mounts), said)
    check(f"volumeMounts {mounts} refused: {said}", ok, text)
for body, said in [
    ({"name": "bad name"}, "name:"),
    ({"name": "data"}, "already exists"),
    ({"name": "huge", "size": "100T"}, "does not fit"),
    ({"name": "tiny", "size": 4096}, "too small"),
    ({"name": "xfs", "fs": "xfs"}, "fs:"),
]:
    status, text = keyed("POST", "/volumes", body)
    check(f"POST /volumes {body} refused: {said}", status in (400, 409) and said in str(text), (status, text))
check("refused volumes were not made", sorted(v.name for v in Volume.list()) == ["data"])
try:
    vol.list("/")
    check("the volume content routes say what to do instead", False)
except Exception as e:  # noqa: BLE001
    check("the volume content routes say what to do instead", "mount the volume in a sandbox" in str(e), e)

check("Volume.destroy once no sandbox mounts it", Volume.destroy(vol.volume_id) is True)
check("  then it is not listed", "data" not in [v.name for v in Volume.list()])
check("  and destroying it again says it is gone", Volume.destroy(vol.volume_id) is False)
print("all checks passed")
