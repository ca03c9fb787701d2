"""The stock e2b SDK over HTTPS against a real `hearth server --domain
hearth.test --tls-self-signed` listening on 127.0.0.1:443, the way E2B's
cloud is reached: the API at https://api.<domain>, each sandbox at
https://<port>-<id>.<domain>. Names are resolved by this script's own DNS
server (every name under the domain is 127.0.0.1), which the caller makes
this process's resolver by a private /etc/resolv.conf (a mount namespace);
the server's generated CA is trusted through SSL_CERT_FILE. Nothing sets
E2B_API_URL or E2B_SANDBOX_URL.

usage: tls_drive.py (HEARTH_DOMAIN the domain, HEARTH_CA the CA file,
HEARTH_DNS the address the resolv.conf names, to serve DNS on)
Ends with `all checks passed`.
"""

import asyncio
import http.client
import os
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.error
import urllib.request

DOMAIN = os.environ["HEARTH_DOMAIN"]
CA = os.environ["HEARTH_CA"]
DNS = os.environ["HEARTH_DNS"]
SERVER = "127.0.0.1"
# As a user of E2B's cloud configures the SDK: by domain alone.
os.environ.pop("E2B_API_URL")
os.environ.pop("E2B_SANDBOX_URL")
os.environ["E2B_DOMAIN"] = DOMAIN
os.environ["SSL_CERT_FILE"] = CA


def dns_answer(query):
    """The reply to one DNS query: an A record of SERVER for names under
    DOMAIN, no record of other types for them, NXDOMAIN for other names."""
    ident, flags = struct.unpack(">HH", query[:4])
    i, labels = 12, []
    while query[i]:
        labels.append(query[i + 1:i + 1 + query[i]].decode().lower())
        i += 1 + query[i]
    qtype = struct.unpack(">H", query[i + 1:i + 3])[0]
    question = query[12:i + 5]
    name = ".".join(labels)
    ours = name == DOMAIN or name.endswith("." + DOMAIN)
    record = b""
    if ours and qtype == 1:
        record = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(SERVER)
    reply_flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | (0 if ours else 3)
    return struct.pack(">HHHHHH", ident, reply_flags, 1, 1 if record else 0, 0, 0) + question + record


def serve_dns():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((DNS, 53))
    while True:
        query, peer = sock.recvfrom(4096)
        try:
            sock.sendto(dns_answer(query), peer)
        except (IndexError, struct.error, UnicodeDecodeError):
            pass


threading.Thread(target=serve_dns, daemon=True).start()

from e2b import AsyncSandbox, Sandbox  # noqa: E402 (after the environment is set)


def check(name, cond, detail=""):
    if not cond:
        print(f"FAILED: {name} {detail}", flush=True)
        sys.exit(1)
    print(f"ok: {name}", flush=True)


# The system's trusted CAs, named: SSL_CERT_FILE (set above) would
# otherwise replace them.
SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"


def handshake(name, cafile, alpn=("h2", "http/1.1")):
    """A TLS handshake with SNI `name` trusting `cafile` alone: the ALPN
    protocol, or the error."""
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(list(alpn))
    with socket.create_connection((SERVER, 443), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                return tls.selected_alpn_protocol()
        except ssl.SSLError as e:
            return e


def main():
    # The certificate: trusted through the generated CA only, for the
    # domain's names, HTTP/2 by ALPN.
    check("api.<domain> with the CA: HTTP/2", handshake(f"api.{DOMAIN}", CA) == "h2")
    check("HTTP/1.1 when that is all a client speaks",
          handshake(f"49983-x.{DOMAIN}", CA, alpn=("http/1.1",)) == "http/1.1")
    untrusted = handshake(f"api.{DOMAIN}", SYSTEM_CAS)
    check("not trusted by the system's CAs", isinstance(untrusted, ssl.SSLCertVerificationError), untrusted)
    other = handshake("example.com", CA)
    check("not valid for another name", isinstance(other, ssl.SSLCertVerificationError), other)

    # Plain HTTP on the TLS port gets no HTTP answer (a TLS alert, then
    # the connection closes).
    try:
        urllib.request.urlopen(f"http://{SERVER}:443/health", timeout=10)
        check("plain HTTP gets no answer", False)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        check("plain HTTP gets no answer", True, e)

    sbx = Sandbox.create()
    check("the SDK created a sandbox over HTTPS", sbx.sandbox_id)
    check("its host name is <port>-<id>.<domain>", sbx.get_host(8000) == f"8000-{sbx.sandbox_id}.{DOMAIN}",
          sbx.get_host(8000))
    out = sbx.commands.run("echo over-tls; hostname")
    check("commands run through https://49983-<id>.<domain>", out.stdout.split() == ["over-tls", sbx.sandbox_id],
          out.stdout)
    sbx.files.write("/home/user/tls.txt", "secret")
    check("files through the proxy over TLS", sbx.files.read("/home/user/tls.txt") == "secret")
    sbx.commands.run("python3 -m http.server 8000 --directory /home/user", background=True)
    context = ssl.create_default_context(cafile=CA)
    body = None
    for _ in range(50):
        try:
            url = f"https://{sbx.get_host(8000)}/tls.txt"
            with urllib.request.urlopen(url, timeout=10, context=context) as r:
                body = r.read()
                break
        except urllib.error.HTTPError as e:
            body = e
            time.sleep(0.2)
    check("a user port at https://8000-<id>.<domain>", body == b"secret", body)

    async def async_sdk():
        a = await AsyncSandbox.create()
        result = await a.commands.run("echo async-over-tls")
        await a.kill()
        return result.stdout.strip()

    check("the async SDK over HTTPS", asyncio.run(async_sdk()) == "async-over-tls")
    check("listed over HTTPS", sbx.sandbox_id in [s.sandbox_id for s in Sandbox.list().next_items()])
    sbx.kill()
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
