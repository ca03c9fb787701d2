"""Drives one running sandbox with the stock e2b SDK, through the agent URL
given as argv[1]; with an access token as argv[2], checks secure mode only
(short: the stress checks run only in the open pass). The envd version the
agent claims is in $HEARTH_ENVD_VERSION. Every check raises on failure; the
Rust test that runs this script asserts on its exit status and on the last
line, "all checks passed", and echoes the "figure name=value" lines."""

import hashlib
import os
import sys
import threading
import time

import httpx
from e2b import (
    AuthenticationException,
    CommandExitException,
    ConnectionConfig,
    NotFoundException,
    Sandbox,
)
from e2b.sandbox.commands.command_handle import PtySize
from packaging.version import Version

ENVD_VERSION = Version(os.environ["HEARTH_ENVD_VERSION"])


def check(name, cond, detail=""):
    if not cond:
        raise AssertionError(f"{name}: {detail}")
    print(f"ok {name}", flush=True)


def connect(url, token=None):
    # The headers and config Sandbox.create() builds from the REST API's
    # answer (the API is issue 5), then the SDK's public constructor.
    headers = {"E2b-Sandbox-Id": "hearth-test", "E2b-Sandbox-Port": "49983"}
    if token is not None:
        headers["X-Access-Token"] = token
    config = ConnectionConfig(
        sandbox_url=url, api_key="e2b_hearth_test", extra_sandbox_headers=headers
    )
    # The version the host reports turns on what the agent serves (stdin
    # close, octet-stream uploads, file metadata, watch entries and options).
    return Sandbox(
        sandbox_id="hearth-test",
        sandbox_domain=None,
        envd_version=ENVD_VERSION,
        envd_access_token=token,
        traffic_access_token=None,
        connection_config=config,
    )


def commands(sbx):
    r = sbx.commands.run("echo out; echo err >&2; whoami; pwd")
    check("run", r.exit_code == 0 and r.stdout == "out\nuser\n/home/user\n", repr(r))
    check("stderr", r.stderr == "err\n", repr(r.stderr))
    r = sbx.commands.run("echo $GREETING; pwd", envs={"GREETING": "hi"}, cwd="/tmp")
    check("envs and cwd", r.stdout == "hi\n/tmp\n", repr(r.stdout))
    try:
        sbx.commands.run("exit 7")
        raise AssertionError("exit 7 did not raise")
    except CommandExitException as e:
        check("exit code", e.exit_code == 7, repr(e))
    r = sbx.commands.run("id -u", user="root")
    check("user root", r.stdout == "0\n", repr(r.stdout))
    streamed = []
    sbx.commands.run("for i in 1 2 3; do echo $i; sleep 0.2; done", on_stdout=streamed.append)
    check("streaming callbacks", "".join(streamed) == "1\n2\n3\n", repr(streamed))


def background(sbx):
    h = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "line one\n")
    listed = [p.pid for p in sbx.commands.list()]
    check("list", h.pid in listed, f"{h.pid} not in {listed}")
    sbx.commands.close_stdin(h.pid)
    r = h.wait()
    check("stdin", r.stdout == "line one\n", repr(r.stdout))
    h = sbx.commands.run("sleep 600", background=True)
    check("kill", sbx.commands.kill(h.pid), "kill returned False")
    try:
        h.wait()
        raise AssertionError("killed process did not raise")
    except CommandExitException as e:
        check("killed exit", e.exit_code != 0, repr(e))


def pty(sbx):
    out = bytearray()
    h = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.send_stdin(h.pid, b"echo $((6*7))\n")
    sbx.pty.resize(h.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(h.pid, b"stty size; exit\n")
    h.wait(on_pty=out.extend)
    text = out.decode(errors="replace")
    check("pty input", "42" in text, repr(text))
    check("pty resize", "30 100" in text, repr(text))


def files(sbx):
    sbx.files.write("/home/user/a.txt", "alpha")
    check("write/read", sbx.files.read("/home/user/a.txt") == "alpha")
    check("exists", sbx.files.exists("/home/user/a.txt") and not sbx.files.exists("/nope"))
    sbx.files.make_dir("/home/user/dir/sub")
    sbx.files.rename("/home/user/a.txt", "/home/user/dir/b.txt")
    names = sorted(e.name for e in sbx.files.list("/home/user/dir"))
    check("make_dir, rename, list", names == ["b.txt", "sub"], repr(names))
    info = sbx.files.get_info("/home/user/dir/b.txt")
    check("get_info", info.size == 5 and info.owner == "user", repr(info))
    sbx.files.remove("/home/user/dir")
    check("remove", not sbx.files.exists("/home/user/dir"))
    try:
        sbx.files.read("/home/user/missing")
        raise AssertionError("reading a missing file did not raise")
    except NotFoundException:
        check("not found", True)


def envd_features(sbx, url):
    """What envd 0.6.2 to 0.6.4 added, as envd answers it: file metadata kept
    as extended attributes, make_dir of an existing directory, the events a
    written file makes (with entries, network mounts allowed), and the
    version the agent names on /init."""
    d = sbx.commands.run('mktemp -d -p "$HOME"').stdout.strip()
    path = f"{d}/meta.txt"
    tags = {"author": "ann", "purpose": "e2e test"}
    w = sbx.files.write(path, "meta", metadata={"Author": "ann", "purpose": "e2e test"})
    check("write with metadata (keys lowercased)", w.metadata == tags and w.path == path, repr(w))
    check("get_info metadata", sbx.files.get_info(path).metadata == tags)
    listed = {e.name: e.metadata for e in sbx.files.list(d)}
    check("list metadata", listed == {"meta.txt": tags}, repr(listed))
    moved = sbx.files.rename(path, f"{d}/moved.txt")
    check("rename keeps metadata", moved.metadata == tags, repr(moved))
    w = sbx.files.write(f"{d}/moved.txt", b"raw", metadata={"k": "v"}, use_octet_stream=True, gzip=True)
    check("gzip upload replaces metadata", w.metadata == {"k": "v"}, repr(w))
    w = sbx.files.write(f"{d}/moved.txt", "again")
    info = sbx.files.get_info(f"{d}/moved.txt")
    check("overwrite clears metadata", w.metadata is None and info.metadata is None, f"{w!r} {info!r}")
    check("overwrite writes the new contents", sbx.files.read(f"{d}/moved.txt") == "again")

    check("make_dir new is True", sbx.files.make_dir(f"{d}/w") is True)
    check("make_dir existing is False", sbx.files.make_dir(f"{d}/w") is False)

    handle = sbx.files.watch_dir(f"{d}/w", include_entry=True, allow_network_mounts=True)
    events = []

    def collect_until(last):
        deadline = time.monotonic() + 10
        while last not in [(e.name, e.type.value) for e in events] and time.monotonic() < deadline:
            events.extend(handle.get_new_events())
            time.sleep(0.1)

    sbx.files.write(f"{d}/w/new.txt", "x")
    # Entries are read when the agent sees an event: remove the file only
    # once its events are in.
    collect_until(("new.txt", "write"))
    sbx.files.remove(f"{d}/w/new.txt")
    sbx.files.make_dir(f"{d}/w/end")
    collect_until(("end", "create"))
    handle.stop()
    seen = [(e.name, e.type.value) for e in events]
    want = [
        ("new.txt", "create"),
        ("new.txt", "chmod"),
        ("new.txt", "write"),
        ("new.txt", "remove"),
        ("end", "create"),
    ]
    check("a written file makes envd's events", seen == want, repr(seen))
    entries = [e.entry.path if e.entry else None for e in events]
    check(
        "events carry entries, but a remove",
        entries[:3] == [f"{d}/w/new.txt"] * 3 and entries[3] is None and entries[4] == f"{d}/w/end",
        repr(entries),
    )
    sbx.files.remove(d)

    r = httpx.post(f"{url}/init", json={})
    check(
        "the agent names its envd version",
        r.status_code == 204 and r.headers.get("x-envd-version") == str(ENVD_VERSION),
        f"{r.status_code} {r.headers.get('x-envd-version')!r}",
    )


def transfer(sbx):
    mib = 100
    blob = os.urandom(mib * 1024 * 1024)
    start = time.monotonic()
    sbx.files.write("/tmp/blob", blob)
    up = time.monotonic() - start
    start = time.monotonic()
    back = sbx.files.read("/tmp/blob", format="bytes")
    down = time.monotonic() - start
    # /tmp is a tmpfs in the guest: give the memory back before the stress checks.
    sbx.files.remove("/tmp/blob")
    same = hashlib.sha256(back).digest() == hashlib.sha256(blob).digest()
    check(f"{mib} MiB upload and download", same, f"{len(back)} bytes back")
    print(f"figure upload_mib_s={mib / up:.1f} download_mib_s={mib / down:.1f}", flush=True)


def watch(sbx):
    sbx.files.make_dir("/home/user/watched")
    handle = sbx.files.watch_dir("/home/user/watched", recursive=True)
    sbx.files.write("/home/user/watched/new.txt", "x")
    sbx.commands.run("mkdir /home/user/watched/sub && touch /home/user/watched/sub/deep")
    sbx.files.remove("/home/user/watched/new.txt")
    seen = set()
    deadline = time.monotonic() + 10
    wanted = {("new.txt", "create"), ("new.txt", "remove"), ("sub/deep", "create")}
    while not wanted <= seen and time.monotonic() < deadline:
        seen |= {(e.name, e.type.value) for e in handle.get_new_events()}
        time.sleep(0.1)
    handle.stop()
    check("watch_dir (recursive)", wanted <= seen, repr(sorted(seen)))


def round_trip(sbx):
    for _ in range(10):
        sbx.commands.run("true")
    times = []
    for _ in range(100):
        start = time.monotonic()
        sbx.commands.run("true")
        times.append(time.monotonic() - start)
    times.sort()
    # Nearest rank: the 50th and the 95th of the 100 sorted times.
    p50, p95 = times[49] * 1000, times[94] * 1000
    print(f"figure run_true_p50_ms={p50:.1f} run_true_p95_ms={p95:.1f}", flush=True)


def wait_until(cond, seconds):
    """Polls cond until it holds or seconds pass; returns its last answer."""
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            return cond()
        time.sleep(0.1)
    return True


def listed_pids(sbx):
    return {p.pid for p in sbx.commands.list()}


def agent_rss_kib(sbx, pid):
    # Read through the files API: no process to start, so samples come often
    # and cost the agent little.
    status = sbx.files.read(f"/proc/{pid}/status")
    line = next(l for l in status.splitlines() if l.startswith("VmRSS:"))
    return int(line.split()[1])


def big_stream(sbx, url):
    """100 MB of stdout from one command, counted and hashed as it arrives,
    while a second connection samples the agent's resident memory."""
    size = 100_000_000
    # A command's shell is the agent's child, so $PPID is the agent: PID 1 in
    # a sandbox, the hearth-init process serving us when it runs standalone.
    # Measure only when that is what it is.
    pid, _, comm = sbx.commands.run("echo $PPID; cat /proc/$PPID/comm").stdout.partition("\n")
    pid = int(pid)
    measure = comm.strip() == "hearth-init"
    if not measure:
        print(f"note: the agent (pid {pid}) is {comm.strip()!r}, not hearth-init; RSS not measured")
    sampler = connect(url)
    samples, failures, done = [], [], threading.Event()

    def sample():
        try:
            while not done.is_set():
                samples.append(agent_rss_kib(sampler, pid))
                done.wait(0.05)
        except Exception as e:  # noqa: BLE001 - reported by the check below
            failures.append(e)

    idle = agent_rss_kib(sampler, pid) if measure else None
    got, digest, err = 0, hashlib.sha256(), []

    def on_stdout(chunk):
        nonlocal got
        data = chunk.encode()
        got += len(data)
        digest.update(data)

    thread = threading.Thread(target=sample, daemon=True)
    if measure:
        thread.start()
    start = time.monotonic()
    # seq's lines are plain ASCII, so the SDK's str chunks encode back to the
    # very bytes sent; tee hashes the same bytes in the guest, onto stderr.
    sbx.commands.run(
        f"seq 1 15000000 | head -c {size} | tee >(sha256sum >&2)",
        on_stdout=on_stdout,
        on_stderr=err.append,
        retain_output=False,
        timeout=600,
    )
    took = time.monotonic() - start
    done.set()
    if measure:
        thread.join()
    check("100 MB of stdout, every byte", got == size, f"{got} bytes")
    guest_sum = "".join(err).split()
    check("100 MB of stdout, same SHA-256", guest_sum[:1] == [digest.hexdigest()], repr(guest_sum))
    if not measure:
        print(f"figure stream_100mb_s={took:.2f}", flush=True)
        return
    check("RSS sampling", not failures and len(samples) >= 3, f"{len(samples)} samples, {failures!r}")
    peak = max(samples)
    # The agent reads 32 KiB at a time into a channel of 16 frames per
    # subscriber, so well under 1 MiB of output is in flight; the rest of the
    # 16 MiB is room for the allocator and the sampler's own requests. An
    # agent that buffered the stream would grow by tens of MiB.
    check("agent RSS stays flat during the stream", peak <= idle + 16 * 1024, f"idle {idle} KiB, peak {peak} KiB")
    print(
        f"figure agent_rss_idle_kib={idle} agent_rss_stream_peak_kib={peak} "
        f"agent_rss_samples={len(samples)} stream_100mb_s={took:.2f}",
        flush=True,
    )


def binary_output(sbx, tmp):
    """Invalid UTF-8 reaches the SDK's str streams as replacement characters,
    without breaking the stream; the files API returns the bytes intact."""
    r = sbx.commands.run(r"printf '\xff\xfe ok\n'; printf '\xc3 err\n' >&2")
    check("invalid UTF-8 on stdout", r.stdout == "\ufffd\ufffd ok\n", repr(r.stdout))
    check("invalid UTF-8 on stderr", r.stderr == "\ufffd err\n", repr(r.stderr))
    r = sbx.commands.run("head -c 10000000 /dev/urandom; echo; echo end")
    check("10 MB of random bytes on stdout", r.stdout.endswith("\nend\n"), repr(r.stdout[-20:]))
    path = f"{tmp}/random"
    r = sbx.commands.run(f"head -c 1048576 /dev/urandom > {path}; sha256sum < {path}")
    back = sbx.files.read(path, format="bytes")
    check("binary file read", hashlib.sha256(back).hexdigest() == r.stdout.split()[0], f"{len(back)} bytes")


def many_processes(sbx, tmp):
    """50 background commands at once: all listed together while they wait
    on a barrier file, then each exits with its own output. (How long they
    take is a figure, not a check: it depends on the host's load.)"""
    go = f"{tmp}/go"
    start = time.monotonic()
    handles = [
        sbx.commands.run(f"until [ -e {go} ]; do sleep 0.2; done; sleep 1; echo {i}", background=True)
        for i in range(50)
    ]
    started = time.monotonic() - start
    pids = {h.pid for h in handles}
    listed = listed_pids(sbx)
    check("50 processes listed while they run", pids <= listed, f"missing {sorted(pids - listed)}")
    start = time.monotonic()
    sbx.commands.run(f"touch {go}")
    results = [h.wait() for h in handles]
    took = time.monotonic() - start
    wrong = [(i, r.exit_code, r.stdout) for i, r in enumerate(results) if (r.exit_code, r.stdout) != (0, f"{i}\n")]
    check("50 concurrent processes exit 0 with their output", not wrong, repr(wrong))
    check("50 processes leave the list", wait_until(lambda: not pids & listed_pids(sbx), 5))
    print(f"figure start_50_processes_ms={started * 1000:.0f} wait_50_processes_s={took:.2f}", flush=True)


def big_listing(sbx, tmp):
    d = f"{tmp}/many"
    sbx.commands.run(f"mkdir {d} && cd {d} && touch f{{00001..10000}}")
    start = time.monotonic()
    entries = sbx.files.list(d)
    took = time.monotonic() - start
    names = {e.name for e in entries}
    want = {f"f{i:05}" for i in range(1, 10001)}
    check("list of 10,000 entries", len(entries) == 10000 and names == want, f"{len(entries)} entries")
    print(f"figure list_10000_ms={took * 1000:.0f}", flush=True)


def sig_ignored(sbx, pid, signal):
    r = sbx.commands.run(f"grep SigIgn /proc/{pid}/status 2>/dev/null || true")
    mask = r.stdout.split()
    return len(mask) == 2 and int(mask[1], 16) & (1 << (signal - 1)) != 0


def kill_ignoring_term(sbx, tmp):
    """The SDK's kill is SIGKILL (it has no other signal): it ends a process
    that ignores SIGTERM, and a shell that ignores it while it waits on a
    child, which holds the command's stdout."""
    h = sbx.commands.run('trap "" TERM; exec sleep 600', background=True)
    check("process ignores SIGTERM", wait_until(lambda: sig_ignored(sbx, h.pid, 15), 5), f"pid {h.pid}")
    check("kill a process that ignores SIGTERM", sbx.commands.kill(h.pid), "kill returned False")
    check("killed process leaves the list", wait_until(lambda: h.pid not in listed_pids(sbx), 5))
    try:
        h.wait()
        raise AssertionError("killed process did not raise")
    except CommandExitException as e:
        check("killed process exit", e.exit_code != 0, repr(e))

    child_file = f"{tmp}/child"
    h = sbx.commands.run(
        f"""sh -c 'trap "" TERM; sleep 600 & echo $! > {child_file}; wait'""", background=True
    )
    child = None
    try:
        read_child = lambda: sbx.commands.run(f"cat {child_file} 2>/dev/null || true").stdout.strip()
        check("shell started its child", wait_until(read_child, 5))
        child = int(read_child())
        check("child ignores SIGTERM", wait_until(lambda: sig_ignored(sbx, child, 15), 5), f"pid {child}")
        check("kill a shell that ignores SIGTERM", sbx.commands.kill(h.pid), "kill returned False")
        check(
            "killed shell leaves the list",
            wait_until(lambda: h.pid not in listed_pids(sbx), 5),
            f"pid {h.pid} still listed: its child {child} holds the output pipes",
        )
        check(
            "kill ends the shell's child",
            wait_until(lambda: not sbx.files.exists(f"/proc/{child}"), 5),
            f"pid {child} still runs",
        )
    finally:
        if child is not None:
            sbx.commands.run(f"kill -KILL {child} 2>/dev/null || true")


def secure(url, token):
    """The host set an access token through /init: the SDK must carry it."""
    r = connect(url, token).commands.run("echo secret")
    check("secure run with token", r.stdout == "secret\n", repr(r.stdout))
    try:
        connect(url).commands.run("echo leaked")
        raise AssertionError("a request without the token was served")
    except AuthenticationException:
        check("secure run without token is refused", True)
    try:
        connect(url, "wrong-token").files.read("/etc/hostname")
        raise AssertionError("a file read with a wrong token was served")
    except AuthenticationException:
        check("secure file read with a wrong token is refused", True)


def main():
    url = sys.argv[1]
    token = sys.argv[2] if len(sys.argv) > 2 else None
    if token:
        secure(url, token)
    else:
        sbx = connect(url)
        for part in (commands, background, pty, files, transfer, watch, round_trip):
            part(sbx)
        envd_features(sbx, url)
        big_stream(sbx, url)
        tmp = sbx.commands.run("mktemp -d").stdout.strip()
        for part in (binary_output, many_processes, big_listing, kill_ignoring_term):
            part(sbx, tmp)
        sbx.files.remove(tmp)
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
