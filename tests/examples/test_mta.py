"""examples/mta.py, run as a process: local users only, 550 5.1.1 for the unknown, per-user
Maildirs; and the whole chain, gateway in front of the MTA. (Its TOML twin, examples/mta.toml,
delivers through a real Dovecot in tests/interop/test_mta_dovecot.py.)"""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path
from typing import Any

import pytest
from support import WAIT

pytestmark = pytest.mark.timeout(90)
MESSAGE = b"Subject: for the users\r\n\r\nhello\r\n"


def mta(run_example: Any, root: Path, *extra: str) -> Any:
    return run_example(
        "mta.py",
        "--listen",
        "127.0.0.1:0",
        "--hostname",
        "mta.example",
        "--maildir-root",
        str(root),
        "--local-domains",
        "example.org,example.net",
        "--local-users",
        "alice,bob",
        *extra,
    )


def mailbox(root: Path, user: str) -> list[bytes]:
    new = root / user / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


def connect(server: Any) -> smtplib.SMTP:
    smtp = smtplib.SMTP(server.host, server.port, timeout=WAIT)
    smtp.ehlo("gateway.example")
    return smtp


def test_unknown_user_gets_550_5_1_1(run_example: Any, tmp_path: Path) -> None:
    server = mta(run_example, tmp_path / "mail")
    with connect(server) as smtp:
        assert smtp.mail("someone@elsewhere.example")[0] == 250
        assert smtp.rcpt("carol@example.org") == (
            550,
            b"5.1.1 <carol@example.org>: Recipient address rejected: User unknown",
        )
        assert smtp.rcpt("alice@elsewhere.example") == (
            554,
            b"5.7.1 <alice@elsewhere.example>: Relay access denied",
        )
        assert smtp.rcpt("alice@example.org")[0] == 250


def test_per_user_maildirs(run_example: Any, tmp_path: Path) -> None:
    root = tmp_path / "mail"
    server = mta(run_example, root)
    with connect(server) as smtp:
        refused = smtp.sendmail(
            "a@elsewhere.example",
            [
                "Alice@Example.org",
                "alice+lists@example.net",
                "bob@example.org",
                "carol@example.org",
            ],
            MESSAGE,
        )
    assert set(refused) == {"carol@example.org"}
    assert sorted(p.name for p in root.iterdir()) == ["alice", "bob"]
    # alice was named twice (two of her addresses): one copy.
    [alice] = mailbox(root, "alice")
    [bob] = mailbox(root, "bob")
    assert alice == bob and alice.endswith(MESSAGE)
    assert b"by mta.example (smtpkit)" in alice
    for user in ("alice", "bob"):
        assert list((root / user / "tmp").iterdir()) == []


def test_lmtp(run_example: Any, tmp_path: Path) -> None:
    root = tmp_path / "mail"
    server = mta(run_example, root, "--lmtp")
    # Raw bytes: smtplib.LMTP reads only the first of the per-recipient replies.
    with socket.create_connection((server.host, server.port), timeout=WAIT) as sock:
        replies = sock.makefile("rb")
        sock.sendall(
            b"LHLO gw\r\nMAIL FROM:<a@elsewhere.example>\r\n"
            b"RCPT TO:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
        )
        while not replies.readline().startswith(b"354"):
            pass
        sock.sendall(MESSAGE + b".\r\n")
        assert replies.readline().startswith(b"250 ")  # alice
        assert replies.readline().startswith(b"250 ")  # bob
    assert len(mailbox(root, "alice")) == 1 and len(mailbox(root, "bob")) == 1


def test_gateway_in_front_of_the_mta(run_example: Any, tmp_path: Path) -> None:
    """The seed's two use cases together: the MTA's verdicts reach the client through the
    gateway, before-queue."""
    root = tmp_path / "mail"
    server = mta(run_example, root)
    users = tmp_path / "users"
    users.write_text("alice:wonderland\n")
    gw = run_example(
        "gateway.py",
        "--listen",
        "127.0.0.1:0",
        "--downstream",
        f"{server.host}:{server.port}",
        "--local-domains",
        "example.org,example.net",
        "--users",
        str(users),
        "--auth-allow-plaintext",
    )
    with smtplib.SMTP(gw.host, gw.port, timeout=WAIT) as smtp:
        smtp.ehlo("outside.example")
        smtp.mail("someone@elsewhere.example")
        assert smtp.rcpt("nobody@example.org") == (
            550,
            b"5.1.1 <nobody@example.org>: Recipient address rejected: User unknown",
        )
        assert smtp.rcpt("bob@example.org")[0] == 250
        assert smtp.rcpt("x@elsewhere.example")[0] == 554  # the gateway: no open relay
        assert smtp.data(MESSAGE)[0] == 250
    [message] = mailbox(root, "bob")
    assert message.count(b"Received: ") == 2
    assert message.endswith(MESSAGE)


def test_only_rcpt_and_data(tmp_path: Path) -> None:
    import importlib.util

    from smtpkit.transports._pump import Mode, plan_for

    path = Path(__file__).resolve().parents[2] / "examples" / "mta.py"
    spec = importlib.util.spec_from_file_location("mta_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.argparse.Namespace(
        local_domains=["example.org"], local_users=["alice"], lmtp_to=None,
        maildir_root=str(tmp_path),
    )  # fmt: skip
    modes = plan_for(module.mta(args)()).modes
    assert {hook: mode for hook, mode in modes.items() if mode is not Mode.DEFAULT} == {
        "rcpt": Mode.INLINE,  # the cheap checks, on the loop
        "data": Mode.THREAD,  # the fsync'ed Maildir, on the pool
    }


def test_mta_does_not_speak_auth(run_example: Any, tmp_path: Path) -> None:
    server = mta(run_example, tmp_path / "mail")
    with socket.create_connection((server.host, server.port), timeout=WAIT) as sock:
        replies = sock.makefile("rb")
        replies.readline()
        sock.sendall(b"EHLO x\r\n")
        lines = []
        while not (line := replies.readline()).startswith(b"250 "):
            lines.append(line)
        assert not any(b"AUTH" in line for line in [*lines, line])
