"""The stock e2b SDK over HTTPS against a real `hearth server --domain
hearth.test --tls-self-signed`, the way E2B's cloud is reached: the API at
https://api.<domain>, each sandbox at https://<port>-<id>.<domain>, names
resolved by a resolver override (every name under the domain, port 443, is
the server's address) and the server's generated CA trusted through
SSL_CERT_FILE. Nothing sets E2B_SANDBOX_URL.

usage: tls_drive.py (E2B_API_URL is the server's https://127.0.0.1:PORT,
HEARTH_DOMAIN the domain, HEARTH_CA the CA file)
Ends with `all checks passed`.
"""

import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request

DOMAIN = os.environ["HEARTH_DOMAIN"]
CA = os.environ["HEARTH_CA"]
PORT = int(os.environ["E2B_API_URL"].rsplit(":", 1)[1])
# As a user of E2B's cloud configures the SDK: by domain alone.
os.environ.pop("E2B_API_URL")
os.environ.pop("E2B_SANDBOX_URL")
os.environ["E2B_DOMAIN"] = DOMAIN
os.environ["SSL_CERT_FILE"] = CA

_resolve = socket.getaddrinfo


def resolve(host, port, *args, **kwargs):
    """The test's DNS: the domain and its subdomains on 443 are the server."""
    if isinstance(host, bytes):
        host = host.decode()
    if host == DOMAIN or (isinstance(host, str) and host.endswith("." + DOMAIN)):
        if port not in (443, "443", "https"):
            raise socket.gaierror(f"the test resolver serves {DOMAIN} on port 443 only, not {port}")
        return _resolve("127.0.0.1", PORT, *args, **kwargs)
    return _resolve(host, port, *args, **kwargs)


socket.getaddrinfo = resolve

import asyncio  # noqa: E402

from e2b import AsyncSandbox, Sandbox  # noqa: E402


def check(name, cond, detail=""):
    if not cond:
        print(f"FAILED: {name} {detail}", flush=True)
        sys.exit(1)
    print(f"ok: {name}", flush=True)


def handshake(name, cafile=None, alpn=("h2", "http/1.1")):
    """A TLS handshake with SNI `name`: the ALPN protocol, or the error."""
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(list(alpn))
    with socket.create_connection(("127.0.0.1", PORT), timeout=10) as raw:
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
    untrusted = handshake(f"api.{DOMAIN}", cafile=None)
    check("not trusted without the CA", isinstance(untrusted, ssl.SSLCertVerificationError), untrusted)
    other = handshake("example.com", CA)
    check("not valid for another name", isinstance(other, ssl.SSLCertVerificationError), other)

    # Plain HTTP on the TLS port gets no answer.
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=10)
        check("plain HTTP is refused", False)
    except (urllib.error.URLError, ConnectionError, OSError) as e:
        check("plain HTTP is refused", True, e)

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
