"""Floods, on every transport and loop: of connections, of pipelined transactions, of junk
commands. The server refuses or ends what is past its limits, keeps its memory bounded, frees
every slot and socket, and serves a legitimate client afterwards.
"""

from __future__ import annotations

import contextlib

import pytest
from support import (
    Peer,
    Transport,
    assert_recovered,
    code,
    in_thread,
    open_sockets,
    vm_rss,
)

from smtpkit.handlers import SinkHandler

pytestmark = pytest.mark.timeout(90)

TRANSACTION = (
    b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nSubject: flood\r\n\r\nhi\r\n.\r\n"
)


def test_connection_flood(transport: Transport) -> None:
    # Ten times as many connections as slots, all at once and all kept open: exactly the
    # slots are served, the rest refused with 421; then half go with a reset, half politely.
    slots, flood = 20, 200
    with transport.serve(SinkHandler, max_connections=slots) as server:
        sockets_before = open_sockets()
        rss_before = vm_rss()
        peers: list[Peer] = []
        try:
            peers = [Peer((server.host, server.port)) for _ in range(flood)]
            greetings = [p.reply() for p in peers]
            served = [g for g in greetings if g.startswith(b"220 ")]
            refused = [g for g in greetings if not g.startswith(b"220 ")]
            assert len(served) == slots
            assert all(g.startswith(b"421 4.7.0") for g in refused), set(refused)
            grown = vm_rss() - rss_before
            assert grown < 30 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MB"
        finally:
            for i, p in enumerate(peers):
                if i % 2:
                    p.reset()
                else:
                    p.close()
        assert_recovered(server, sockets_before)


def test_pipelined_transaction_flood(transport: Transport) -> None:
    # 2000 transactions in one pipelined stream, read as they come: every reply, in order,
    # with memory flat.
    count = 2000
    with transport.serve(SinkHandler) as server:
        sockets_before = open_sockets()
        rss_before = vm_rss()
        with Peer((server.host, server.port)) as p:
            p.hello()
            sender = in_thread(lambda: p.send(TRANSACTION * count + b"QUIT\r\n"))
            replies = p.replies_until_closed()
            sender.join()
        assert [code(r) for r in replies] == [250, 250, 354, 250] * count + [221]
        grown = vm_rss() - rss_before
        assert grown < 30 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MB"
        assert_recovered(server, sockets_before)


def test_junk_command_flood_ends_the_session(transport: Transport) -> None:
    # A session that only idles with NOOP and RSET (Postfix's junk commands) is ended with a
    # 421 after a bounded number of them, not served forever.
    flood = 2000
    with transport.serve(SinkHandler) as server:
        sockets_before = open_sockets()
        with Peer((server.host, server.port)) as p:
            p.hello()

            def send() -> None:
                with contextlib.suppress(OSError):  # the server hangs up mid-flood
                    p.send(b"NOOP\r\nRSET\r\n" * (flood // 2) + b"QUIT\r\n")

            sender = in_thread(send)
            replies = p.replies_until_closed()
            sender.join()
        assert replies and code(replies[-1]) == 421, replies[-3:]
        assert len(replies) < flood, "every junk command was served"
        assert_recovered(server, sockets_before)
