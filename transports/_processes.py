"""`--processes N`: N forked server processes on the same ports (SO_REUSEPORT).

The kernel spreads new connections across the processes' listeners, so a server can use every
core. The parent only supervises: it fixes the ports first (so that "port 0" means one free
port for all), forks, forwards SIGTERM/SIGINT (and SIGHUP: reload), and reaps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import types
from collections.abc import Callable

from ._listen import Address

__all__ = ["run_processes"]

log = logging.getLogger("smtpkit")


def _reserve(addresses: tuple[Address, ...]) -> tuple[list[Address], list[socket.socket]]:
    """Resolve port 0 to a real port by binding (without listening) with SO_REUSEPORT."""
    resolved: list[Address] = []
    holders: list[socket.socket] = []
    for host, port in addresses:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        holders.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        resolved.append((host, sock.getsockname()[1]))
    return resolved, holders


def run_processes(
    count: int,
    listen: tuple[Address, ...],
    tls_listen: tuple[Address, ...],
    child: Callable[[tuple[Address, ...], tuple[Address, ...]], int],
    *,
    started: Callable[[], None] | None = None,
) -> int:
    """Fork `count` children running `child(listen, tls_listen)` with the resolved ports;
    return 0 after a requested shutdown, else the first failing child's status. `started()`
    runs in the parent once every child is forked; if it raises, the children are stopped
    and the exception goes on. SIGHUP reaches every child; until a child installs its own
    handler, the one in force before this call handles it (`smtpkit serve`'s remembers it)."""
    plain, plain_holders = _reserve(listen)
    secure, secure_holders = _reserve(tls_listen)
    children: dict[int, int] = {}  # pid -> index
    stopping = False

    def forward(signum: int, frame: types.FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def forward_hup(signum: int, frame: types.FrameType | None) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, forward_hup)
    status = 0
    try:
        for index in range(count):
            pid = os.fork()
            if pid == 0:  # the child: serve, never return into the parent's code
                code = 1
                try:
                    for sig, handler in previous.items():  # SIGHUP: until it can reload
                        signal.signal(sig, handler)
                    for sock in (*plain_holders, *secure_holders):
                        sock.close()
                    code = child(tuple(plain), tuple(secure))
                except BaseException:
                    log.exception("server process %d failed", index)
                finally:
                    logging.shutdown()
                    os._exit(code)
            children[pid] = index
        log.info("started %d server processes: %s", count, " ".join(map(str, children)))
        for sock in (*plain_holders, *secure_holders):
            sock.close()
        if started is not None:
            try:
                started()
            except BaseException:
                forward(signal.SIGTERM, None)
                for pid in list(children):
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, 0)
                raise
        while children:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            index = children.pop(pid, -1)
            code = os.waitstatus_to_exitcode(wait_status)
            if code != 0 and not stopping:
                log.error("server process %s exited with %d; stopping the others", index, code)
                status = status or (code if code > 0 else 1)
                forward(signal.SIGTERM, None)
    finally:
        for sock in (*plain_holders, *secure_holders):
            sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
