"""Issue 14: SIGHUP reloads the configuration file and the TLS certificate of a running
`smtpkit serve`, on every transport, without dropping a session: the session in flight finishes
with what it began with, new sessions (STARTTLS and implicit TLS alike) get the new hostname
and certificate, and a broken file is logged and changes nothing."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from support import WAIT, Peer, Process, Transport, wait_until

pytestmark = pytest.mark.timeout(120)

LISTENING = re.compile(r"listening on (\S+) port (\d+)")


def write_config(path: Path, hostname: str, folder: Path, *, broken: bool = False) -> None:
    path.write_text(
        textwrap.dedent(
            f"""\
            listen = ["127.0.0.1:0"]
            tls_listen = ["127.0.0.1:0"]
            hostname = "{hostname}"
            tls_cert = "{folder / "cert.pem"}"
            tls_key = "{folder / "key.pem"}"
            {"max_message_size = -1" if broken else ""}
            [deliver]
            type = "sink"
            """
        )
    )


def install(cert: trustme.LeafCert, folder: Path) -> bytes:
    """Write `cert` where the configuration points; its DER, as a client sees it."""
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


def reloads(server: Process, count: int, word: str) -> None:
    """SIGHUP, then wait for the `count`-th log line containing `word`."""
    server.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: server.log().count(word) >= count), server.log()


def greeting(address: tuple[str, int]) -> bytes:
    with smtplib.SMTP(*address, timeout=WAIT) as client:
        return client.ehlo("client.example")[1].split(b"\n")[0]


def starttls_cert(address: tuple[str, int], client: ssl.SSLContext) -> bytes | None:
    with smtplib.SMTP(*address, timeout=WAIT) as smtp:
        smtp.starttls(context=client)
        assert isinstance(smtp.sock, ssl.SSLSocket)
        return smtp.sock.getpeercert(binary_form=True)


def smtps_cert(address: tuple[str, int], client: ssl.SSLContext) -> bytes | None:
    with smtplib.SMTP_SSL(*address, timeout=WAIT, context=client) as smtp:
        assert isinstance(smtp.sock, ssl.SSLSocket)
        smtp.ehlo("client.example")
        return smtp.sock.getpeercert(binary_form=True)


def test_sighup_reloads_config_and_certificate_without_dropping_sessions(
    transport: Transport, smtpkit: Callable[..., Process], tmp_path: Path
) -> None:
    transport.require()
    ca = trustme.CA()
    client = ssl.create_default_context()
    ca.configure_trust(client)
    old_der = install(ca.issue_cert("localhost", "127.0.0.1"), tmp_path)
    config = tmp_path / "smtpkit.toml"
    write_config(config, "one.example", tmp_path)
    server = smtpkit("serve", "--config", str(config), *transport.cli_args)
    assert wait_until(lambda: len(LISTENING.findall(server.log())) == 2)
    plain, secure = ((host, int(port)) for host, port in LISTENING.findall(server.log()))
    assert greeting(plain) == b"one.example"
    assert starttls_cert(plain, client) == smtps_cert(secure, client) == old_der

    # A session in the middle of a transaction when the reload comes.
    flight = Peer(plain)
    assert flight.hello().startswith(b"250-one.example")
    assert flight.command("MAIL FROM:<a@client.example>").startswith(b"250")

    new_der = install(ca.issue_cert("localhost", "127.0.0.1"), tmp_path)
    assert new_der != old_der
    write_config(config, "two.example", tmp_path)
    reloads(server, 1, "reloaded:")
    assert greeting(plain) == b"two.example"
    assert starttls_cert(plain, client) == smtps_cert(secure, client) == new_der

    # The session in flight goes on, with the configuration it began with.
    assert flight.command("RCPT TO:<b@example.org>").startswith(b"250")
    assert flight.command("DATA").startswith(b"354")
    assert flight.command(b"Subject: hi\r\n\r\nhi\r\n.").startswith(b"250 2.0.0 Ok: queued as")
    assert flight.command("EHLO client.example").startswith(b"250-one.example")
    assert flight.command("QUIT").startswith(b"221")
    assert flight.closed()

    # A broken file, then a certificate whose key does not match: logged, nothing changes.
    write_config(config, "three.example", tmp_path, broken=True)
    reloads(server, 1, "reload failed")
    other = ca.issue_cert("localhost", "127.0.0.1")
    write_config(config, "three.example", tmp_path)
    other.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))  # the key stays
    reloads(server, 2, "reload failed")
    assert greeting(plain) == b"two.example"
    assert starttls_cert(plain, client) == smtps_cert(secure, client) == new_der
    assert "the key does not match the certificate" in server.log()

    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(WAIT) == 0, server.log()


def test_sighup_reaches_every_process(smtpkit: Callable[..., Process], tmp_path: Path) -> None:
    """With --processes, the parent passes SIGHUP on: every child reloads, none stops."""
    config = tmp_path / "smtpkit.toml"
    config.write_text('listen = ["127.0.0.1:0"]\nhostname = "one.example"\n')
    server = smtpkit("serve", "--config", str(config), "--handler", "sink", "--processes", "2")
    assert wait_until(lambda: server.log().count("listening on") == 2)
    config.write_text('listen = ["127.0.0.1:0"]\nhostname = "two.example"\nmax_connections = 5\n')
    reloads(server, 2, "reloaded:")
    assert greeting((server.host, server.port)) == b"two.example"
    assert server.proc.poll() is None
    # A limit fixed at start is said to take a restart, by each child at each reload; the
    # listeners, the same port 0 as before, are no change. (Counted per reload: CI once saw a
    # third reload here, cause not found yet; see the issue 14 note.)
    def each_reload_warned() -> bool:
        log = server.log()
        warned = log.count("max_connections changed, which takes a restart")
        return warned == log.count("reloaded:") >= 2

    assert wait_until(each_reload_warned), server.log()
    assert "listen changed" not in server.log()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(WAIT) == 0, server.log()


SLOW_IMPORT = """\
import time
from pathlib import Path
from smtpkit.handlers import SinkHandler

Path("importing").touch()  # the test's cue: SIGHUP arrives while the server is starting
time.sleep(1.0)


class Handler(SinkHandler):
    pass
"""


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("transport", ["asyncio", "anyio", "threads"])
def test_sighup_while_starting_is_a_reload_once_ready(
    tmp_path: Path, transport: str, processes: int
) -> None:
    """A SIGHUP that arrives before the server can reload (here: while it imports the handler)
    neither ends the process (SIGHUP's default action) nor is lost: once serving, the server,
    or each of its --processes children, reloads."""
    (tmp_path / "slowapp.py").write_text(SLOW_IMPORT)
    config = tmp_path / "smtpkit.toml"
    config.write_text('listen = ["127.0.0.1:0"]\nhostname = "one.example"\n')
    log_path = tmp_path / "smtpkit.log"
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "smtpkit", "serve", "--config", str(config),
             "--handler", "slowapp:Handler", "--processes", str(processes),
             "--transport", transport, "--no-uvloop"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
            env=env,
        )  # fmt: skip
    server = Process(proc, log_path)
    try:
        assert wait_until(lambda: (tmp_path / "importing").exists()), server.log()
        config.write_text('listen = ["127.0.0.1:0"]\nhostname = "two.example"\n')
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: server.log().count("reloaded:") == processes), server.log()
        assert proc.poll() is None, server.log()
        assert wait_until(lambda: server.log().count("listening on") == processes)
        server.wait_listening()
        assert greeting((server.host, server.port)) == b"two.example"
    finally:
        server.stop()
    assert proc.returncode == 0, server.log()
