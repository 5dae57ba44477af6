"""Real clients against smtpkit: swaks (plain, STARTTLS, implicit TLS, AUTH PLAIN and LOGIN,
pipelining) and Postfix's smtp-source (many messages over parallel sessions). Every message a
client saw accepted must be in the Maildir."""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

TRANSPORTS = ["asyncio", "threads", "anyio"]


def delivered(maildir: Path) -> list[Path]:
    new = maildir / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def serve_maildir(smtpkit: Any, maildir: Path, *extra: str) -> Any:
    return smtpkit(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--hostname",
        "kit.example",
        "--maildir",
        str(maildir),
        *extra,
    )


@pytest.fixture
def swaks(tool: Any) -> Any:
    return functools.partial(run_swaks, tool("swaks"))


def run_swaks(
    binary: str, server: Any, *args: str, port: int | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            binary,
            "--server",
            f"{server.host}:{port or server.port}",
            "--from",
            "sender@example.org",
            "--to",
            "rcpt@example.org",
            "--helo",
            "swaks.example",
            "--body",
            "hello from swaks",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_swaks_plain(swaks: Any, smtpkit: Any, tmp_path: Path) -> None:
    maildir = tmp_path / "maildir"
    server = serve_maildir(smtpkit, maildir)
    result = swaks(server)
    assert result.returncode == 0, result.stdout + result.stderr
    [message] = delivered(maildir)
    text = message.read_text()
    assert "from swaks.example ([127.0.0.1])" in text
    assert "with ESMTP id" in text
    assert "hello from swaks" in text


def test_swaks_pipelining(swaks: Any, smtpkit: Any, tmp_path: Path) -> None:
    maildir = tmp_path / "maildir"
    server = serve_maildir(smtpkit, maildir)
    result = swaks(server, "--pipeline", "--to", "a@example.org,b@example.org")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(delivered(maildir)) == 1


def test_swaks_starttls(
    swaks: Any, smtpkit: Any, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    maildir = tmp_path / "maildir"
    server = serve_maildir(
        smtpkit, maildir, "--tls-cert", str(tls_files["cert"]), "--tls-key", str(tls_files["key"])
    )
    result = swaks(server, "--tls", "--tls-verify", "--tls-ca-path", str(tls_files["ca"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "STARTTLS" in result.stdout
    [message] = delivered(maildir)
    text = message.read_text()
    assert "with ESMTPS id" in text
    assert "(using TLSv1." in text


def test_swaks_implicit_tls(
    swaks: Any, smtpkit: Any, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    maildir = tmp_path / "maildir"
    server = serve_maildir(
        smtpkit,
        maildir,
        "--tls-cert",
        str(tls_files["cert"]),
        "--tls-key",
        str(tls_files["key"]),
        "--tls-listen",
        "127.0.0.1:0",
    )
    ports = [int(p) for p in re.findall(r"listening on \S+ port (\d+)", server.log())]
    assert len(ports) == 2
    result = swaks(server, "--tls-on-connect", port=ports[1])
    assert result.returncode == 0, result.stdout + result.stderr
    [message] = delivered(maildir)
    assert "with ESMTPS id" in message.read_text()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_auth(
    swaks: Any, smtpkit: Any, tmp_path: Path, tls_files: dict[str, Path], mechanism: str
) -> None:
    users = tmp_path / "users"
    users.write_text("alice:wonderland\n")
    maildir = tmp_path / "maildir"
    server = serve_maildir(
        smtpkit,
        maildir,
        "--tls-cert",
        str(tls_files["cert"]),
        "--tls-key",
        str(tls_files["key"]),
        "--auth-file",
        str(users),
    )
    auth = ["--tls", "--auth", mechanism, "--auth-user", "alice"]
    wrong = swaks(server, *auth, "--auth-password", "not-it")
    assert wrong.returncode == 28, wrong.stdout  # swaks: authentication failed
    assert "535 5.7.8" in wrong.stdout
    right = swaks(server, *auth, "--auth-password", "wonderland")
    assert right.returncode == 0, right.stdout + right.stderr
    [message] = delivered(maildir)
    assert "with ESMTPSA id" in message.read_text()


def test_swaks_auth_is_not_offered_in_plaintext(
    swaks: Any, smtpkit: Any, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    users = tmp_path / "users"
    users.write_text("alice:wonderland\n")
    server = serve_maildir(
        smtpkit,
        tmp_path / "maildir",
        "--tls-cert",
        str(tls_files["cert"]),
        "--tls-key",
        str(tls_files["key"]),
        "--auth-file",
        str(users),
    )
    result = swaks(server, "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "x")
    assert result.returncode == 28, result.stdout  # "server didn't advertise AUTH"
    assert delivered(tmp_path / "maildir") == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_smtp_source_every_message_is_delivered(
    tool: Any, smtpkit: Any, tmp_path: Path, transport: str
) -> None:
    maildir = tmp_path / "maildir"
    server = serve_maildir(smtpkit, maildir, "--transport", transport)
    result = subprocess.run(
        [
            tool("smtp-source"),
            "-s",
            "5",
            "-m",
            "200",
            "-l",
            "2000",
            "-M",
            "source.example",
            "-f",
            "load@example.org",
            "-t",
            "sink@example.org",
            f"{server.host}:{server.port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    files = delivered(maildir)
    assert len(files) == 200
    assert all(f.stat().st_size > 2000 for f in files)
    assert list((maildir / "tmp").iterdir()) == []


def test_smtp_source_reusing_connections_through_the_relay(
    tool: Any, smtpkit: Any, smtp_sink: Any
) -> None:
    """smtp-source -d (many messages per session) through `--handler relay` into smtp-sink:
    all 100 arrive downstream."""
    sink = smtp_sink()
    server = smtpkit(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--handler",
        "relay",
        "--relay",
        f"{sink.host}:{sink.port}",
    )
    result = subprocess.run(
        [
            tool("smtp-source"),
            "-d",
            "-s",
            "4",
            "-m",
            "100",
            "-M",
            "source.example",
            "-f",
            "load@example.org",
            "-t",
            "sink@example.org",
            f"{server.host}:{server.port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(sink.dumps(100)) == 100
