"""Attacks on the deadlines, on every transport and loop: slowloris, never-ending and slow
DATA, a client that never reads, and a crowd that puts the server under stress.

Each attack is timed against the deadline it attacks (seconds, kept small), and after each the
server must serve a legitimate client again with every slot and socket of the attack freed.
Honest clients, slow but within the rules, are not cut off.
"""

from __future__ import annotations

import contextlib
import itertools
import select
import socket
import time
from collections.abc import Iterable

import pytest
from support import (
    WAIT,
    Peer,
    Transport,
    active_sessions,
    assert_recovered,
    code,
    open_sockets,
    vm_rss,
    wait_until,
)

from smtp_core import Config
from smtpkit.handlers import SinkHandler

pytestmark = pytest.mark.timeout(90)

#: Every deadline in this file is a few seconds; an attack may take this many deadlines before
#: the test calls it a failure (the server's watchdog runs at a coarser resolution than ours).
GIVE_UP = 3


def trickle(
    attackers: list[Peer], line: bytes, interval: float, give_up: float
) -> list[bytes | None]:
    """Send each attacker's `line` one byte every `interval` seconds, `line`'s last byte again
    and again once it is spent, until the server closes every connection; give up `give_up`
    seconds after the first byte. Returns what the server said to each before it closed the
    connection, None for the ones still open."""
    said = {a.sock: bytearray() for a in attackers}
    live = {a.sock for a in attackers}
    start = next_byte = time.monotonic()
    for sent in itertools.count():
        if not live or time.monotonic() - start > give_up:
            break
        byte = line[min(sent, len(line) - 1) :][:1]
        for sock in live:
            with contextlib.suppress(OSError):  # cut off: reading says so
                sock.send(byte)
        next_byte += interval
        while live and (pause := next_byte - time.monotonic()) > 0:
            readable, _, _ = select.select(list(live), [], [], pause)
            for sock in readable:
                try:
                    chunk = sock.recv(4096)
                except OSError:
                    chunk = b""
                said[sock] += chunk
                if not chunk:
                    live.discard(sock)
    return [None if a.sock in live else bytes(said[a.sock]) for a in attackers]


def paced(peer: Peer, chunks: Iterable[bytes], interval: float) -> bytes:
    """Send `chunks` one every `interval` seconds; stop at the first thing the server says
    (returned with all that follows until it closes) or when the chunks run out (b"")."""
    for chunk in chunks:
        readable, _, _ = select.select([peer.sock], [], [], interval)
        if readable:
            return b"".join(peer.replies_until_closed())
        try:
            peer.send(chunk)
        except OSError:
            return b"".join(peer.replies_until_closed())
    return b""


def test_slowloris_past_max_connections(transport: Transport) -> None:
    # Attackers take every slot and trickle a command line that never ends, a byte every
    # quarter timeout: each must be cut off a timeout after its line's first byte, however
    # many bytes follow. More attackers than slots: the rest are refused meanwhile.
    timeout, slots = 2.0, 10
    with transport.serve(SinkHandler, timeout=timeout, max_connections=slots) as server:
        sockets_before = open_sockets()
        attackers = [Peer((server.host, server.port)) for _ in range(slots + 5)]
        try:
            greetings = [a.reply() for a in attackers]
            admitted = [
                a for a, g in zip(attackers, greetings, strict=True) if g.startswith(b"220 ")
            ]
            refused = [g for g in greetings if not g.startswith(b"220 ")]
            assert refused, "the attack never filled the slots"
            assert all(g.startswith(b"421 4.7.0") for g in refused), refused
            said = trickle(admitted, b"NOOP x", timeout / 4, GIVE_UP * timeout)
            kept = said.count(None)
            assert not kept, f"{kept} of {len(admitted)} trickling attackers still connected"
            assert all(s and s.startswith(b"421 4.4.2") for s in said), said
        finally:
            for a in attackers:
                a.close()
        assert_recovered(server, sockets_before)


def test_honest_slow_client_is_not_cut_off(transport: Transport) -> None:
    # One whole command every (timeout - 0.5) s, for three timeouts: never a 421.
    timeout = 1.5
    with (
        transport.serve(SinkHandler, timeout=timeout) as server,
        Peer((server.host, server.port)) as p,
    ):
        p.hello()
        for _ in range(round(3 * timeout / (timeout - 0.5))):
            readable, _, _ = select.select([p.sock], [], [], timeout - 0.5)
            assert not readable, p.reply()
            assert p.command(b"NOOP") == b"250 2.0.0 Ok\r\n"
        # A command line in two halves, within the timeout, is honest too.
        p.send(b"NO")
        readable, _, _ = select.select([p.sock], [], [], timeout / 3)
        assert not readable, p.reply()
        assert p.command(b"OP") == b"250 2.0.0 Ok\r\n"
        assert p.send_message().startswith(b"250 ")
        assert p.command(b"QUIT").startswith(b"221")


def test_never_ending_data(transport: Transport) -> None:
    # Whole lines, fast (far above the minimum rate), that never reach the end of data. Past
    # the size limit the content is counted and discarded, and it buys no more time: the
    # session is cut off once its allowance (data_timeout, plus max_message_size at the
    # minimum rate) is spent, although every line is complete and it never idles.
    data_timeout, size, rate = 1.0, 1000, 1000
    options = {"timeout": 10.0, "data_timeout": data_timeout, "min_data_rate": rate}
    config = Config(max_message_size=size)
    with transport.serve(SinkHandler, config=config, **options) as server:
        sockets_before = open_sockets()
        with Peer((server.host, server.port)) as p:
            p.hello()
            p.start_data()
            line = b"x" * 998 + b"\r\n"
            rounds = round(GIVE_UP * (data_timeout + size / rate) / 0.02)
            said = paced(p, itertools.repeat(line * 4, rounds), 0.02)
            assert said.startswith(b"421 4.4.2"), said[:200]
        assert_recovered(server, sockets_before)


def test_data_below_the_minimum_rate(transport: Transport) -> None:
    # 50 bytes every 0.25 s (200 bytes/s) against a minimum of 1000 bytes/s: whole lines, so
    # the idle timeout is never reached; the rate ends it once the head start (data_timeout)
    # is spent, as Postfix's smtpd_min_data_rate does.
    timeout = 1.5
    options = {"timeout": timeout, "data_timeout": timeout, "min_data_rate": 1000}
    with transport.serve(SinkHandler, **options) as server:
        sockets_before = open_sockets()
        with Peer((server.host, server.port)) as p:
            p.hello()
            p.start_data()
            rounds = round(GIVE_UP * 2 * timeout / 0.25)
            said = paced(p, itertools.repeat(b"y" * 48 + b"\r\n", rounds), 0.25)
            assert said and code(said) == 421, said[:200]
        assert_recovered(server, sockets_before)


def test_data_above_the_minimum_rate_is_accepted(transport: Transport) -> None:
    # 500 bytes every 0.1 s (5000 bytes/s) against a minimum of 1000 bytes/s, for three times
    # the head start (data_timeout): slow, but honest, so never cut off.
    timeout = 1.5
    options = {"timeout": timeout, "data_timeout": timeout, "min_data_rate": 1000}
    with (
        transport.serve(SinkHandler, **options) as server,
        Peer((server.host, server.port)) as p,
    ):
        p.hello()
        p.start_data()
        rounds = round(3 * timeout / 0.1)
        assert paced(p, itertools.repeat(b"z" * 498 + b"\r\n", rounds), 0.1) == b""
        p.send(b".\r\n")
        assert p.reply().startswith(b"250 ")


def test_client_that_never_reads(transport: Transport) -> None:
    # Every slot taken by a client that pipelines commands and never reads a reply. The server
    # stops reading it (its replies have nowhere to go), then, a timeout later, cuts it off
    # and frees the slot; memory stays flat meanwhile.
    timeout, slots = 1.5, 2
    flood = b"NOOP\r\nRSET\r\nHELP\r\n" * 4096
    with transport.serve(SinkHandler, timeout=timeout, max_connections=slots) as server:
        sockets_before = open_sockets()
        rss_before = vm_rss()
        attackers = [Peer((server.host, server.port), rcvbuf=4096) for _ in range(slots)]
        try:
            for a in attackers:
                # Admitted first: a connection still in the listen backlog also takes the
                # flood (into the kernel's buffers), and it would only count once accepted.
                assert a.reply().startswith(b"220 ")
                a.sock.setblocking(False)
            stalled = set[socket.socket]()
            deadline = time.monotonic() + WAIT
            while len(stalled) < slots and time.monotonic() < deadline:
                for a in attackers:
                    if a.sock not in stalled:
                        try:
                            a.sock.send(flood)
                        except BlockingIOError:
                            stalled.add(a.sock)
                        except OSError:  # cut off already: it stalled, then timed out
                            stalled.add(a.sock)
            assert len(stalled) == slots, "the server read everything it could not answer"
            grown = vm_rss() - rss_before
            assert grown < 30 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MB"
            cut_off = wait_until(lambda: active_sessions(server) == 0, GIVE_UP * timeout + 1)
            assert cut_off, f"{active_sessions(server)} non-reading client(s) still held a slot"
        finally:
            for a in attackers:
                a.reset()
        assert_recovered(server, sockets_before)


def test_stress_shrinks_the_running_deadlines(transport: Transport) -> None:
    # Two idle clients first, the timeout long; then more than 80% of the slots in use: every
    # deadline shrinks to stress_timeout, the two that were already running included.
    slots, stress_timeout = 10, 1.0
    options = {"timeout": 60.0, "max_connections": slots, "stress_timeout": stress_timeout}
    with transport.serve(SinkHandler, **options) as server:
        sockets_before = open_sockets()
        address = (server.host, server.port)
        early = [Peer(address) for _ in range(2)]
        crowd: list[Peer] = []
        try:
            for p in early:
                p.hello()
            crowd = [Peer(address) for _ in range(slots - 1 - len(early))]
            for p in crowd:
                assert p.reply().startswith(b"220 ")
            said = trickle(early + crowd, b"", 0.5, GIVE_UP * stress_timeout + 2)
            kept = said.count(None)
            assert not kept, f"{kept} idle clients kept their slot under stress"
            assert all(s and s.startswith(b"421 4.4.2") for s in said), said
        finally:
            for p in early + crowd:
                p.close()
        assert_recovered(server, sockets_before)
