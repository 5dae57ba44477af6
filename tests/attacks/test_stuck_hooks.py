"""Hooks that never return, on every transport and loop: the worker pool is exhausted, yet
clients get answers, the pool never grows without bound, and shutdown always ends (exit 0).

A stuck hook here waits on an Event that only the test's end sets, so that abandoned worker
threads do not outlive the test.
"""

from __future__ import annotations

import signal
import subprocess
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import Calls, Peer, Process, Transport, in_thread, open_sockets, wait_until

from smtpkit.handlers import Accept, Handler, Message

pytestmark = pytest.mark.timeout(90)

#: stop() may take the grace period plus this long (the cut-off, the sessions' 421s).
STOP_BOUND = 3.0


@pytest.fixture
def released() -> Iterator[threading.Event]:
    """What stuck hooks wait for: set only when the test is over."""
    event = threading.Event()
    yield event
    event.set()


def test_stuck_hooks_exhaust_the_pool(transport: Transport, released: threading.Event) -> None:
    # workers=2, every data() stuck: two clients get 451 4.3.0 once hook_timeout passes, and
    # their two workers are abandoned (and replaced). Past that limit of abandoned workers a
    # hook gets 451 at once, without running; the hooks nobody overrode (answered inline)
    # still serve clients; and stop() ends in time although two hooks are still stuck.
    workers, grace_period = 2, 0.5
    calls = Calls()

    class Stuck(Handler):
        def data(self, message: Message) -> Accept:
            calls.add("data")
            released.wait()
            return Accept()

    server = transport.server(
        Stuck, workers=workers, hook_timeout=0.5, grace_period=grace_period
    ).start()
    stopper: threading.Thread | None = None
    try:
        address = (server.host, server.port)
        sockets_before = open_sockets()
        for _ in range(workers):
            with Peer(address) as p:
                p.hello()
                assert p.send_message().startswith(b"451 4.3.0")
                assert p.command(b"NOOP") == b"250 2.0.0 Ok\r\n"  # the session goes on
        assert len(calls.of("data")) == workers
        with Peer(address) as p:  # the abandoned limit is reached: refused without running
            p.hello()
            assert p.send_message().startswith(b"451 4.3.0")
            assert p.command(b"QUIT").startswith(b"221")
        assert len(calls.of("data")) == workers, "a hook ran past the abandoned-worker limit"
        with Peer(address) as p:  # the inline hooks still serve
            p.hello()
            assert p.command(b"MAIL FROM:<a@b.example>").startswith(b"250")
            assert p.command(b"RCPT TO:<c@d.example>").startswith(b"250")
            assert p.command(b"RSET").startswith(b"250")
            assert p.command(b"QUIT").startswith(b"221")
        assert wait_until(lambda: open_sockets() <= sockets_before), "sockets left open"
        stopper = in_thread(server.stop)
        stopper.join(grace_period + STOP_BOUND)
        assert not stopper.is_alive(), "stop() waited for the stuck hooks"
    finally:
        released.set()
        if stopper is None:
            server.stop()


def test_stuck_hook_in_flight_at_shutdown(transport: Transport, released: threading.Event) -> None:
    # A hook stuck (hook_timeout far away) while stop() is called: the client is told 421
    # 4.3.2 after the grace period, and stop() returns although the hook never does.
    grace_period = 0.5
    calls = Calls()

    class Stuck(Handler):
        def data(self, message: Message) -> Accept:
            calls.add("data")
            released.wait()
            return Accept()

    server = transport.server(Stuck, grace_period=grace_period).start()
    with Peer((server.host, server.port)) as p:
        p.hello()
        p.start_data()
        p.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        calls.wait("data")
        stopper = in_thread(server.stop)
        stopper.join(grace_period + STOP_BOUND)
        assert not stopper.is_alive(), "stop() waited for the stuck hook"
        assert p.reply().startswith(b"421 4.3.2")
        assert p.closed()


STUCK_MODULE = """
import sys
import threading

from smtpkit.handlers import Accept, Handler


class Stuck(Handler):
    def data(self, message):
        print("stuck hook entered", file=sys.stderr, flush=True)
        threading.Event().wait()  # forever
        return Accept()
"""


def test_sigterm_with_a_stuck_hook_exits_0(
    transport: Transport, tmp_path: Path, smtpkit: Callable[..., Process]
) -> None:
    # `smtpkit serve` whose hook never returns: SIGTERM still ends it, with exit status 0,
    # within the grace period plus a small bound (no second signal needed).
    (tmp_path / "stuckapp.py").write_text(textwrap.dedent(STUCK_MODULE))
    grace_period = 1.0
    server = smtpkit(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--handler",
        "stuckapp:Stuck",
        "--grace-period",
        str(grace_period),
        *transport.cli_args,
    )
    with Peer((server.host, server.port)) as p:
        p.hello()
        p.start_data()
        p.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        assert wait_until(lambda: "stuck hook entered" in server.log()), server.log()
        server.proc.send_signal(signal.SIGTERM)
        assert p.reply().startswith(b"421 4.3.2")
        assert p.closed()
    try:
        status = server.proc.wait(grace_period + 5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {grace_period + 5} s after SIGTERM:\n{server.log()}")
    assert status == 0, server.log()
