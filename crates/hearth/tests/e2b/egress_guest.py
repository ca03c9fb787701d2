"""Run inside a guest whose egress policy names domains: tries what such a
guest may and may not do, and prints one JSON object of what happened.

usage: egress_guest.py WEB DNS ROGUE
WEB serves HTTP on 80 and 8080 and TLS on 443 (answering with the name it
was asked for); DNS is the guest's nameserver, ROGUE another DNS server.
"""

import json
import socket
import ssl
import struct
import sys

WEB, DNS, ROGUE = sys.argv[1:4]
# An address no host has: only a proxy that ignores it reaches anything.
NOWHERE = "203.0.113.7"


def failure(e):
    if isinstance(e, socket.timeout):
        return "timeout"
    if isinstance(e, ssl.SSLError):
        return "ssl: " + (e.reason or str(e))
    import errno
    return errno.errorcode.get(getattr(e, "errno", None) or 0, type(e).__name__)


def http(addr, host, port=80):
    try:
        with socket.create_connection((addr, port), timeout=10) as s:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
        return head.split("\r\n")[0].split(" ", 2)[1] + " " + body.strip()
    except (OSError, IndexError) as e:
        return failure(e)


def tls(addr, name):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((addr, 443), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=name) as s:
                return s.recv(4096).decode().strip() or "closed"
    except OSError as e:
        return failure(e)


def tcp(addr, port):
    try:
        with socket.create_connection((addr, port), timeout=5):
            return "connected"
    except OSError as e:
        return failure(e)


def dns(server, name):
    query = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        s.connect((server, 53))
        s.send(query)
        reply = s.recv(512)
        return socket.inet_ntoa(reply[-4:]) if struct.unpack(">H", reply[6:8])[0] else "no answer"
    except OSError as e:
        return failure(e)
    finally:
        s.close()


print(json.dumps({
    "http_allowed": http(WEB, "allowed.test"),
    "http_allowed_with_port": http(WEB, "allowed.test:80"),
    "http_other": http(WEB, "other.test"),
    "http_fronted": http(NOWHERE, "allowed.test"),
    "tls_allowed": tls(WEB, "allowed.test"),
    "tls_other": tls(WEB, "other.test"),
    "tls_wildcard": tls(WEB, "a.wild.test"),
    "tls_wildcard_apex": tls(WEB, "wild.test"),
    "tls_fronted": tls(NOWHERE, "allowed.test"),
    "tls_to_host": tls(WEB, "host.wild.test"),
    "tcp_other_port": tcp(WEB, 8080),
    "dns_own": dns(DNS, "allowed.test"),
    "dns_rogue": dns(ROGUE, "allowed.test"),
}))
