"""Server memory under large and never-ending messages, smtpkit against aiosmtpd in one run.

    python3 benchmarks/memory.py [--servers ...] [--scenarios ...] [--json FILE]

Each scenario runs every server on a fresh process and port (loopback only); the peak is the
server's high-water RSS (VmHWM, /proc), the idle figure its RSS before the first client.

- never-ending: 50 clients each send 31 MiB of DATA text and never the final dot; the peak is
  read once the server has taken in all it will (its CPU time stops moving).
- maildir-100mb: 8 clients each send a 100 MB message (--max-message-size 209715200) to the
  maildir handler; every stored file must be byte for byte what was sent, after the
  Received: header. aiosmtpd has no maildir handler here: it runs its sink, for the memory.
- burst-512k: 50 clients reach DATA, then all send a 512 KiB message at once; the figure is
  peak minus idle RSS against the 25 MiB of content.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import procstat

HERE = Path(__file__).resolve().parent
PY = sys.executable
HOST = "127.0.0.1"
HOSTNAME = "bench.localhost"
MIB = 1 << 20
LINE = b"x" * 78 + b"\r\n"
BLOCK = LINE * (MIB // len(LINE)) + LINE[: MIB % len(LINE) - 2] + b"\r\n"  # 1 MiB of lines


@dataclass(frozen=True)
class Server:
    name: str
    command: Callable[[int, Path, tuple[str, ...]], list[str]]


def smtpkit(transport: str) -> Server:
    def command(port: int, work: Path, extra: tuple[str, ...]) -> list[str]:
        return [
            PY, "-m", "smtpkit", "serve", "--listen", f"{HOST}:{port}", "--hostname", HOSTNAME,
            "--log-level", "WARNING", "--transport", transport, "--spool-dir", str(work / "spool"),
            *extra,
        ]  # fmt: skip

    return Server(f"smtpkit-{transport}", command)


def aiosmtpd(port: int, work: Path, extra: tuple[str, ...]) -> list[str]:
    limit = "209715200" if "--max-message-size" in extra else "33554432"
    return [PY, str(HERE / "aiosmtpd_server.py"), "--port", str(port), "--data-size-limit", limit]


SERVERS = {
    s.name: s for s in (smtpkit("asyncio"), smtpkit("threads"), Server("aiosmtpd", aiosmtpd))
}


@dataclass
class Result:
    server: str
    scenario: str
    idle_mb: float = 0.0
    peak_mb: float = 0.0
    seconds: float = 0.0
    notes: dict[str, object] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start(
    server: Server, work: Path, extra: tuple[str, ...]
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "SMTPKIT_LOOP": "asyncio", "PYTHONPATH": str(HERE)}
    log = open(work / f"{server.name}.log", "wb")  # noqa: SIM115 - the child writes to it
    proc = subprocess.Popen(
        server.command(port, work, extra), stdout=log, stderr=subprocess.STDOUT, env=env
    )
    log.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1) as sock:
                if sock.makefile("rb").readline().startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return proc, port
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{server.name} did not start: {(work / f'{server.name}.log').read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def reply(reader: object) -> bytes:
    while True:
        line: bytes = reader.readline()  # type: ignore[attr-defined]
        if not line or line[3:4] != b"-":
            return line


def open_data(port: int) -> tuple[socket.socket, object]:
    """A session at the 354, ready for content."""
    sock = socket.create_connection((HOST, port), timeout=600)
    reader = sock.makefile("rb")
    assert reply(reader).startswith(b"220")
    for command in (
        b"EHLO bench",
        b"MAIL FROM:<a@bench.localhost>",
        b"RCPT TO:<b@bench.localhost>",
    ):
        sock.sendall(command + b"\r\n")
        assert reply(reader).startswith(b"250"), command
    sock.sendall(b"DATA\r\n")
    assert reply(reader).startswith(b"354")
    return sock, reader


def quiet(pid: int, still: float = 1.0) -> None:
    """Wait until the server's CPU time stops moving: it has taken in what it was sent."""
    last = procstat.cpu_seconds(pid)
    while True:
        time.sleep(still)
        now = procstat.cpu_seconds(pid)
        if now - last < 0.02:
            return
        last = now


def in_threads(count: int, work: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            work(n)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def never_ending(server: Server, work: Path) -> Result:
    clients, mib = 50, 31
    proc, port = start(server, work, ("--handler", "sink"))
    idle = procstat.rss_kib(proc.pid)
    began = time.monotonic()
    held: list[socket.socket] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        sock, _ = open_data(port)
        for _ in range(mib):
            sock.sendall(BLOCK)
        with lock:
            held.append(sock)

    try:
        in_threads(clients, client)
        quiet(proc.pid)
        peak = procstat.peak_rss_kib(proc.pid)
    finally:
        for sock in held:
            sock.close()
        stop(proc)
    return Result(server.name, "never-ending", idle / 1024, peak / 1024, time.monotonic() - began)


def message_of(n: int, size: int) -> bytes:
    """About `size` bytes of whole lines, told apart by `n`."""
    head = f"Subject: message {n}\r\nX-Client: {n}\r\n\r\n".encode()
    return head + LINE * ((size - len(head)) // len(LINE))


def maildir_100mb(server: Server, work: Path) -> Result:
    clients, size = 8, 100_000_000
    maildir = work / "maildir"
    extra = ("--handler", "maildir", "--maildir", str(maildir), "--max-message-size", "209715200")
    proc, port = start(server, work, extra)
    idle = procstat.rss_kib(proc.pid)
    began = time.monotonic()
    replies: dict[int, bytes] = {}

    def client(n: int) -> None:
        sock, reader = open_data(port)
        with sock:
            sock.sendall(message_of(n, size) + b".\r\n")
            replies[n] = reply(reader)

    try:
        in_threads(clients, client)
        peak = procstat.peak_rss_kib(proc.pid)
    finally:
        stop(proc)
    result = Result(server.name, "maildir-100mb", idle / 1024, peak / 1024)
    result.seconds = time.monotonic() - began
    result.notes["accepted"] = sum(r.startswith(b"250") for r in replies.values())
    if server.name.startswith("smtpkit"):
        result.notes["files_equal"] = files_equal(maildir / "new", clients, size)
    return result


def files_equal(folder: Path, clients: int, size: int) -> bool:
    """Each client's file is its message exactly, after the Received: header."""
    found = 0
    for path in folder.iterdir():
        content = path.read_bytes()
        at = content.find(b"Subject: message ")
        n = int(content[at + 17 : content.index(b"\r\n", at)])
        if content[at:] != message_of(n, size):
            return False
        found += 1
    return found == clients


def burst_512k(server: Server, work: Path) -> Result:
    clients, size = 50, 512 * 1024
    proc, port = start(server, work, ("--handler", "sink"))
    idle = procstat.rss_kib(proc.pid)
    sessions = [open_data(port) for _ in range(clients)]
    go = threading.Barrier(clients)
    began = time.monotonic()
    replies: list[bytes] = []

    def client(n: int) -> None:
        sock, reader = sessions[n]
        message = message_of(n, size) + b".\r\n"
        go.wait()
        sock.sendall(message)
        replies.append(reply(reader))

    try:
        in_threads(clients, client)
        peak = procstat.peak_rss_kib(proc.pid)
    finally:
        for sock, _ in sessions:
            sock.close()
        stop(proc)
    result = Result(server.name, "burst-512k", idle / 1024, peak / 1024)
    result.seconds = time.monotonic() - began
    grew = (peak - idle) / 1024
    result.notes = {
        "accepted": sum(r.startswith(b"250") for r in replies),
        "growth_mb": round(grew, 1),
        "growth_per_content": round(grew * MIB / (clients * size), 2),
    }
    return result


SCENARIOS = {
    "never-ending": never_ending,
    "maildir-100mb": maildir_100mb,
    "burst-512k": burst_512k,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", nargs="+", choices=list(SERVERS), default=list(SERVERS))
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    results = []
    for scenario in args.scenarios:
        for name in args.servers:
            with tempfile.TemporaryDirectory(prefix="smtpkit-memory-") as tmp:
                result = SCENARIOS[scenario](SERVERS[name], Path(tmp))
            results.append(result)
            print(
                f"{scenario:14} {name:16} idle {result.idle_mb:7.1f} MB  peak"
                f" {result.peak_mb:8.1f} MB  {result.seconds:6.1f} s  {result.notes}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))


if __name__ == "__main__":
    main()
