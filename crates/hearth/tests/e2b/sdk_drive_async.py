"""Drives one running sandbox with the stock e2b SDK's async client
(AsyncSandbox), through the agent URL given as argv[1]: what envd 0.6.2 to
0.6.4 added, answered as envd answers it (file metadata, make_dir of an
existing directory, the events of a written file on the streaming watch).
The envd version the agent claims is in $HEARTH_ENVD_VERSION. Ends with
"all checks passed"."""

import asyncio
import os
import sys

from e2b import AsyncSandbox, ConnectionConfig
from packaging.version import Version


def check(name, cond, detail=""):
    if not cond:
        raise AssertionError(f"{name}: {detail}")
    print(f"ok async {name}", flush=True)


def connect(url):
    headers = {"E2b-Sandbox-Id": "hearth-test", "E2b-Sandbox-Port": "49983"}
    config = ConnectionConfig(
        sandbox_url=url, api_key="e2b_hearth_test", extra_sandbox_headers=headers
    )
    return AsyncSandbox(
        sandbox_id="hearth-test",
        sandbox_domain=None,
        envd_version=Version(os.environ["HEARTH_ENVD_VERSION"]),
        envd_access_token=None,
        traffic_access_token=None,
        connection_config=config,
    )


async def metadata(sbx, d):
    path = f"{d}/meta.txt"
    tags = {"author": "ann", "purpose": "async test"}
    w = await sbx.files.write(path, "meta", metadata={"AUTHOR": "ann", "purpose": "async test"})
    check("write with metadata (keys lowercased)", w.metadata == tags, repr(w))
    info = await sbx.files.get_info(path)
    check("get_info metadata", info.metadata == tags, repr(info))
    listed = {e.name: e.metadata for e in await sbx.files.list(d)}
    check("list metadata", listed == {"meta.txt": tags}, repr(listed))
    moved = await sbx.files.rename(path, f"{d}/moved.txt")
    check("rename keeps metadata", moved.metadata == tags, repr(moved))
    w = await sbx.files.write(f"{d}/moved.txt", "again")
    info = await sbx.files.get_info(f"{d}/moved.txt")
    check("overwrite clears metadata", w.metadata is None and info.metadata is None, f"{w!r} {info!r}")


async def make_dir(sbx, d):
    check("make_dir new is True", await sbx.files.make_dir(f"{d}/w") is True)
    check("make_dir existing is False", await sbx.files.make_dir(f"{d}/w") is False)


async def watch(sbx, d):
    events = []
    done = asyncio.Event()

    def on_event(e):
        events.append(e)
        if (e.name, e.type.value) == ("end", "create"):
            done.set()

    handle = await sbx.files.watch_dir(
        f"{d}/w", on_event, include_entry=True, allow_network_mounts=True
    )
    await sbx.files.write(f"{d}/w/new.txt", "x", metadata={"k": "v"})
    await sbx.files.make_dir(f"{d}/w/end")
    try:
        await asyncio.wait_for(done.wait(), 10)
    except asyncio.TimeoutError:
        pass
    await handle.stop()
    seen = [(e.name, e.type.value) for e in events]
    # Metadata is set last: a second chmod.
    want = [
        ("new.txt", "create"),
        ("new.txt", "chmod"),
        ("new.txt", "write"),
        ("new.txt", "chmod"),
        ("end", "create"),
    ]
    check("a written file makes envd's events", seen == want, repr(seen))
    names = [e.entry.name if e.entry else None for e in events]
    check("events carry entries", names == ["new.txt"] * 4 + ["end"], repr(names))


async def main(url):
    sbx = connect(url)
    d = (await sbx.commands.run('mktemp -d -p "$HOME"')).stdout.strip()
    for part in (metadata, make_dir, watch):
        await part(sbx, d)
    await sbx.files.remove(d)
    print("all checks passed", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
    # Every check has run and printed. The SDK's native HTTP client has
    # aborted the interpreter in its own teardown (SIGABRT after "all
    # checks passed", nothing on stderr): end here, before that teardown.
    sys.stdout.flush()
    os._exit(0)
