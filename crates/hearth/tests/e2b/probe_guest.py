"""Run inside a guest, as root: tries a TCP connection to each ADDR:PORT
given, as the guest is, then with a source address it made up, then with a
MAC address it made up (both undone afterwards). Prints one JSON object:
{phase: {target: "connected" | errno name | "timeout"}}.

usage: probe_guest.py ADDR:PORT...
"""

import errno
import json
import socket
import subprocess
import sys

DEV = "eth0"
SPOOFED_IP = "169.254.0.99"
SPOOFED_MAC = "02:fc:00:00:00:99"


def probe(targets, source=None):
    seen = {}
    for target in targets:
        addr, port = target.rsplit(":", 1)
        s = socket.socket()
        s.settimeout(1)
        try:
            if source:
                s.bind((source, 0))
            s.connect((addr, int(port)))
            seen[target] = "connected"
        except socket.timeout:
            seen[target] = "timeout"
        except OSError as e:
            seen[target] = errno.errorcode.get(e.errno, str(e))
        finally:
            s.close()
    return seen


def ip(*args):
    subprocess.run(["ip", *args], check=True)


def main(targets):
    result = {"plain": probe(targets)}
    ip("addr", "add", f"{SPOOFED_IP}/30", "dev", DEV)
    try:
        result["spoofed_ip"] = probe(targets, source=SPOOFED_IP)
    finally:
        ip("addr", "del", f"{SPOOFED_IP}/30", "dev", DEV)
    mac = open(f"/sys/class/net/{DEV}/address").read().strip()
    ip("link", "set", "dev", DEV, "address", SPOOFED_MAC)
    try:
        result["spoofed_mac"] = probe(targets)
    finally:
        ip("link", "set", "dev", DEV, "address", mac)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
