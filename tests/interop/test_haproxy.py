"""smtpkit behind a real HAProxy (Debian's), with `send-proxy` (v1) and `send-proxy-v2`, on
every transport: the client's own address reaches the policies and the stored `Received:`
header, on a plain listener and on an implicit-TLS one (PROXY header, then TLS).

The clients connect from other loopback addresses (127.0.0.2 and up), so HAProxy's address
(127.0.0.1) and theirs differ. HAProxy runs in the foreground (`-db`) on private ports and is
stopped by each test. The rest of the file speaks PROXY headers with raw sockets: an untrusted
peer, a missing or malformed header, the per-IP limit counted on the proxied client, and a
TLS ClientHello that arrives in the same segment as the header.
"""

from __future__ import annotations

import contextlib
import functools
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import find_tool, free_port
from support import WAIT, Calls, Tls, Transport, terminate, wait_until

from smtpkit.handlers import Accept, Context, Handler, Message, Pipeline, Policy
from smtpkit.transports import Server
from smtpkit.transports._assemble import parse_serve

TRUSTED = ("127.0.0.1/32",)
CONFIG = """\
global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend v1
    bind 127.0.0.1:{v1}
    default_backend smtpkit_v1
backend smtpkit_v1
    server smtpkit 127.0.0.1:{smtp} send-proxy
frontend v2
    bind 127.0.0.1:{v2}
    default_backend smtpkit_v2
backend smtpkit_v2
    # Health checks speak PROXY v2 too, with the LOCAL command, then wait for our 220.
    option smtpchk EHLO haproxy.example
    server smtpkit 127.0.0.1:{smtp} send-proxy-v2 check check-send-proxy inter 300ms
frontend smtps
    bind 127.0.0.1:{smtps_front}
    default_backend smtpkit_smtps
backend smtpkit_smtps
    server smtpkit 127.0.0.1:{smtps} send-proxy-v2
"""


class Seen(Policy):
    """Records the client every stage sees."""

    blocking = False

    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def welcome(self, ctx: Context, client_ip: str) -> None:
        self.calls.add("welcome", (client_ip, ctx.session.peer))

    def mail(self, ctx: Context, sender: str, params: object) -> None:
        self.calls.add("mail", (sender, ctx.session.peer))


class Store(Handler):
    """Keeps each message as it would be stored: the Received header first."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def data(self, message: Message) -> Accept:
        self.calls.add("message", (self.envelope.sender, message.read()))
        return Accept()


def pipeline(calls: Calls) -> Pipeline:
    return Pipeline(Seen(calls), deliver=functools.partial(Store, calls))


@contextlib.contextmanager
def haproxy(tmp_path: Path, smtp: int, smtps: int) -> Iterator[dict[str, int]]:
    """HAProxy in the foreground in front of smtpkit's two proxy listeners; its frontends'
    ports by name. Stopped (and waited for) at the end: no daemon is left behind."""
    ports = {"v1": free_port(), "v2": free_port(), "smtps_front": free_port()}
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG.format(smtp=smtp, smtps=smtps, **ports))
    proc = subprocess.Popen(
        [find_tool("haproxy"), "-f", str(config), "-db"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for port in ports.values():  # from 127.0.0.9: only health checks come from HAProxy's
            assert wait_until(lambda: ready(port, proc)), f"haproxy is not listening on {port}"  # noqa: B023
        yield ports
    finally:
        terminate(proc)
        assert proc.stderr is not None
        proc.stderr.close()


def ready(port: int, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"haproxy exited with {proc.returncode}")
    try:
        socket.create_connection(("127.0.0.1", port), WAIT, ("127.0.0.9", 0)).close()
    except OSError:
        return False
    return True


def proxied_server(transport: Transport, calls: Calls, tls: Tls, **options: object) -> Server:
    settings: dict[str, object] = {
        "listen": (("127.0.0.1", 0),),
        "tls_listen": (("127.0.0.1", 0),),
        "ssl_context": tls.server,
        "proxy_listeners": (("127.0.0.1", 0),),
        "proxy_trusted": TRUSTED,
    }
    settings.update(options)
    return transport.server(pipeline(calls), **settings)


def send(client: smtplib.SMTP, sender: str) -> tuple[str, int]:
    """One message through `client`; returns the client's own (address, port)."""
    client.ehlo("client.example")
    assert client.sendmail(sender, ["rcpt@example.org"], b"Subject: hi\r\n\r\nhello\r\n") == {}
    address, port = client.sock.getsockname()[:2]
    client.quit()
    return str(address), int(port)


def check_seen(calls: Calls, sender: str, client: tuple[str, int]) -> None:
    """The policy and the stored Received header saw `client`, not HAProxy."""
    assert (client[0], client) in calls.of("welcome")
    assert (sender, client) in calls.of("mail")
    (stored,) = [m for who, m in calls.of("message") if who == sender]
    received = stored.split(b"\r\n\t", 1)[0]
    assert received == f"Received: from client.example ([{client[0]}])".encode(), stored


def test_haproxy_send_proxy_v1_and_v2(transport: Transport, tls: Tls, tmp_path: Path) -> None:
    calls = Calls()
    with proxied_server(transport, calls, tls) as server:
        smtp, smtps = server.addresses[0][1], server.tls_addresses[0][1]
        with haproxy(tmp_path, smtp, smtps) as ports:
            seen = []
            for n, name in enumerate(("v1", "v2"), start=2):
                with smtplib.SMTP(
                    "127.0.0.1", ports[name], timeout=WAIT, source_address=(f"127.0.0.{n}", 0)
                ) as client:
                    seen.append((f"{name}@example.org", send(client, f"{name}@example.org")))
            with smtplib.SMTP_SSL(
                "127.0.0.1",
                ports["smtps_front"],
                timeout=WAIT,
                context=tls.client,
                source_address=("127.0.0.4", 0),
            ) as client:
                seen.append(("smtps@example.org", send(client, "smtps@example.org")))
            # HAProxy's health checks (PROXY v2 LOCAL) keep HAProxy's own address: no client
            # of this test comes from 127.0.0.1.
            assert wait_until(lambda: any(ip == "127.0.0.1" for ip, _ in calls.of("welcome")))
        for sender, client_address in seen:
            check_seen(calls, sender, client_address)
        (smtps,) = [m for who, m in calls.of("message") if who == "smtps@example.org"]
        assert b"(using TLSv1." in smtps.split(b"\r\n\r\n")[0]


# ----------------------------------------------------------------- raw PROXY headers


def raw(server: Server, data: bytes, *, tls: bool = False, source: str = "127.0.0.1") -> bytes:
    """Connect (to the SMTPS listener with `tls`) from `source`, send `data`, and return all
    the server says until it closes (a reset too: closing with our bytes unread may reset)."""
    address = server.tls_addresses[0] if tls else server.addresses[0]
    with socket.create_connection(address, timeout=WAIT, source_address=(source, 0)) as sock:
        sock.sendall(data)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
        return received


def v1(client: str, port: int = 40312) -> bytes:
    family = "TCP6" if ":" in client else "TCP4"
    server = "::1" if ":" in client else "127.0.0.1"
    return f"PROXY {family} {client} {server} {port} 25\r\n".encode()


@pytest.mark.parametrize(
    ("source", "data"),
    [
        ("127.0.0.2", v1("192.0.2.7") + b"QUIT\r\n"),  # not the trusted proxy
        ("127.0.0.1", b"EHLO client.example\r\nQUIT\r\n"),  # no header
        ("127.0.0.1", b"PROXY TCP4 192.0.2.777 127.0.0.1 1 25\r\nQUIT\r\n"),  # malformed
        ("127.0.0.1", b"PROXY " + b"x" * 200 + b"\r\n"),  # too long
    ],
    ids=["untrusted", "missing", "malformed", "too-long"],
)
def test_a_proxy_listener_closes_without_a_greeting(
    transport: Transport, tls: Tls, source: str, data: bytes
) -> None:
    calls = Calls()
    with proxied_server(transport, calls, tls) as server:
        assert raw(server, data, source=source) == b""
        assert wait_until(lambda: server.active_sessions == 0)
        assert calls.of("welcome") == []
        # A legitimate proxied client is served as before.
        reply = raw(server, v1("192.0.2.7") + b"QUIT\r\n")
        assert reply.startswith(b"220 ") and reply.endswith(b"221 2.0.0 Bye\r\n")
        assert calls.of("welcome") == [("192.0.2.7", ("192.0.2.7", 40312))]


def test_the_per_ip_limit_counts_the_proxied_client(transport: Transport, tls: Tls) -> None:
    """HAProxy's address carries everyone; the limit is the client's, and an IPv6 client is
    counted by its /64. The refused one gets 421; its slot and the others' come back."""
    calls = Calls()
    with proxied_server(transport, calls, tls, max_per_ip=1) as server:
        address = server.addresses[0]
        held = []
        try:
            for client in ("192.0.2.7", "2001:db8::1"):
                sock = socket.create_connection(address, timeout=WAIT)
                held.append(sock)
                sock.sendall(v1(client))
                assert sock.recv(1024).startswith(b"220 ")
            for client in ("192.0.2.7", "2001:db8::ffff"):  # the same /64
                reply = raw(server, v1(client))
                assert reply == b"421 localhost Error: too many connections from your address\r\n"
            assert raw(server, v1("192.0.2.8") + b"QUIT\r\n").startswith(b"220 ")
        finally:
            for sock in held:
                sock.close()
        assert wait_until(lambda: server.active_sessions == 0)
        assert raw(server, v1("192.0.2.7") + b"QUIT\r\n").startswith(b"220 ")


def smtps_behind_header(server: Server, header: bytes, context: ssl.SSLContext) -> bytes:
    """Connect to the SMTPS proxy listener and send `header` and the TLS ClientHello in one
    segment, finish the handshake, say QUIT; return the plaintext replies."""
    with socket.create_connection(server.tls_addresses[0], timeout=WAIT) as sock:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
        pending = header
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(pending + outgoing.read())
                pending = b""
                chunk = sock.recv(65536)
                assert chunk, "the server closed during the handshake"
                incoming.write(chunk)
        tls.write(b"QUIT\r\n")
        sock.sendall(outgoing.read())
        replies = b""
        while not replies.endswith(b"221 2.0.0 Bye\r\n"):
            try:
                replies += tls.read(65536)
            except ssl.SSLWantReadError:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                incoming.write(chunk)
            except ssl.SSLZeroReturnError:
                break
        return replies


def test_smtps_behind_a_proxy_when_the_handshake_rides_with_the_header(
    transport: Transport, tls: Tls
) -> None:
    calls = Calls()
    with proxied_server(transport, calls, tls) as server:
        replies = smtps_behind_header(server, v1("192.0.2.9", 5555), tls.client)
        assert replies.startswith(b"220 localhost ESMTP smtpkit\r\n")
        assert replies.endswith(b"221 2.0.0 Bye\r\n")
        assert calls.of("welcome") == [("192.0.2.9", ("192.0.2.9", 5555))]


def test_only_the_proxy_listener_expects_a_header(transport: Transport, tls: Tls) -> None:
    """A plain listener beside a proxy listener speaks SMTP from the first byte."""
    calls = Calls()
    options = {"listen": (("127.0.0.1", 0), ("127.0.0.2", 0)), "tls_listen": ()}
    with proxied_server(transport, calls, tls, **options) as server:
        with socket.create_connection(server.addresses[1], timeout=WAIT) as sock:
            assert sock.recv(1024).startswith(b"220 localhost")
            ip, port = sock.getsockname()[:2]
            sock.sendall(b"QUIT\r\n")
            assert sock.recv(1024) == b"221 2.0.0 Bye\r\n"
        assert calls.of("welcome") == [(ip, (ip, port))]
        reply = raw(server, v1("192.0.2.7") + b"QUIT\r\n")  # the proxy listener still wants one
        assert reply.startswith(b"220 ") and calls.of("welcome")[-1][0] == "192.0.2.7"


# ------------------------------------------------------------------ the command line


def test_a_proxy_listener_without_trusted_proxies_is_an_error_at_start() -> None:
    """Never "trust everyone": one line, exit status 2, nothing bound."""
    result = subprocess.run(
        [sys.executable, "-m", "smtpkit", "serve", "--listen", "127.0.0.1:0", "--proxy-protocol"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "smtpkit: error: --proxy-protocol needs --proxy-trusted CIDR: the networks of the proxies\n"
    )


def test_the_file_sets_the_proxy_per_listener(tmp_path: Path) -> None:
    config = tmp_path / "behind.toml"
    config.write_text(
        'listen = ["127.0.0.1:2525"]\n'
        'proxy_listen = ["127.0.0.1:2526"]\n'
        'proxy_trusted = ["10.0.0.5"]\n'
        'xclient_trusted = ["10.1.0.0/16"]\n'
    )
    options = parse_serve(["--config", str(config), "--handler", "sink"]).options
    assert options.listen == (("127.0.0.1", 2525), ("127.0.0.1", 2526))
    assert options.proxy_listeners == (("127.0.0.1", 2526),)
    assert options.proxy_trusted == ("10.0.0.5/32",)
    assert options.config.xclient_trusted == ("10.1.0.0/16",)
    every = parse_serve(["--config", str(config), "--handler", "sink", "--proxy-protocol"])
    assert every.options.proxy_listeners == (("127.0.0.1", 2525), ("127.0.0.1", 2526))
