"""examples/gateway.py, run as a process: blocklists, AUTH, no open relay, and relaying to a
downstream MTA (an in-process smtpkit server here; a real Postfix smtp-sink in
tests/interop/, and examples/mta.py in test_mta.py)."""

from __future__ import annotations

import functools
import smtplib
import socket
import ssl
import types
from pathlib import Path
from typing import Any

import pytest
import trustme
from support import WAIT

from smtpkit.handlers import Accept, MaildirHandler, Message, Reject, RelayHandler
from smtpkit.transports import running_server

pytestmark = pytest.mark.timeout(90)
MESSAGE = b"Subject: through the gateway\r\n\r\nhello\r\n"


class Downstream(MaildirHandler):
    """The MTA behind the gateway: refuses unknown*@ recipients and "reject" messages."""

    def rcpt(self, recipient: str, params: Any) -> Any:
        if recipient.startswith("unknown"):
            return Reject(550, f"5.1.1 <{recipient}>: Recipient address rejected: User unknown")
        return Accept()

    def data(self, message: Message) -> Any:
        content = bytes(message)
        if b"Subject: reject" in content:
            return Reject(554, "5.7.1 Message content rejected")
        if b"Subject: defer" in content:
            return Reject(451, "4.3.0 Try again later")
        return super().data(message)


@pytest.fixture
def downstream(tmp_path: Path) -> Any:
    with running_server(functools.partial(Downstream, tmp_path / "downstream")) as server:
        yield server


def delivered(tmp_path: Path) -> list[bytes]:
    new = tmp_path / "downstream" / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text("alice:wonderland\nbob:builder\n")
    return path


def gateway(run_example: Any, downstream: Any, *extra: str) -> Any:
    return run_example(
        "gateway.py",
        "--listen",
        "127.0.0.1:0",
        "--downstream",
        f"{downstream.host}:{downstream.port}",
        "--hostname",
        "gw.example",
        "--local-domains",
        "example.org,example.net",
        *extra,
    )


def connect(server: Any, source: str = "127.0.0.1") -> smtplib.SMTP:
    smtp = smtplib.SMTP(server.host, server.port, timeout=WAIT, source_address=(source, 0))
    smtp.ehlo("client.example")
    return smtp


def greeting(server: Any, source: str) -> tuple[bytes, bytes]:
    sock = socket.create_connection(
        (server.host, server.port), timeout=WAIT, source_address=(source, 0)
    )
    with sock:
        first = sock.recv(4096)
        sock.settimeout(1.0)
        try:
            rest = sock.recv(4096)
        except TimeoutError:
            rest = b"(still open)"
    return first, rest


def test_blocklisted_client_gets_421_and_close(
    run_example: Any, downstream: Any, tmp_path: Path
) -> None:
    blocklist = tmp_path / "blocked.cidr"
    blocklist.write_text("# the whole loopback network\n127.0.0.0/8\n")
    gw = gateway(run_example, downstream, "--blocklist", str(blocklist))
    first, rest = greeting(gw, "127.0.0.1")
    assert first == b"421 gw.example Error: client host [127.0.0.1] blocked\r\n"
    assert rest == b""


def test_dnsbl_listed_client_gets_421_and_close(
    run_example: Any, downstream: Any, dns_stub: Any
) -> None:
    dns_stub.listed.add("2.0.0.127.zen.example")
    host, port = dns_stub.address
    gw = gateway(
        run_example, downstream, "--dnsbl", "zen.example", "--dns-server", f"{host}:{port}"
    )
    first, rest = greeting(gw, "127.0.0.2")
    assert first.startswith(b"421 gw.example Error: client host [127.0.0.2] blocked using")
    assert rest == b""
    first, rest = greeting(gw, "127.0.0.1")
    assert first.startswith(b"220 gw.example")
    assert rest == b"(still open)"
    assert "2.0.0.127.zen.example" in dns_stub.queries
    assert "1.0.0.127.zen.example" in dns_stub.queries


def test_refuses_to_be_an_open_relay(
    run_example: Any, downstream: Any, users: Path, tmp_path: Path
) -> None:
    gw = gateway(run_example, downstream, "--users", str(users), "--auth-allow-plaintext")
    with connect(gw) as smtp:
        assert smtp.has_extn("auth")
        smtp.mail("spammer@elsewhere.example")
        assert smtp.rcpt("victim@elsewhere.example") == (
            554,
            b"5.7.1 <victim@elsewhere.example>: Relay access denied",
        )
        # Our own domains are open to anyone.
        assert smtp.rcpt("bob@example.org")[0] == 250
        assert smtp.data(MESSAGE)[0] == 250
    [message] = delivered(tmp_path)
    assert message.endswith(MESSAGE)


def test_auth_then_relay(run_example: Any, downstream: Any, users: Path, tmp_path: Path) -> None:
    gw = gateway(run_example, downstream, "--users", str(users), "--auth-allow-plaintext")
    with connect(gw) as smtp:
        assert smtp.has_extn("auth")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("alice", "wrong")
        smtp.login("alice", "wonderland")
        refused = smtp.sendmail("alice@example.org", ["friend@elsewhere.example"], MESSAGE)
        assert refused == {}
    [message] = delivered(tmp_path)
    # The gateway's Received header says the client authenticated (ESMTPA).
    assert b"by gw.example (smtpkit) with ESMTPA" in message
    assert message.endswith(MESSAGE)


def test_relay_from_an_allowed_network(run_example: Any, downstream: Any, tmp_path: Path) -> None:
    gw = gateway(run_example, downstream, "--allow-relay-from", "127.0.0.2/32")
    with connect(gw, "127.0.0.2") as smtp:
        assert smtp.sendmail("a@example.org", ["friend@elsewhere.example"], MESSAGE) == {}
    with connect(gw, "127.0.0.3") as smtp:
        smtp.mail("a@example.org")
        assert smtp.rcpt("friend@elsewhere.example")[0] == 554
    assert len(delivered(tmp_path)) == 1


def test_auth_only_over_tls_by_default(
    run_example: Any, downstream: Any, users: Path, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "gw.pem"))
    gw = gateway(
        run_example, downstream, "--users", str(users), "--tls-cert", str(tmp_path / "gw.pem")
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with connect(gw) as smtp:
        assert not smtp.has_extn("auth")
        assert smtp.has_extn("starttls")
        smtp.starttls(context=context)
        smtp.ehlo("client.example")
        assert smtp.has_extn("auth")
        smtp.login("bob", "builder")
        assert smtp.sendmail("bob@example.org", ["x@elsewhere.example"], MESSAGE) == {}
    [message] = delivered(tmp_path)
    assert b"with ESMTPSA" in message


def test_downstream_verdicts_reach_the_client(
    run_example: Any, downstream: Any, tmp_path: Path
) -> None:
    gw = gateway(run_example, downstream)
    with connect(gw) as smtp:
        smtp.mail("a@elsewhere.example")
        # Refused by the downstream MTA, at RCPT time.
        assert smtp.rcpt("unknown@example.org") == (
            550,
            b"5.1.1 <unknown@example.org>: Recipient address rejected: User unknown",
        )
        assert smtp.rcpt("bob@example.org")[0] == 250
        assert smtp.data(b"Subject: reject\r\n\r\nspam\r\n") == (
            554,
            b"5.7.1 Message content rejected",
        )
        smtp.mail("a@elsewhere.example")
        smtp.rcpt("bob@example.org")
        assert smtp.data(b"Subject: defer\r\n\r\nlater\r\n") == (451, b"4.3.0 Try again later")
    assert delivered(tmp_path) == []


def test_unreachable_downstream_gives_451(run_example: Any, tmp_path: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    gw = gateway(run_example, types.SimpleNamespace(host="127.0.0.1", port=port))
    with connect(gw) as smtp:
        assert smtp.mail("a@elsewhere.example") == (451, b"4.4.1 Error: relay host unavailable")


def test_gateway_is_a_pipeline_in_order(tmp_path: Path) -> None:
    import importlib.util

    from smtpkit.handlers.policies import CidrBlocklist, PasswordAuth, RelayControl

    spec = importlib.util.spec_from_file_location(
        "gateway_example", Path(__file__).resolve().parents[2] / "examples" / "gateway.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "blocked").write_text("192.0.2.0/24\n")
    (tmp_path / "users").write_text("alice:wonderland\n")
    args = module.parse_args(
        ["--downstream", "127.0.0.1:25", "--blocklist", str(tmp_path / "blocked"),
         "--users", str(tmp_path / "users"), "--local-domains", "example.org"]
    )  # fmt: skip
    pipeline = module.gateway(args)
    assert [type(p) for p in pipeline.policies] == [CidrBlocklist, PasswordAuth, RelayControl]
    assert pipeline.deliverer_class is RelayHandler
