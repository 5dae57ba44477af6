"""The anyio transport on both of its backends (asyncio on the stdlib loop and on uvloop),
over real sockets on 127.0.0.1.

The conformance suite covers what every transport shares; this file covers what is anyio's
own: the two backends, anyio's TLS, the server's own worker limiter, cancel-scope timeouts,
and shutdown from another thread and from a signal handler. Concurrency is proven with
events and barriers, never with sleeps.
"""

from __future__ import annotations

import signal
import smtplib
import socket
import subprocess
import sys
import threading

import anyio
import anyio.to_thread
import pytest
from support import WAIT, Peer, Tls, Transport, on_transports

from smtpkit.handlers import Accept, Handler, Message, SinkHandler

pytestmark = [pytest.mark.timeout(60), on_transports("anyio")]


def test_sendmail(transport: Transport) -> None:
    messages: list[bytes] = []

    class Keep(Handler):
        blocking = False

        def data(self, message: Message) -> Accept:
            messages.append(bytes(message))
            return Accept()

    with transport.serve(Keep) as server, smtplib.SMTP(*server.addresses[0]) as client:
        client.sendmail("a@b.example", ["c@d.example"], "Subject: x\r\n\r\nhi\r\n")
    assert len(messages) == 1
    assert messages[0].startswith(b"Received: from ")
    assert messages[0].endswith(b"Subject: x\r\n\r\nhi\r\n")


def test_starttls_and_smtps(transport: Transport, tls: Tls) -> None:
    versions: list[str | None] = []

    class Versions(Handler):
        blocking = False

        def data(self, message: Message) -> Accept:
            versions.append(self.session.tls_version)
            return Accept()

    opts = {"ssl_context": tls.server, "tls_listen": (("127.0.0.1", 0),)}
    with transport.serve(Versions, **opts) as server:
        host, port = server.addresses[0]
        with smtplib.SMTP(host, port) as client:
            client.starttls(context=tls.client)
            client.sendmail("a@b.example", ["c@d.example"], "Subject: tls\r\n\r\nhi\r\n")
        host, port = server.tls_addresses[0]
        with smtplib.SMTP_SSL(host, port, context=tls.client) as client:
            client.sendmail("a@b.example", ["c@d.example"], "Subject: smtps\r\n\r\nhi\r\n")
    assert len(versions) == 2
    assert all(v and v.startswith("TLS") for v in versions)


def test_failed_handshake_ends_only_that_session(transport: Transport, tls: Tls) -> None:
    closed = threading.Event()

    class Watch(SinkHandler):
        def close(self) -> None:
            closed.set()

    with transport.serve(Watch, ssl_context=tls.server, tls_handshake_timeout=0.5) as server:
        address = server.addresses[0]
        with Peer(address) as bad:  # garbage instead of a ClientHello
            bad.reply()
            bad.command(b"EHLO x")
            assert bad.command(b"STARTTLS").startswith(b"220")
            bad.send(b"this is not TLS\r\n" * 20)
            assert bad.reply() == b""
        assert closed.wait(WAIT)  # the close hook ran: the session was driven to its end
        closed.clear()
        with Peer(address) as slow:  # silence: the handshake times out
            slow.reply()
            slow.command(b"EHLO x")
            assert slow.command(b"STARTTLS").startswith(b"220")
            assert slow.reply() == b""
        assert closed.wait(WAIT)
        with Peer(address) as p:
            assert p.reply().startswith(b"220")  # the server still serves


def test_blocking_hooks_run_on_the_servers_own_workers(transport: Transport) -> None:
    # Three mail hooks block at once (a hook that blocks stalls neither the loop nor the other
    # sessions); meanwhile an async hook sees anyio's process-wide thread limiter unused.
    parked, release = threading.Barrier(3, timeout=WAIT), threading.Event()
    threads: set[threading.Thread] = set()
    default_in_use: list[float] = []

    class Blocking(Handler):
        def mail(self, sender: str, params: object) -> Accept:
            threads.add(threading.current_thread())
            if parked.wait() == 0:
                all_parked.set()
            assert release.wait(WAIT)
            return Accept()

        async def ehlo(self, hostname: str) -> Accept:
            if hostname == "probe":
                limiter = anyio.to_thread.current_default_thread_limiter()
                default_in_use.append(limiter.borrowed_tokens)
            return Accept()

    all_parked = threading.Event()
    with transport.serve(Blocking, workers=3) as server:
        peers = [Peer(server.addresses[0]) for _ in range(4)]
        try:
            for p in peers[:3]:
                assert p.reply().startswith(b"220")
                assert p.command(b"EHLO x").startswith(b"250")
                p.send(b"MAIL FROM:<a@b.example>\r\n")
            assert all_parked.wait(WAIT)  # three worker threads blocked at once
            probe = peers[3]
            assert probe.reply().startswith(b"220")
            assert probe.command(b"EHLO probe").startswith(b"250")  # the loop still serves
            release.set()
            for p in peers[:3]:
                assert p.reply().startswith(b"250")
        finally:
            release.set()
            for p in peers:
                p.close()
    assert len(threads) == 3
    assert not any(t.name.startswith("smtpkit-anyio") for t in threads)  # not the loop's
    assert default_in_use == [0]


def test_async_hooks_run_on_the_loop(transport: Transport) -> None:
    state: dict[str, anyio.Event] = {}

    class Async(Handler):
        async def mail(self, sender: str, params: object) -> Accept:
            event = state.setdefault("go", anyio.Event())
            if sender == "waiter@b.example":
                with anyio.fail_after(WAIT):
                    await event.wait()
            else:
                event.set()
            return Accept()

        async def rcpt(self, recipient: str, params: object) -> Accept:
            raise RuntimeError("boom")

    with transport.serve(Async) as server:
        a, b = Peer(server.addresses[0]), Peer(server.addresses[0])
        try:
            a.reply()
            a.command(b"EHLO a")
            a.send(b"MAIL FROM:<waiter@b.example>\r\n")  # parked until b's hook sets the event
            b.reply()
            b.command(b"EHLO b")
            assert b.command(b"MAIL FROM:<setter@b.example>").startswith(b"250")
            assert a.reply().startswith(b"250")
            assert a.command(b"RCPT TO:<c@d.example>").startswith(b"451 4.3.0")
        finally:
            a.close()
            b.close()


def test_idle_timeout(transport: Transport) -> None:
    closed = threading.Event()

    class Watch(SinkHandler):
        def close(self) -> None:
            closed.set()

    with transport.serve(Watch, timeout=0.5) as server, Peer(server.addresses[0]) as p:
        assert p.reply().startswith(b"220")
        assert p.command(b"EHLO x").startswith(b"250")
        assert p.reply().startswith(b"421 4.4.2")
        assert p.reply() == b""
        assert closed.is_set()  # the close hook ran before the socket was closed


def test_data_deadline(transport: Transport) -> None:
    # The per-command timeout is long; the whole message must arrive within data_timeout.
    options = {"timeout": 60, "data_timeout": 0.5}
    with transport.serve(SinkHandler, **options) as server, Peer(server.addresses[0]) as p:
        p.hello()
        p.start_data()
        p.send(b"Subject: x\r\n\r\nthe rest never comes")
        assert p.reply().startswith(b"421 4.4.2")
        assert p.reply() == b""


def test_shutdown_ends_idle_sessions_and_lets_transactions_finish(transport: Transport) -> None:
    in_hook, release = threading.Event(), threading.Event()

    class Slow(Handler):
        def data(self, message: Message) -> Accept:
            in_hook.set()
            assert release.wait(WAIT)
            return Accept()

    server = transport.server(Slow).start()
    address = server.addresses[0]
    with Peer(address) as idle, Peer(address) as busy:
        assert idle.reply().startswith(b"220")
        assert idle.command(b"EHLO idle").startswith(b"250")
        busy.hello()
        busy.start_data()
        busy.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        assert in_hook.wait(WAIT)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        assert idle.reply().startswith(b"421 4.3.2")  # woken from its read
        assert idle.reply() == b""
        with pytest.raises(OSError):  # no longer accepting
            socket.create_connection(address, timeout=WAIT).close()
        release.set()
        assert busy.reply().startswith(b"250")  # the transaction in flight finished
        assert busy.reply().startswith(b"421 4.3.2")  # then it was idle
        stopper.join(WAIT)
        assert not stopper.is_alive()


def test_grace_period_cuts_off(transport: Transport) -> None:
    in_hook, release = threading.Event(), threading.Event()

    class Stuck(Handler):
        def data(self, message: Message) -> Accept:
            in_hook.set()
            release.wait(WAIT)
            return Accept()

    server = transport.server(Stuck, grace_period=0.2).start()
    try:
        with Peer(server.addresses[0]) as p:
            p.hello()
            p.start_data()
            p.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
            assert in_hook.wait(WAIT)
            server.stop()  # returns although the hook is still stuck
            assert p.reply().startswith(b"421 4.3.2")
            assert p.reply() == b""
    finally:
        release.set()


def test_connection_limit(transport: Transport) -> None:
    with transport.serve(SinkHandler, max_connections=1) as server:
        address = server.addresses[0]
        with Peer(address) as first:
            assert first.reply().startswith(b"220")
            with Peer(address) as second:
                assert second.reply().startswith(b"421 4.7.0")
                assert second.reply() == b""
            assert first.command(b"QUIT").startswith(b"221")
            assert first.reply() == b""
        with Peer(address) as third:  # the slot was released
            assert third.reply().startswith(b"220")


def test_reset_mid_message_runs_close_hook(transport: Transport) -> None:
    closed = threading.Event()

    class Watch(SinkHandler):
        def close(self) -> None:
            closed.set()

    with transport.serve(Watch) as server:
        with Peer(server.addresses[0]) as p:
            p.hello()
            p.start_data()
            p.send(b"Subject: x\r\n\r\npartial")
            p.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        assert closed.wait(WAIT)
        with Peer(server.addresses[0]) as p:
            assert p.reply().startswith(b"220")


_SERVE = """
import logging, sys
from smtpkit.handlers import SinkHandler
from smtpkit.transports import ServerOptions, serve
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
options = ServerOptions(
    listen=(("127.0.0.1", 0),), anyio_backend=sys.argv[1], uvloop=sys.argv[2] == "uvloop"
)
serve(SinkHandler, options, transport="anyio")
"""


def test_sigterm_shuts_down_gracefully(transport: Transport) -> None:
    loop = "uvloop" if transport.uvloop else "stdlib"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE, transport.anyio_backend, loop],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        port = 0
        for line in proc.stderr:
            if "listening on" in line:
                port = int(line.rsplit(" ", 1)[1])
                break
        with Peer(("127.0.0.1", port)) as p:
            assert p.reply().startswith(b"220")
            assert p.command(b"EHLO x").startswith(b"250")
            proc.send_signal(signal.SIGTERM)
            assert p.reply().startswith(b"421 4.3.2")
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
