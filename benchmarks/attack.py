"""Attack smtpkit as a real `python -m smtpkit serve` process, per transport, on loopback.

    python3 benchmarks/attack.py [--quick] [--transports ...] [--scenarios ...]

The scenarios are issue 10's "done when" figures (targets in the SCENARIOS table below):

    slowloris   attackers that trickle a command line byte by byte, twice as many as
                --max-connections: seconds until every attacker is cut off and a legitimate
                client is served
    stress      default flags, 1.5 times the default connection limit of tricklers: seconds
                until a legitimate client is served (stress mode shrinks the deadlines)
    honest      a client that sends one complete command every (timeout - 1) s for three
                timeouts survives; then a large DATA sent above the minimum rate is accepted
    stuck-hook  a hook that never returns: SIGTERM gives exit status 0 within grace + 5 s
    tls-relay   STARTTLS sessions through --handler relay (to a sink upstream): sockets the
                server still has open afterwards

Every connection goes to 127.0.0.1, every loop is bounded, and attackers that are cut off do not
reconnect. `--quick` is a small variant (seconds, not minutes) for the smoke test. Prints a
markdown table; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import math
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from procstat import raise_open_files_limit

HOST = "127.0.0.1"  # the only target, ever
PY = sys.executable
LISTENING = re.compile(r"listening on (\S+) port (\d+)")
STARTUP = 30.0  # seconds a server may take to start listening
MESSAGE = b"Subject: attack benchmark\r\n\r\nhello\r\n"

#: The transports and loops, as `smtpkit serve` flags. The stdlib loop is what a default
#: install runs on; uvloop only when asked for.
TRANSPORTS: dict[str, list[str]] = {
    "asyncio": ["--transport", "asyncio", "--no-uvloop"],
    "asyncio-uvloop": ["--transport", "asyncio"],
    "anyio-asyncio": ["--transport", "anyio", "--anyio-backend", "asyncio", "--no-uvloop"],
    "anyio-trio": ["--transport", "anyio", "--anyio-backend", "trio"],
    "threads": ["--transport", "threads"],
}
DEFAULT_TRANSPORTS = ["asyncio", "anyio-asyncio", "anyio-trio", "threads"]


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is: the full run (issue 10's figures) or `--quick`."""

    slowloris_attackers: int
    slowloris_flags: tuple[str, ...]
    slowloris_target: float
    stress_attackers: int
    stress_flags: tuple[str, ...]
    stress_target: float
    trickle_interval: float  # seconds between two bytes of a trickling attacker
    honest_timeout: float
    data_bytes: int
    data_rate: float  # bytes/s, far above the default --min-data-rate of 500
    grace_period: float
    stuck_bound: float  # exit within grace_period + this
    tls_sessions: int
    tls_concurrency: int


FULL = Sizes(
    slowloris_attackers=1000,
    slowloris_flags=("--max-connections", "500", "--timeout", "10"),
    slowloris_target=25.0,
    stress_attackers=1500,
    stress_flags=(),
    stress_target=30.0,
    trickle_interval=3.0,
    honest_timeout=10.0,
    data_bytes=100 * 1000 * 1000,
    data_rate=10 * 1000 * 1000,
    grace_period=5.0,
    stuck_bound=5.0,
    tls_sessions=1000,
    tls_concurrency=50,
)
QUICK = Sizes(
    slowloris_attackers=40,
    slowloris_flags=("--max-connections", "20", "--timeout", "1"),
    slowloris_target=4.0,
    stress_attackers=30,
    stress_flags=("--max-connections", "20", "--stress-timeout", "1"),
    stress_target=4.0,
    trickle_interval=0.25,
    honest_timeout=1.5,
    data_bytes=1000 * 1000,
    data_rate=1000 * 1000,
    grace_period=0.5,
    stuck_bound=5.0,
    tls_sessions=20,
    tls_concurrency=5,
)


@dataclass(frozen=True)
class Row:
    """One line of the report."""

    scenario: str
    transport: str
    measured: str
    target: str
    ok: bool


# ============================================================================ the server


class Server:
    """`python -m smtpkit serve ARGS` on a free port of 127.0.0.1, its log in a file."""

    def __init__(self, args: list[str], folder: Path) -> None:
        self.log_path = folder / f"server-{time.monotonic_ns()}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [PY, "-m", "smtpkit", "serve", "--listen", f"{HOST}:0", *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=folder,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + STARTUP
        while not (match := LISTENING.search(self.log())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start:\n{self.log()[-2000:]}")
            time.sleep(0.05)
        self.port = int(match.group(2))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sockets(self) -> int:
        """How many TCP connections the server process holds open, listeners aside (Linux:
        the socket inodes of /proc/PID/fd that /proc/PID/net/tcp* lists in a state other
        than LISTEN). The event loops' own wake-up socket pairs, made on first use, are Unix
        sockets and not counted: they are plumbing, not sessions."""
        pid = self.proc.pid
        held = set()
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{name}")
                if link.startswith("socket:["):
                    held.add(link[8:-1])
        connected = set()
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as rows:
                next(rows)  # the column names
                for row in rows:
                    fields = row.split()
                    if fields[3] != "0A":  # 0A is LISTEN
                        connected.add(fields[9])
        return len(held & connected)

    def stop(self) -> int:
        """SIGTERM; SIGKILL if it has not ended in a minute. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@contextlib.contextmanager
def serving(args: list[str], folder: Path) -> Iterator[Server]:
    server = Server(args, folder)
    try:
        yield server
    finally:
        server.stop()


# ============================================================================ clients


def legit_send(port: int, timeout: float = 10.0) -> bool:
    """One legitimate client: a whole transaction with smtplib. True when it was accepted."""
    try:
        with smtplib.SMTP(HOST, port, timeout=timeout) as client:
            return client.sendmail("a@b.example", ["c@d.example"], MESSAGE) == {}
    except (OSError, smtplib.SMTPException):
        return False


async def until_served(port: int, start: float, give_up: float) -> float | None:
    """Seconds from `start` until a legitimate client is served, trying every quarter second;
    None when it was not served within `give_up` seconds of `start`."""
    while time.monotonic() - start < give_up:
        if await asyncio.to_thread(legit_send, port):
            return time.monotonic() - start
        await asyncio.sleep(0.25)
    return None


async def trickler(
    port: int, interval: float, give_up: float, start: float, connected: Callable[[], None]
) -> float | None:
    """Connect (then call `connected`) and trickle a command line that never ends, a byte
    every `interval` seconds, until the server closes the connection: seconds from `start`
    until then (None: still open after `give_up`). A refused attacker is closed at once; none
    reconnects."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return time.monotonic() - start  # refused outright: holds nothing
    finally:
        connected()
    closed = asyncio.ensure_future(reader.read(-1))  # everything until the server closes
    line = b"NOOP " + b"x" * 10_000
    try:
        for byte in range(len(line)):
            if time.monotonic() - start > give_up:
                return None
            with contextlib.suppress(OSError):
                writer.write(line[byte : byte + 1])
            done, _ = await asyncio.wait([closed], timeout=interval)
            if done:
                return time.monotonic() - start
        return None
    except OSError:
        return time.monotonic() - start
    finally:
        closed.cancel()
        writer.close()


async def trickle_attack(
    port: int, attackers: int, interval: float, give_up: float
) -> tuple[float | None, float | None]:
    """`attackers` tricklers at once, then, once all are connected, a legitimate client that
    keeps trying: (seconds until the last attacker was cut off, seconds until the legitimate
    client was served), both from the start of the attack."""
    start = time.monotonic()
    pending = attackers
    all_connected = asyncio.Event()

    def connected() -> None:
        nonlocal pending
        pending -= 1
        if not pending:
            all_connected.set()

    tasks = []
    for _ in range(attackers):  # a few at a time, so that the listen backlog never overflows
        tasks.append(asyncio.ensure_future(trickler(port, interval, give_up, start, connected)))
        if len(tasks) % 50 == 0:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(all_connected.wait(), give_up)
    served = await until_served(port, start, give_up)
    cut = await asyncio.gather(*tasks)
    return (None if None in cut else max(t for t in cut if t is not None)), served


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def run_trickle(name: str, transport: str, sizes: Sizes, folder: Path) -> Row:
    if name == "slowloris":
        attackers, flags, target = (
            sizes.slowloris_attackers,
            list(sizes.slowloris_flags),
            sizes.slowloris_target,
        )
    else:
        attackers, flags, target = (
            sizes.stress_attackers,
            list(sizes.stress_flags),
            sizes.stress_target,
        )
    with serving([*TRANSPORTS[transport], "--handler", "sink", *flags], folder) as server:
        cut, served = asyncio.run(
            trickle_attack(server.port, attackers, sizes.trickle_interval, 2 * target)
        )
    if name == "slowloris":
        worst = None if cut is None or served is None else max(cut, served)
        measured = f"all cut off: {seconds(cut)}, legitimate client served: {seconds(served)}"
    else:
        worst = served
        measured = f"legitimate client served: {seconds(served)} ({seconds(cut)} to cut all)"
    ok = worst is not None and worst < target
    return Row(name, transport, f"{attackers} tricklers; {measured}", f"< {target:g} s", ok)


def run_honest(transport: str, sizes: Sizes, folder: Path) -> Row:
    timeout = sizes.honest_timeout
    flags = ["--timeout", f"{timeout:g}", "--max-message-size", str(2 * sizes.data_bytes)]
    problems: list[str] = []
    with serving([*TRANSPORTS[transport], "--handler", "sink", *flags], folder) as server:
        commands = math.ceil(3 * timeout / (timeout - 1))
        with smtplib.SMTP(HOST, server.port, timeout=3 * timeout) as client:
            client.ehlo()
            for _ in range(commands):
                time.sleep(timeout - 1)  # the honest client's own pace
                code, _ = client.noop()
                if code != 250:
                    problems.append(f"NOOP got {code}")
                    break
        start = time.monotonic()
        reply = slow_data(server.port, sizes.data_bytes, sizes.data_rate)
        took = time.monotonic() - start
        if not reply.startswith(b"250 "):
            problems.append(f"DATA got {reply[:60]!r}")
    measured = (
        f"{commands} commands over {commands * (timeout - 1):g} s; "
        f"{sizes.data_bytes / 1e6:g} MB DATA in {took:.1f} s"
    )
    return Row(
        "honest", transport, measured + "".join(f"; {p}" for p in problems), "served", not problems
    )


def read_reply(f: BinaryIO) -> bytes:
    """One whole (multi-line) reply; b"" once the server has closed."""
    text = b""
    while True:
        line = f.readline()
        text += line
        if len(line) < 4 or line[3:4] != b"-":
            return text


@contextlib.contextmanager
def in_data(port: int) -> Iterator[tuple[socket.socket, BinaryIO]]:
    """A raw session past DATA's 354, ready for the message text."""
    with socket.create_connection((HOST, port), timeout=60) as sock, sock.makefile("rb") as f:
        read_reply(f)
        for command in (b"EHLO x", b"MAIL FROM:<a@b.example>", b"RCPT TO:<c@d.example>", b"DATA"):
            sock.sendall(command + b"\r\n")
            if read_reply(f)[:1] not in (b"2", b"3"):
                raise RuntimeError(f"{command.decode()} refused")
        yield sock, f


def slow_data(port: int, size: int, rate: float) -> bytes:
    """A message of `size` bytes sent at `rate` bytes/s; the reply to its end."""
    chunk = (b"y" * 998 + b"\r\n") * 64
    with in_data(port) as (sock, f):
        start, sent = time.monotonic(), 0
        while sent < size:
            sock.sendall(chunk)
            sent += len(chunk)
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        sock.sendall(b".\r\n")
        return read_reply(f)


STUCK_MODULE = """
import sys
import threading

from smtpkit.handlers import Accept, Handler


class Stuck(Handler):
    def data(self, message):
        print("stuck hook entered", file=sys.stderr, flush=True)
        threading.Event().wait()
        return Accept()
"""


def run_stuck(transport: str, sizes: Sizes, folder: Path) -> Row:
    (folder / "stuckhook.py").write_text(textwrap.dedent(STUCK_MODULE))
    grace = sizes.grace_period
    flags = ["--handler", "stuckhook:Stuck", "--grace-period", f"{grace:g}"]
    server = Server([*TRANSPORTS[transport], *flags], folder)
    status: int | None = None
    took: float | None = None
    try:
        with in_data(server.port) as (sock, _):
            sock.sendall(MESSAGE + b".\r\n")
            deadline = time.monotonic() + 30
            while "stuck hook entered" not in server.log() and time.monotonic() < deadline:
                time.sleep(0.05)
            start = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = server.proc.wait(grace + sizes.stuck_bound + 30)
                took = time.monotonic() - start
    finally:
        server.stop()
    ok = status == 0 and took is not None and took <= grace + sizes.stuck_bound
    measured = f"exit {status} after {seconds(took)} (grace {grace:g} s)"
    return Row(
        "stuck-hook", transport, measured, f"exit 0 within {grace + sizes.stuck_bound:g} s", ok
    )


def tls_files(folder: Path) -> tuple[Path, Path, ssl.SSLContext]:
    """A certificate for localhost from a throwaway CA (trustme, in the test extra): the
    server's certificate and key files, and a client context that trusts them."""
    import trustme

    ca = trustme.CA()
    issued = ca.issue_cert("localhost", HOST)
    cert, key = folder / "cert.pem", folder / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return cert, key, client


def tls_session(port: int, context: ssl.SSLContext) -> bool:
    """STARTTLS, then a transaction. True when the message was accepted."""
    try:
        with smtplib.SMTP(HOST, port, timeout=30) as client:
            client.starttls(context=context)
            return client.sendmail("a@b.example", ["c@d.example"], MESSAGE) == {}
    except (OSError, smtplib.SMTPException):
        return False


def run_tls_relay(transport: str, sizes: Sizes, folder: Path) -> Row:
    cert, key, context = tls_files(folder)
    upstream_flags = ["--transport", "asyncio", "--no-uvloop", "--handler", "sink"]
    with serving(upstream_flags, folder) as upstream:
        flags = ["--handler", "relay", "--relay", f"{HOST}:{upstream.port}"]
        flags += ["--relay-starttls", "off", "--tls-cert", str(cert), "--tls-key", str(key)]
        with serving([*TRANSPORTS[transport], *flags, "--hostname", "localhost"], folder) as server:
            baseline = server.sockets()  # its listeners and its own plumbing
            with concurrent.futures.ThreadPoolExecutor(sizes.tls_concurrency) as pool:
                sessions = range(sizes.tls_sessions)
                results = list(pool.map(lambda _: tls_session(server.port, context), sessions))
            deadline = time.monotonic() + 30  # the server may linger a little for each close
            while server.sockets() > baseline and time.monotonic() < deadline:
                time.sleep(0.1)
            left = server.sockets() - baseline
    failed = results.count(False)
    measured = f"{sizes.tls_sessions} sessions, {failed} failed: {left} socket(s) left open"
    return Row("tls-relay", transport, measured, "0 left open", left == 0 and not failed)


#: scenario name -> what runs it, for one transport.
SCENARIOS: dict[str, Callable[[str, Sizes, Path], Row]] = {
    "slowloris": lambda transport, sizes, folder: run_trickle(
        "slowloris", transport, sizes, folder
    ),
    "stress": lambda transport, sizes, folder: run_trickle("stress", transport, sizes, folder),
    "honest": run_honest,
    "stuck-hook": run_stuck,
    "tls-relay": run_tls_relay,
}


def table(rows: list[Row]) -> str:
    lines = ["| scenario | transport | measured | target | result |", "|---|---|---|---|---|"]
    for r in rows:
        result = "ok" if r.ok else "**missed**"
        lines.append(f"| {r.scenario} | {r.transport} | {r.measured} | {r.target} | {result} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small variant, for smoke tests")
    parser.add_argument(
        "--transports", nargs="+", choices=list(TRANSPORTS), default=DEFAULT_TRANSPORTS
    )
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    # The attackers' sockets, and the server's (a child inherits the limit).
    raise_open_files_limit(2 * max(sizes.slowloris_attackers, sizes.stress_attackers) + 1024)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="smtpkit-attack-") as tmp:
        for scenario in args.scenarios:
            for transport in args.transports:
                start = time.monotonic()
                try:
                    row = SCENARIOS[scenario](transport, sizes, Path(tmp))
                except Exception as exc:  # one scenario's failure must not hide the others
                    why = (str(exc) or type(exc).__name__).splitlines()[0]
                    row = Row(scenario, transport, f"error: {why}", "-", False)
                took = time.monotonic() - start
                print(f"{scenario} on {transport}: {row.measured} ({took:.0f} s)", file=sys.stderr)
                rows.append(row)
    print(table(rows))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
