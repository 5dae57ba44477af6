"""What the tests of every folder share: WAIT, a raw SMTP client, the transports under test,
and the process's own resource counts (its sockets, its memory).

Fixtures live in tests/conftest.py; this is a plain module because test files import from it
(`from support import WAIT, Peer`): tests/ is on sys.path, as pytest puts a rootdir conftest's
folder there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from smtpkit.handlers import HandlerFactory
from smtpkit.transports import TRANSPORTS, Server, ServerOptions
from smtpkit.transports.testing import TEST_GRACE_PERIOD

#: How long a test waits for something that must happen. Only a failing test waits it out, so
#: it is generous: a loaded 2-core machine is slow, and a hang must fail, never stall.
WAIT = 30.0

# ====================================================================== transports


@dataclass(frozen=True)
class Transport:
    """One transport under test (and, for asyncio, its event loop): how to run a server on it.

    Every server made through it is remembered, so that the `transport` fixture can check,
    after the test, that each one ended every session and that no socket was left open.
    """

    id: str
    name: str
    anyio_backend: str = "asyncio"
    uvloop: bool = False
    servers: list[Server] = field(default_factory=list, compare=False, repr=False)

    @property
    def is_async(self) -> bool:
        """True when it runs an event loop, so `async def` hooks work."""
        return self.name != "threads"

    @property
    def server_args(self) -> dict[str, Any]:
        """The same transport and loop as `running_server()` arguments."""
        return {"transport": self.name, "anyio_backend": self.anyio_backend, "uvloop": self.uvloop}

    @property
    def cli_args(self) -> list[str]:
        """The same transport and loop as `smtpkit serve` flags."""
        args = ["--transport", self.name]
        if self.name == "anyio":
            args += ["--anyio-backend", self.anyio_backend]
        if not self.uvloop:
            args.append("--no-uvloop")
        return args

    def require(self) -> None:
        """Fail (never skip) when the transport's runner or the loop it asks for is missing."""
        module = TRANSPORTS[self.name].partition(":")[0]
        if importlib.util.find_spec(module) is None:
            pytest.fail(f"transport {self.id}: {module} does not exist yet", pytrace=False)
        if self.uvloop and importlib.util.find_spec("uvloop") is None:
            pytest.fail(f"transport {self.id}: uvloop is not installed", pytrace=False)

    def server(self, factory: HandlerFactory, **options: Any) -> Server:
        """A server on 127.0.0.1 (or `listen=`), not started yet: for the tests that start and
        stop it themselves. The grace period is `TEST_GRACE_PERIOD` unless given."""
        self.require()
        settings: dict[str, Any] = {
            "listen": (("127.0.0.1", 0),),
            "grace_period": TEST_GRACE_PERIOD,
            "anyio_backend": self.anyio_backend,
            "uvloop": self.uvloop,
        }
        settings.update(options)
        server = Server(factory, ServerOptions(**settings), transport=self.name)
        self.servers.append(server)
        return server

    @contextlib.contextmanager
    def serve(self, factory: HandlerFactory, **options: Any) -> Iterator[Server]:
        """A started server; stopped at the end of the block."""
        with self.server(factory, **options) as server:
            yield server


#: Every transport and loop a transport test runs on. The stdlib loop is the one users get
#: by default; uvloop is an extra variant, never the only one.
TRANSPORT_IDS: dict[str, Transport] = {
    t.id: t
    for t in (
        Transport("asyncio", "asyncio"),
        Transport("asyncio-uvloop", "asyncio", uvloop=True),
        Transport("anyio-asyncio", "anyio"),
        Transport("anyio-asyncio-uvloop", "anyio", uvloop=True),
        Transport("anyio-trio", "anyio", "trio"),
        Transport("threads", "threads"),
    )
}


def on_transports(*prefixes: str) -> pytest.MarkDecorator:
    """Run a test (or, as `pytestmark`, a module) only on the transports whose id starts with
    one of `prefixes`: `on_transports("anyio")` is anyio on every backend and loop."""
    ids = [i for i in TRANSPORT_IDS if i.startswith(prefixes)]
    return pytest.mark.parametrize("transport", ids, indirect=True)


def active_sessions(server: Server) -> int:
    """How many sessions the server holds a slot for."""
    return server.active_sessions


def check_released(servers: list[Server], sockets_before: int) -> None:
    """After a test: every session of every server ended (its slot freed), every server is
    stopped, and this process has no more sockets open than before the test."""
    problems: list[str] = []
    for server in servers:  # still serving: its sessions end once their clients are gone
        if not wait_until(lambda: active_sessions(server) == 0):  # noqa: B023
            problems.append(f"{active_sessions(server)} session(s) still active on {server}")
    for server in servers:
        server.stop()
    problems += [
        f"{active_sessions(s)} session(s) active after stop() on {s}"
        for s in servers
        if active_sessions(s) != 0
    ]
    if not wait_until(lambda: open_sockets() <= sockets_before):
        problems.append(
            f"{open_sockets() - sockets_before} socket(s) left open: {socket_targets()}"
        )
    assert not problems, "; ".join(problems)


def assert_recovered(server: Server, sockets_before: int) -> None:
    """After an attack on a running server: every slot and socket the attack held is freed
    (this process had `sockets_before` open before it) and a legitimate client is served."""
    assert wait_until(lambda: active_sessions(server) == 0), (
        f"{active_sessions(server)} slot(s) still held after the attack"
    )
    assert wait_until(lambda: open_sockets() <= sockets_before), (
        f"{open_sockets() - sockets_before} socket(s) still open after the attack"
    )
    with smtplib.SMTP(server.host, server.port, timeout=WAIT) as client:
        assert client.sendmail("a@b.example", ["c@d.example"], b"Subject: hi\r\n\r\nhi\r\n") == {}


@dataclass(frozen=True)
class Tls:
    """A server context with a certificate for localhost, 127.0.0.1 and ::1, and a client
    context that trusts it, from a throwaway CA; `cert`, `key` and `ca` as PEM files."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    cert: str
    key: str
    ca: str


# ====================================================================== processes

#: The checkout: examples/ and benchmarks/ are run from here.
ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"listening on (\S+) port (\d+)")


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not ended within WAIT."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Process:
    """An smtpkit process (`python -m smtpkit ...` or an example) whose output goes to
    `log_path`; `wait_listening()` reads the address it listens on from that log."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self.host = ""
        self.port = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self) -> None:
        if not wait_until(lambda: bool(_LISTENING.search(self.log())) or self.exited()):
            raise RuntimeError(f"not listening after {WAIT} s:\n{self.log()}")
        match = _LISTENING.search(self.log())
        if match is None:
            raise RuntimeError(f"exited with {self.proc.returncode}:\n{self.log()}")
        self.host, self.port = match.group(1), int(match.group(2))

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def stop(self) -> None:
        terminate(self.proc)


# ====================================================================== waiting, counting


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll a state until it holds (True) or `timeout` passes (False). For states that no
    event announces (a slot freed, a socket closed); never a way to prove concurrency."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def socket_targets(pid: int | str = "self") -> list[str]:
    """The sockets a process has open (Linux: the `socket:[inode]` links in /proc/PID/fd)."""
    folder = f"/proc/{pid}/fd"
    found = []
    for name in os.listdir(folder):
        with contextlib.suppress(OSError):  # closed while we looked
            target = os.readlink(f"{folder}/{name}")
            if target.startswith("socket:"):
                found.append(target)
    return found


def open_sockets(pid: int | str = "self") -> int:
    """How many sockets a process has open."""
    return len(socket_targets(pid))


def vm_rss(pid: int | str = "self") -> int:
    """A process's resident set size in bytes (Linux: /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/PID/status")


def in_thread(fn: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


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


# ====================================================================== the raw client


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

    def start_data(
        self, sender: bytes = b"a@b.example", recipients: tuple[bytes, ...] = (b"c@d.example",)
    ) -> None:
        """MAIL, RCPT and DATA after EHLO (each step checked): ready for the message text."""
        assert self.command(b"MAIL FROM:<" + sender + b">").startswith(b"250")
        for rcpt in recipients:
            assert self.command(b"RCPT TO:<" + rcpt + b">").startswith(b"250")
        assert self.command(b"DATA").startswith(b"354")

    def send_message(
        self,
        body: bytes = b"Subject: test\r\n\r\nhello\r\n",
        sender: bytes = b"a@b.example",
        recipients: tuple[bytes, ...] = (b"c@d.example",),
    ) -> bytes:
        """One transaction after EHLO (each step checked); returns the reply to the message."""
        self.start_data(sender, recipients)
        self.send(body + b".\r\n")
        return self.reply()

    def starttls(self, context: ssl.SSLContext) -> None:
        """STARTTLS (after EHLO): the 220, then the handshake."""
        reply = self.command(b"STARTTLS")
        assert reply.startswith(b"220 "), reply
        assert not self.buf, f"the server said more after its 220: {bytes(self.buf)!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")

    def reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0), as a client that vanishes does."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        self.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def code(reply: bytes) -> int:
    """The reply code of `reply`."""
    return int(reply[:3])


# ====================================================================== this machine


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
