"""aiosmtpd 1.4 as the benchmark's baseline: a sink that answers "250 OK" to every message.

Why a script of our own rather than ``python -m aiosmtpd``: the stock command runs the server in a
``Controller`` thread and has no sink with a blocking hook, uvloop switch or fixed hostname. This
is the plain way an aiosmtpd user serves a handler, and the same work as smtpkit's ``sink``.

    python3 benchmarks/aiosmtpd_server.py --port 2525 [--uvloop] [--sleep-ms 20 --workers 32]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiosmtpd.smtp import SMTP
from procstat import raise_open_files_limit

HOST = "127.0.0.1"  # loopback only, by design: nothing else is ever a target
HOSTNAME = "bench.localhost"  # fixed, as aiosmtpd would otherwise call getfqdn() per session


class SinkHandler:
    """Discards the message; the cheapest handler aiosmtpd can run."""

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        return "250 OK"


class SleepyHandler:
    """Blocks for a fixed time in a thread pool, as an aiosmtpd user must do with blocking work.

    It mirrors smtpkit's plain ``def data()`` hook on a 32-thread worker pool.
    """

    def __init__(self, seconds: float, workers: int) -> None:
        self._seconds = seconds
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hook")

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, time.sleep, self._seconds)
        return "250 OK"


def make_handler(args: argparse.Namespace) -> object:
    """The sink, or its blocking twin when ``--sleep-ms`` is given."""
    if args.sleep_ms > 0:
        return SleepyHandler(args.sleep_ms / 1000, args.workers)
    return SinkHandler()


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    handler = make_handler(args)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=HOSTNAME, loop=loop, data_size_limit=args.data_size_limit),
        host=HOST,
        port=args.port,
        backlog=args.backlog,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--sleep-ms", type=float, default=0, help="block this long in DATA")
    parser.add_argument("--workers", type=int, default=32, help="threads for the blocking hook")
    parser.add_argument("--backlog", type=int, default=1024, help="listen backlog")
    parser.add_argument(
        "--data-size-limit", type=int, default=33554432, help="largest message (aiosmtpd's own)"
    )
    parser.add_argument("--max-open-files", type=int, default=20_000, help="RLIMIT_NOFILE")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    raise_open_files_limit(args.max_open_files)
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
