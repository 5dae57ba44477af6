"""Issue 14, metrics and logs: the Prometheus endpoint counts exactly what real clients did,
on every transport and across `--processes` children; `--log-format json` lines carry their
fields as keys.

The endpoint is scraped over HTTP and parsed with prometheus_client's own parser, as Prometheus
would read it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import smtplib
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import WAIT, Peer, Process, Tls, Transport, in_thread, wait_until

from smtp_core import Config
from smtpkit.handlers import Accept, Handler, Message, Reject
from smtpkit.transports import Metrics, Server, ServerOptions, serve_metrics

pytestmark = pytest.mark.timeout(120)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
CONTENT = b"Subject: %s\r\n\r\nhello\r\n"


def scrape(address: tuple[str, int]) -> Samples:
    """Every sample of the endpoint, by name and labels."""
    url = f"http://{address[0]}:{address[1]}/metrics"
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class Gate:
    """Holds the data hook of a message whose subject is "hold" until `release` is set."""

    def __init__(self) -> None:
        self.holding = threading.Event()
        self.release = threading.Event()
        self.held_size = 0


class Gatekeeper(Handler):
    """Rejects recipients starting with "bad", messages whose subject is "reject", and every
    password but "right"; holds "hold" messages on the gate."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def auth(self, user: str, password: str) -> Accept | Reject:
        return Accept() if password == "right" else Reject()

    def mail(self, sender: str, params: object) -> Accept:
        return Accept()

    def rcpt(self, recipient: str, params: object) -> Accept | Reject:
        return Reject() if recipient.startswith("bad") else Accept()

    def data(self, message: Message) -> Accept | Reject:
        content = message.read()
        if b"Subject: reject" in content:
            return Reject()
        if b"Subject: hold" in content:
            self.gate.held_size = message.size
            self.gate.holding.set()
            assert self.gate.release.wait(WAIT)
        return Accept()


def send(server: Server, subject: str, recipients: list[str], content: bytes = b"") -> None:
    with smtplib.SMTP(server.host, server.port, timeout=WAIT) as client:
        body = content or CONTENT % subject.encode()
        with contextlib.suppress(smtplib.SMTPDataError):  # the "reject" message
            client.sendmail("a@client.example", recipients, body)


def test_the_endpoint_counts_real_traffic_exactly(transport: Transport, tls: Tls) -> None:
    transport.require()
    gate = Gate()
    metrics = Metrics()
    options = ServerOptions(
        listen=(("127.0.0.1", 0),),
        grace_period=1.0,
        anyio_backend=transport.anyio_backend,
        uvloop=transport.uvloop,
        workers=1,  # the held data hook blocks the only worker: the next hook queues
        max_connections=3,
        spool_threshold=1024,  # the held message goes to a spool file
        ssl_context=tls.server,
        config=Config(hostname="mx.example", auth_allow_plaintext=True),
    )
    server = Server(
        functools.partial(Gatekeeper, gate), options, transport=transport.name, observer=metrics
    )
    transport.servers.append(server)
    server.start()
    endpoint = serve_metrics(metrics, ("127.0.0.1", 0))
    try:
        # 1: a wrong password, then the right one; one recipient refused; a message accepted
        with smtplib.SMTP(server.host, server.port, timeout=WAIT) as client:
            client.ehlo("client.example")
            client.user, client.password = "alice", "wrong"
            with pytest.raises(smtplib.SMTPAuthenticationError):  # one attempt, not login()'s two
                client.auth("PLAIN", client.auth_plain, initial_response_ok=True)
            client.login("alice", "right")
            refused = client.sendmail(
                "a@client.example", ["good@example.org", "bad@example.org"], CONTENT % b"one"
            )
            assert set(refused) == {"bad@example.org"}
        # 2: a message refused at the end of data
        send(server, "reject", ["good@example.org"])
        # 3: a client that goes away after MAIL, without QUIT
        peer = Peer((server.host, server.port))
        peer.hello()
        assert peer.command("MAIL FROM:<a@client.example>").startswith(b"250")
        peer.sock.close()
        assert wait_until(lambda: server.active_sessions == 0)
        # 4: a message held in its data hook (spooled to disk) while another client's MAIL
        # hook waits for the only worker
        big = CONTENT % b"hold" + b"x" * 4000 + b"\r\n"
        held = in_thread(lambda: send(server, "hold", ["good@example.org"], big))
        assert gate.holding.wait(WAIT)
        queued = in_thread(lambda: send(server, "queued", ["good@example.org"]))
        assert wait_until(
            lambda: value(scrape(endpoint.address), "smtpkit_worker_queue_depth") == 1
        )
        during = scrape(endpoint.address)
        assert value(during, "smtpkit_spool_bytes") == gate.held_size > 4000
        assert value(during, "smtpkit_sessions_active") == 2
        gate.release.set()
        held.join(WAIT)
        queued.join(WAIT)
        # 5: STARTTLS
        with smtplib.SMTP(server.host, server.port, timeout=WAIT) as client:
            client.starttls(context=tls.client)
            client.ehlo("client.example")
        # 6: three idle clients take every slot; a fourth is refused
        assert wait_until(lambda: server.active_sessions == 0)
        idle = [Peer((server.host, server.port)) for _ in range(3)]
        for one in idle:
            assert one.reply().startswith(b"220 ")
        extra = Peer((server.host, server.port))
        assert extra.reply().startswith(b"421 4.7.0")
        extra.sock.close()
        for one in idle:
            one.sock.close()
        assert wait_until(lambda: server.active_sessions == 0)
        assert wait_until(
            lambda: value(scrape(endpoint.address), "smtpkit_disconnects_total", reason="eof") == 4
        )
        got = scrape(endpoint.address)
    finally:
        gate.release.set()
        endpoint.close()
    expected = {
        ("smtpkit_connections_total", ()): 9,
        ("smtpkit_connections_refused_total", (("reason", "too many connections"),)): 1,
        ("smtpkit_sessions_active", ()): 0,
        ("smtpkit_messages_accepted_total", (("code", "250"),)): 3,
        ("smtpkit_messages_rejected_total", (("code", "550"), ("stage", "rcpt"))): 1,
        ("smtpkit_messages_rejected_total", (("code", "554"), ("stage", "data"))): 1,
        ("smtpkit_messages_rejected_total", (("code", "535"), ("stage", "auth"))): 1,
        ("smtpkit_auth_failures_total", ()): 1,
        ("smtpkit_tls_connections_total", (("version", "TLSv1.3"),)): 1,
        ("smtpkit_connections_lost_total", (("stage", "mail"),)): 1,
        ("smtpkit_connections_lost_total", (("stage", "greeted"),)): 3,
        ("smtpkit_disconnects_total", (("reason", "quit"),)): 5,
        ("smtpkit_disconnects_total", (("reason", "eof"),)): 4,
        ("smtpkit_message_size_bytes_count", ()): 4,
        ("smtpkit_hook_duration_seconds_count", (("hook", "auth"),)): 2,
        ("smtpkit_hook_duration_seconds_count", (("hook", "mail"),)): 5,
        ("smtpkit_hook_duration_seconds_count", (("hook", "rcpt"),)): 5,
        ("smtpkit_hook_duration_seconds_count", (("hook", "data"),)): 4,
        ("smtpkit_worker_queue_depth", ()): 0,
        ("smtpkit_spool_bytes", ()): 0,
    }
    found = {
        (name, tuple(sorted(labels))): value(got, name, **dict(labels)) for name, labels in expected
    }
    assert found == expected
    sizes = [len(CONTENT % s) for s in (b"one", b"reject", b"queued")] + [len(big)]
    assert value(got, "smtpkit_message_size_bytes_sum") == sum(sizes)
    # Nothing else was refused: no other stage or code.
    assert {labels for (name, labels) in got if name == "smtpkit_messages_rejected_total"} == {
        frozenset(labels)
        for (name, labels) in expected
        if name == "smtpkit_messages_rejected_total"
    }


# ------------------------------------------------------------------------ the command line


METRICS_AT = re.compile(r"metrics on http://([^:/]+):(\d+)/metrics")


def endpoint_of(process: Process) -> tuple[str, int]:
    assert wait_until(lambda: bool(METRICS_AT.search(process.log()))), process.log()
    match = METRICS_AT.search(process.log())
    assert match is not None
    return match.group(1), int(match.group(2))


@pytest.mark.parametrize("processes", [1, 2])
def test_the_cli_serves_metrics_with_and_without_processes(
    smtpkit: Callable[..., Process], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: int
) -> None:
    """With --processes, each child counts into files of a private folder (made in TMPDIR,
    closed to others) and the parent serves their sum; the folder is gone after the stop."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    server = smtpkit(
        "serve", "--listen", "127.0.0.1:0", "--handler", "sink", "--no-uvloop",
        "--metrics", "127.0.0.1:0", "--processes", str(processes),
    )  # fmt: skip
    assert wait_until(lambda: server.log().count("listening on") >= processes)
    address = endpoint_of(server)
    for n in range(6):
        with smtplib.SMTP(server.host, server.port, timeout=WAIT) as client:
            client.sendmail("a@client.example", [f"user{n}@example.org"], CONTENT % b"cli")

    def settled() -> bool:
        got = scrape(address)
        return value(got, "smtpkit_disconnects_total", reason="quit") == 6

    assert wait_until(settled)
    got = scrape(address)
    assert value(got, "smtpkit_connections_total") == 6
    assert value(got, "smtpkit_messages_accepted_total", code="250") == 6
    assert value(got, "smtpkit_message_size_bytes_count") == 6
    assert value(got, "smtpkit_sessions_active") == 0
    folders = [p for p in temp.iterdir() if p.name.startswith("smtpkit-metrics-")]
    if processes == 1:
        assert folders == []
    else:  # whichever child the kernel gave each client, both count into the folder
        (folder,) = folders
        assert folder.stat().st_mode & 0o077 == 0
        pids = {p.name.split("_")[-1] for p in folder.glob("counter_*.db")}
        assert len(pids) == 2, sorted(folder.iterdir())
    server.stop()
    assert server.proc.returncode == 0, server.log()
    assert not any(p.name.startswith("smtpkit-metrics-") for p in temp.iterdir())


def test_metrics_port_in_use_is_one_error_line(
    smtpkit: Callable[..., Process], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for processes in ("1", "2"):
            result = subprocess.run(
                [sys.executable, "-m", "smtpkit", "serve", "--listen", "127.0.0.1:0",
                 "--handler", "sink", "--metrics", f"127.0.0.1:{port}", "--processes", processes],
                capture_output=True, text=True, timeout=WAIT, cwd=tmp_path,
            )  # fmt: skip
            assert result.returncode == 1, result.stderr
            assert f"smtpkit: error: --metrics 127.0.0.1:{port}: cannot listen" in result.stderr


# ------------------------------------------------------------------------ JSON log lines


def test_json_log_lines_carry_their_fields_as_keys(smtpkit: Callable[..., Process]) -> None:
    server = smtpkit(
        "serve", "--listen", "127.0.0.1:0", "--handler", "sink", "--log-format", "json"
    )  # fmt: skip
    with smtplib.SMTP(server.host, server.port, timeout=WAIT) as client:
        client.sendmail("a@client.example", ["b@example.org", "c@example.org"], CONTENT % b"j")
        port = client.sock.getsockname()[1]
    peer = f"[127.0.0.1]:{port}"
    assert wait_until(lambda: f'"disconnect from {peer}' in server.log())
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    (message,) = [line for line in lines if "queue_id" in line]
    assert {key: message[key] for key in ("from", "nrcpt", "size", "peer", "decision")} == {
        "from": "a@client.example",
        "nrcpt": 2,
        "size": len(CONTENT % b"j"),
        "peer": peer,
        "decision": "accepted",
    }
    assert message["message"] == (
        f"{message['queue_id']}: from=<a@client.example> nrcpt=2 size={message['size']} "
        f"peer={peer} decision=accepted"
    )
    (connect,) = [line for line in lines if line["message"] == f"connect from {peer}"]
    assert connect["peer"] == peer
    (disconnect,) = [line for line in lines if line["message"].startswith("disconnect from")]
    assert (disconnect["peer"], disconnect["reason"], disconnect["messages"]) == (peer, "quit", 1)
    assert isinstance(disconnect["duration"], float)


def test_without_metrics_nothing_imports_prometheus_client(tmp_path: Path) -> None:
    """Metrics are optional: a server without an observer (and `smtpkit serve` without
    --metrics) never imports prometheus_client."""
    program = textwrap.dedent(
        """\
        import smtplib, sys
        from smtpkit.transports import Server, ServerOptions
        from smtpkit.transports._cli import build_parser
        from smtpkit.handlers import SinkHandler
        build_parser()
        with Server(SinkHandler, ServerOptions(listen=(("127.0.0.1", 0),))) as server:
            with smtplib.SMTP(server.host, server.port) as client:
                client.sendmail("a@b.example", ["c@d.example"], b"Subject: x\\r\\n\\r\\nx\\r\\n")
        print("prometheus_client" in sys.modules)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=WAIT,
        cwd=tmp_path, env={**os.environ, "PYTHONSAFEPATH": "1"},
    )  # fmt: skip
    assert result.stdout.strip() == "False", result.stderr
