"""Open N idle SMTP sessions (greeting + EHLO) and report the server's RSS per session.

Why our own client: smtp-source cannot hold sessions open without sending mail. Each session
reads the 220, sends EHLO, reads the whole 250 reply and then stays idle, which is what a
server holds for a slow or parked client. RSS is read from /proc for the server's process tree:
(after - before) / N, where "before" follows a short warm-up so that one-off costs (lazy
imports, first-connection caches) are not charged to the sessions.

    python3 benchmarks/idle_clients.py --port 2525 --pid 1234 --sessions 10000

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass

from procstat import raise_open_files_limit, rss_kib

HOST = "127.0.0.1"  # loopback only, by design
MAX_REPLY_LINES = 100  # bound on a multi-line reply
SETTLE_SECONDS = 0.5  # let the server finish its per-session work before reading RSS

Session = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class SessionError(Exception):
    """A session did not get the reply it expected."""


@dataclass(frozen=True)
class IdleResult:
    sessions: int
    rss_before_kib: int
    rss_after_kib: int
    rss_per_session_kib: float
    open_seconds: float


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """The code of one (possibly multi-line) reply; the last line has a space after the code."""
    for _ in range(MAX_REPLY_LINES):
        line = await reader.readline()
        if len(line) < 4:
            raise SessionError(f"short or missing reply line: {line!r}")
        if line[3:4] != b"-":
            return line[:3]
    raise SessionError("reply longer than the line bound")


async def open_session(port: int) -> Session:
    """Connect, expect 220, send EHLO, expect 250."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        if (code := await read_reply(reader)) != b"220":
            raise SessionError(f"greeting {code!r}")
        writer.write(b"EHLO idle.localhost\r\n")
        if (code := await read_reply(reader)) != b"250":
            raise SessionError(f"EHLO answered {code!r}")
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def open_sessions(port: int, count: int, parallel: int, timeout: float) -> list[Session]:
    """Open ``count`` sessions, at most ``parallel`` handshakes at a time, within ``timeout``.

    Bounding the handshakes in flight keeps the server's listen queue from overflowing, which
    would measure SYN retries instead of the server.
    """
    gate = asyncio.Semaphore(parallel)

    async def one() -> Session:
        async with gate:
            return await open_session(port)

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    try:
        return list(await asyncio.wait_for(asyncio.gather(*tasks), timeout))
    except BaseException:
        for task in tasks:
            task.cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        close_all([s for s in done if isinstance(s, tuple)])
        raise


def close_all(sessions: list[Session]) -> None:
    """Drop the sessions without QUIT: the server's cost of idle sessions is what we measure."""
    for _, writer in sessions:
        writer.close()


async def measure(args: argparse.Namespace) -> IdleResult:
    """Warm up, read RSS, open the sessions, settle, read RSS again, close everything."""
    close_all(await open_sessions(args.port, args.warmup, args.parallel, args.timeout))
    await asyncio.sleep(SETTLE_SECONDS)
    before = rss_kib(args.pid)
    started = time.monotonic()
    sessions = await open_sessions(args.port, args.sessions, args.parallel, args.timeout)
    open_seconds = time.monotonic() - started
    try:
        await asyncio.sleep(SETTLE_SECONDS)
        after = rss_kib(args.pid)
    finally:
        close_all(sessions)
        await asyncio.sleep(0)  # let the transports run their close callbacks
    per_session = (after - before) / args.sessions
    return IdleResult(args.sessions, before, after, round(per_session, 2), round(open_seconds, 3))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="server port on 127.0.0.1")
    parser.add_argument("--pid", type=int, required=True, help="server pid, for its RSS")
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=16, help="sessions before the baseline")
    parser.add_argument("--parallel", type=int, default=256, help="handshakes in flight")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to open them all")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limit = raise_open_files_limit(args.sessions + args.warmup + 256)
    if limit < args.sessions + args.warmup:
        print(f"RLIMIT_NOFILE is {limit}, too low for {args.sessions} sessions", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(measure(args))
    except (OSError, SessionError, asyncio.TimeoutError) as exc:
        print(f"idle sessions failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
