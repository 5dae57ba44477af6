"""Helpers for the transport tests: the transport parameter, TLS contexts, a raw SMTP peer.

`transport` parametrises a test over every transport. A transport whose runner module does
not exist yet makes its tests FAIL (in the test body, on first use), never skip: the suite is
the contract each transport must meet.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trustme

from smtpkit.handlers import HandlerFactory
from smtpkit.transports import TRANSPORTS, Server, ServerOptions, running_server

#: How long a test waits for something that must happen: a hang fails instead of stalling.
WAIT = 5.0

#: The parameter ids: (transport, anyio backend).
TRANSPORT_PARAMS: dict[str, tuple[str, str]] = {
    "asyncio": ("asyncio", "asyncio"),
    "anyio-asyncio": ("anyio", "asyncio"),
    "anyio-trio": ("anyio", "trio"),
    "threads": ("threads", "asyncio"),
}


@dataclass(frozen=True)
class Transport:
    """One transport under test: how to run a server on it."""

    id: str
    name: str
    anyio_backend: str

    @property
    def is_async(self) -> bool:
        """True when it runs an event loop, so `async def` hooks work."""
        return self.name != "threads"

    def require(self) -> None:
        """Fail (not skip) when the transport's runner is not written yet."""
        module = TRANSPORTS[self.name].partition(":")[0]
        if importlib.util.find_spec(module) is None:
            pytest.fail(f"transport {self.id}: {module} does not exist yet", pytrace=False)

    @contextlib.contextmanager
    def serve(self, factory: HandlerFactory, **options: Any) -> Iterator[Server]:
        """A started server on 127.0.0.1 (or `listen=`); stopped at the end of the block."""
        self.require()
        with running_server(
            factory, transport=self.name, anyio_backend=self.anyio_backend, **options
        ) as server:
            yield server

    def server(self, factory: HandlerFactory, **options: Any) -> Server:
        """A server not started yet, for the tests that stop it themselves."""
        self.require()
        settings: dict[str, Any] = {
            "listen": (("127.0.0.1", 0),),
            "anyio_backend": self.anyio_backend,
        }
        settings.update(options)
        return Server(factory, ServerOptions(**settings), transport=self.name)


@pytest.fixture(params=list(TRANSPORT_PARAMS))
def transport(request: pytest.FixtureRequest) -> Transport:
    name, backend = TRANSPORT_PARAMS[request.param]
    return Transport(request.param, name, backend)


@dataclass(frozen=True)
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="session")
def tls() -> Tls:
    """A server context with a certificate for localhost and 127.0.0.1, and a client context
    that trusts it, from a throwaway CA."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return Tls(server, client)


class Peer:
    """A raw-socket SMTP client that reads replies properly: whole multi-line replies, with
    its own buffer (so STARTTLS can switch the socket under it), and EOF as b""."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        timeout: float = WAIT,
        source: tuple[str, int] | None = None,
        rcvbuf: int | None = None,
    ) -> None:
        host = address[0]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock: socket.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            if source is not None:
                self.sock.bind(source)
            self.sock.connect(address)
        except BaseException:
            self.sock.close()
            raise
        self.buf = bytearray()
        self.eof = False

    # ------------------------------------------------------------------ reading

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(262144)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def line(self) -> bytes:
        """One line, CRLF included; what is left (often b"") at the end of the stream."""
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line = bytes(self.buf[: end + 1])
                del self.buf[: end + 1]
                return line
            if not self._fill():
                rest = bytes(self.buf)
                self.buf.clear()
                return rest

    def reply(self) -> bytes:
        """One whole reply (all its lines); b"" once the server has closed the connection."""
        text = b""
        while True:
            line = self.line()
            text += line
            if len(line) < 4 or line[3:4] != b"-":
                return text

    def replies(self, count: int) -> list[bytes]:
        return [self.reply() for _ in range(count)]

    def replies_until_closed(self, limit: int = 100_000) -> list[bytes]:
        out: list[bytes] = []
        while len(out) < limit:
            reply = self.reply()
            if not reply:
                return out
            out.append(reply)
        raise AssertionError(f"still replying after {limit} replies")

    def closed(self) -> bool:
        """True when the server closed the connection with nothing more to say."""
        return self.reply() == b""

    # ------------------------------------------------------------------ writing

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: bytes | str) -> bytes:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply()

    # ------------------------------------------------------------------ sessions

    def hello(self, name: bytes = b"client.example") -> bytes:
        """Read the greeting, then EHLO; returns the EHLO reply."""
        greeting = self.reply()
        assert greeting.startswith(b"220 "), greeting
        reply = self.command(b"EHLO " + name)
        assert reply.startswith(b"250"), reply
        return reply

    def send_message(
        self,
        body: bytes = b"Subject: test\r\n\r\nhello\r\n",
        sender: bytes = b"a@b.example",
        recipients: tuple[bytes, ...] = (b"c@d.example",),
    ) -> bytes:
        """One transaction after EHLO (each step checked); returns the reply to the message."""
        assert self.command(b"MAIL FROM:<" + sender + b">").startswith(b"250")
        for rcpt in recipients:
            assert self.command(b"RCPT TO:<" + rcpt + b">").startswith(b"250")
        assert self.command(b"DATA").startswith(b"354")
        self.send(body + b".\r\n")
        return self.reply()

    def starttls(self, context: ssl.SSLContext) -> None:
        """STARTTLS (after EHLO): the 220, then the handshake."""
        reply = self.command(b"STARTTLS")
        assert reply.startswith(b"220 "), reply
        assert not self.buf, f"the server said more after its 220: {bytes(self.buf)!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def code(reply: bytes) -> int:
    """The reply code of `reply`."""
    return int(reply[:3])


class Calls:
    """A thread-safe record of what hooks saw, with an event per name to wait on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[str, Any]] = []
        self._events: dict[str, threading.Event] = {}

    def add(self, name: str, value: Any = None) -> None:
        with self.lock:
            self.items.append((name, value))
            event = self._events.setdefault(name, threading.Event())
        event.set()

    def event(self, name: str) -> threading.Event:
        with self.lock:
            return self._events.setdefault(name, threading.Event())

    def wait(self, name: str, timeout: float = WAIT) -> None:
        assert self.event(name).wait(timeout), f"no {name} call within {timeout}s"

    def of(self, name: str) -> list[Any]:
        with self.lock:
            return [value for n, value in self.items if n == name]


def local_non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine outside 127/8, or None (Linux: SIOCGIFADDR)."""
    try:
        import fcntl
        import struct
    except ImportError:
        return None
    for _, name in socket.if_nameindex():
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
        except OSError:
            continue
        finally:
            probe.close()
        ip = socket.inet_ntoa(packed[20:24])
        if not ipaddress.ip_address(ip).is_loopback:
            return ip
    return None


def has_ipv6_loopback() -> bool:
    """True when the kernel has ::1 configured (Linux: /proc/net/if_inet6)."""
    try:
        with open("/proc/net/if_inet6") as f:
            return any(line.split()[0] == "0" * 31 + "1" for line in f if line.strip())
    except OSError:
        return socket.has_ipv6


def vm_rss() -> int:
    """This process's resident set size in bytes (Linux: /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def in_thread(fn: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread
