"""The spool end to end: content past the threshold is in a file while data() runs, and every
spool file is gone, and its bytes given back to the budget, on every path a message can take:
accepted, rejected, a hook that raises, refused content, the client leaving mid-message, a
timeout, a shutdown. Past the disk budget the message gets 452 4.3.1, and serving goes on."""

from __future__ import annotations

import smtplib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import WAIT, wait_until

from smtpkit.handlers import Accept, Handler, HookResult, Message, Reject
from smtpkit.transports import Server, ServerOptions, running_server

pytestmark = pytest.mark.timeout(60)

THRESHOLD = 4096
BIG = b"Subject: big\r\n\r\n" + b"0123456789abcdefghijklmnopqrstuvwxyz\r\n" * 2000  # ~76 KB


class Recorder(Handler):
    """Accepts; records where each message was while data() ran, and its content."""

    seen: list[tuple[str | None, bool, bytes]] = []

    def data(self, message: Message) -> HookResult:
        on_disk = message.path is not None and Path(message.path).is_file()
        type(self).seen.append((message.path, on_disk, bytes(message)))
        if b"Subject: reject" in bytes(message):
            return Reject(554, "5.7.1 no thanks")
        if b"Subject: raise" in bytes(message):
            raise RuntimeError("the hook failed")
        return Accept()


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def server(spool_dir: Path, transport_name: str) -> Iterator[Server]:
    Recorder.seen = []
    with running_server(
        Recorder,
        transport=transport_name,
        spool_threshold=THRESHOLD,
        spool_dir=str(spool_dir),
        timeout=2.0,
    ) as server:
        yield server


@pytest.fixture(params=["asyncio", "threads", "anyio"])
def transport_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def spool_files(server: Server) -> list[Path]:
    folder = server.app.spooler.folder
    return sorted(folder.iterdir()) if folder is not None and folder.exists() else []


def assert_spool_empty(server: Server) -> None:
    assert wait_until(lambda: server.active_sessions == 0)
    assert spool_files(server) == []
    assert server.app.spooler.used == 0


def send(server: Server, body: bytes) -> Any:
    with smtplib.SMTP(server.host, server.port, timeout=WAIT) as smtp:
        return smtp.sendmail("a@example.org", ["b@example.org"], body)


def test_accepted_a_big_message_was_in_a_file_then_gone(server: Server) -> None:
    send(server, BIG)
    send(server, b"Subject: small\r\n\r\nhi\r\n")
    [(path, on_disk, content), (small_path, _, small)] = Recorder.seen
    assert path is not None and on_disk and content.endswith(BIG)
    assert small_path is None and small.endswith(b"\r\n\r\nhi\r\n")  # stayed in memory
    assert_spool_empty(server)


def test_rejected_and_failed_hooks_leave_nothing(server: Server) -> None:
    for subject, code in ((b"reject", 554), (b"raise", 451)):
        with pytest.raises(smtplib.SMTPDataError) as info:
            send(server, b"Subject: " + subject + b"\r\n\r\n" + BIG)
        assert info.value.smtp_code == code
    assert len(Recorder.seen) == 2 and all(on_disk for _, on_disk, _ in Recorder.seen)
    assert_spool_empty(server)


def start_data(server: Server) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=WAIT)
    sock.sendall(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    reply = b""
    while b"354 " not in reply:
        reply += sock.recv(4096)
    sock.sendall(BIG)  # past the threshold: a spool file exists now
    assert wait_until(lambda: spool_files(server) != [])
    return sock


def test_bare_lf_mid_message_is_refused_and_its_file_removed(server: Server) -> None:
    with start_data(server) as sock:
        sock.sendall(b"a bare\nline feed\r\n.\r\nQUIT\r\n")
        replies = b""
        while b"221 " not in replies:
            replies += sock.recv(4096)
    assert b"550 5.5.2" in replies
    assert Recorder.seen == []
    assert_spool_empty(server)


def test_a_client_leaving_mid_message_leaves_nothing(server: Server) -> None:
    sock = start_data(server)
    sock.close()
    assert_spool_empty(server)


def test_a_timeout_mid_message_leaves_nothing(server: Server) -> None:
    with start_data(server) as sock:
        said = b""
        while b"421 " not in said:  # the server's 2 s idle limit within content
            chunk = sock.recv(4096)
            assert chunk, said
            said += chunk
    assert b"421 4.4.2" in said
    assert_spool_empty(server)


def test_shutdown_mid_message_leaves_nothing(spool_dir: Path, transport_name: str) -> None:
    server = Server(
        Recorder,
        ServerOptions(
            listen=(("127.0.0.1", 0),),
            grace_period=0.2,
            spool_threshold=THRESHOLD,
            spool_dir=str(spool_dir),
        ),
        transport=transport_name,
    ).start()
    folder = server.app.spooler.folder
    assert folder is not None
    sock = start_data(server)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    stopper.join(WAIT)
    sock.close()
    assert not stopper.is_alive()
    assert not folder.exists()  # the instance's folder went with the server
    assert server.app.spooler.used == 0


def test_past_the_disk_budget_452_and_serving_goes_on(spool_dir: Path) -> None:
    Recorder.seen = []
    with running_server(
        Recorder, spool_threshold=THRESHOLD, spool_dir=str(spool_dir), spool_max_bytes=50_000
    ) as server:
        with pytest.raises(smtplib.SMTPDataError) as info:
            send(server, BIG)
        assert info.value.smtp_code == 452
        assert info.value.smtp_error.startswith(b"4.3.1 ")
        assert Recorder.seen == []  # the handler never saw it
        send(server, b"Subject: small\r\n\r\nhi\r\n")
        send(server, BIG[:40_000])  # under the budget: spooled, accepted
        assert len(Recorder.seen) == 2
        assert_spool_empty(server)
