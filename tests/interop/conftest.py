"""Fixtures for the interop tests: real Postfix tools and smtpkit processes.

The peers come from Debian through scripts/setup-test. A missing one fails the test with a
pointer to that script; it is never skipped (DESIGN.md section 6).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import WAIT, Tls, terminate


def find_tool(name: str) -> str:
    """The path of a Debian peer; fails the test (never skips) when it is missing."""
    path = shutil.which(name)
    if path is None:
        for folder in ("/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin"):
            candidate = Path(folder) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                path = str(candidate)
                break
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/setup-test", pytrace=False)
    return path


@pytest.fixture
def tool() -> Callable[[str], str]:
    """tool("swaks"): the path of a Debian peer (fails the test when it is missing)."""
    return find_tool


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_connectable(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} is not listening on port {port}")


class Sink:
    """A running smtp-sink; `dumps()` are the transactions it captured (with -d)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, dump_dir: Path) -> None:
        self.proc = proc
        self.host = "127.0.0.1"
        self.port = port
        self.dump_dir = dump_dir

    def dumps(self, count: int = 1, timeout: float = 10.0) -> list[str]:
        """Wait until `count` transactions are dumped; return them all."""
        deadline = time.monotonic() + timeout
        while True:
            files = sorted(p for p in self.dump_dir.rglob("*") if p.is_file())
            texts = [p.read_text(errors="replace") for p in files]
            complete = [t for t in texts if "\n\n" in t]
            if len(complete) >= count or time.monotonic() > deadline:
                return complete
            time.sleep(0.05)


@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[Callable[..., Sink]]:
    """smtp_sink(*options): Postfix's smtp-sink on a free port, dumping every transaction."""
    binary = find_tool("smtp-sink")
    started: list[Sink] = []
    folders: list[Path] = []

    def start(*options: str) -> Sink:
        # smtp-sink writes as the unprivileged user, who cannot enter pytest's 0700 tmp_path.
        dump_dir = Path(tempfile.mkdtemp(prefix="smtpkit-sink-"))
        dump_dir.chmod(0o777)
        folders.append(dump_dir)
        port = free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        proc = subprocess.Popen(
            [binary, *user, "-d", f"{dump_dir}/%M.", *options, f"127.0.0.1:{port}", "50"],
            stdin=subprocess.DEVNULL,
        )
        sink = Sink(proc, port, dump_dir)
        started.append(sink)
        wait_connectable(port, proc, "smtp-sink")
        return sink

    yield start
    for sink in started:
        terminate(sink.proc)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def tls_files(tls: Tls) -> dict[str, Path]:
    """The `tls` certificate as PEM files: "ca", "cert" and "key"."""
    return {"ca": Path(tls.ca), "cert": Path(tls.cert), "key": Path(tls.key)}


class Postfix:
    """A private Postfix instance (its own config, queue and mail folders under `root`),
    listening on 127.0.0.1:`port`, delivering example.org and example.net to Maildirs under
    `root`/mail."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.host = "127.0.0.1"
        self.port = port
        self.conf = root / "conf"
        self.mail = root / "mail"
        self.maillog = root / "maillog"

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [find_tool("postfix"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def delivered(self, user: str, count: int = 1, timeout: float = 20.0) -> list[str]:
        """Wait until `user`'s Maildir holds `count` messages; return them all."""
        new = self.mail / user / "new"
        deadline = time.monotonic() + timeout
        while True:
            files = sorted(new.iterdir()) if new.is_dir() else []
            if len(files) >= count or time.monotonic() > deadline:
                return [p.read_text(errors="replace") for p in files]
            time.sleep(0.05)

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""


#: What the private Postfix does, so that every kind of verdict can be drawn from it.
POSTFIX_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.example
mydomain = example
myorigin = postfix.example
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
biff = no
smtputf8_enable = yes
smtpd_banner = $myhostname ESMTP Postfix
# Only example.org and example.net are ours; nothing is relayed (the gateway's client is
# not in mynetworks).
mydestination =
mynetworks = 192.0.2.0/24
relay_domains =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
default_transport = discard
virtual_mailbox_domains = example.org, example.net
virtual_mailbox_maps = texthash:{root}/conf/vmailbox
virtual_mailbox_base = {root}/mail
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
# Verdicts on demand: a busy recipient (4xx at RCPT), a deferred sender (4xx after the
# message), a rejected header (5xx after the message), a size limit (552).
smtpd_recipient_restrictions = check_recipient_access texthash:{root}/conf/recipients,
    permit_mynetworks, reject_unauth_destination
smtpd_end_of_data_restrictions = check_sender_access texthash:{root}/conf/senders
header_checks = regexp:{root}/conf/header_checks
message_size_limit = 200000
smtpd_tls_security_level = may
smtpd_tls_cert_file = {root}/conf/cert.pem
smtpd_tls_key_file = {root}/conf/key.pem
smtpd_tls_received_header = yes
"""

POSTFIX_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@pytest.fixture(scope="module")
def postfix(tls_files: dict[str, Path]) -> Iterator[Postfix]:
    """A real Postfix (master, smtpd, cleanup, qmgr, virtual) on a free port, private to the
    test module. Users bob@ and carol@example.org and dave@example.net have Maildirs; see
    POSTFIX_MAIN_CF for the verdicts it can be made to give."""
    find_tool("postfix")
    if os.geteuid() != 0:
        pytest.fail("a private Postfix instance needs root (CI runs as root)", pytrace=False)
    import pwd

    entry = pwd.getpwnam("postfix")
    root = Path(tempfile.mkdtemp(prefix="smtpkit-postfix-"))
    root.chmod(0o755)
    port = free_port()
    instance = Postfix(root, port)
    instance.conf.mkdir()
    (root / "queue").mkdir()  # root's; `postfix start` makes its subfolders
    for folder in ("data", "mail"):
        (root / folder).mkdir()
        os.chown(root / folder, entry.pw_uid, entry.pw_gid)
    (instance.conf / "main.cf").write_text(
        POSTFIX_MAIN_CF.format(root=root, uid=entry.pw_uid, gid=entry.pw_gid)
    )
    (instance.conf / "master.cf").write_text(POSTFIX_MASTER_CF.format(port=port))
    (instance.conf / "vmailbox").write_text(
        "bob@example.org bob/\ncarol@example.org carol/\ndave@example.net dave/\n"
    )
    (instance.conf / "recipients").write_text("busy@example.org 450 4.2.1 Mailbox busy\n")
    (instance.conf / "senders").write_text("later@elsewhere.example 451 4.7.1 Try again later\n")
    (instance.conf / "header_checks").write_text(
        "/^Subject: reject-me/ REJECT spam is not welcome\n"
    )
    shutil.copy(tls_files["cert"], instance.conf / "cert.pem")
    shutil.copy(tls_files["key"], instance.conf / "key.pem")
    started = instance.postfix("start")
    try:
        if started.returncode != 0:
            raise RuntimeError(f"postfix start failed: {started.stderr}\n{instance.log()}")
        deadline = time.monotonic() + WAIT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postfix is not listening:\n{instance.log()}") from None
                time.sleep(0.1)
        yield instance
    finally:
        pid = _master_pid(root)
        instance.postfix("stop")
        if pid is not None:  # our master, and only it, if it lingers
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def _master_pid(root: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((root / "queue" / "pid" / "master.pid").read_text().split()[0])
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    with contextlib.suppress(OSError):  # a zombie is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    return True


#: A private Dovecot with only its lmtp service (Debian's dovecot-lmtpd).
DOVECOT_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = lmtp
ssl = no
listen = 127.0.0.1
default_internal_user = {user}
default_login_user = {user}
first_valid_uid = {uid}
mail_location = maildir:~/Maildir
auth_username_format = %Lu
recipient_delimiter = +
passdb {{
  driver = passwd-file
  args = {root}/users
}}
userdb {{
  driver = passwd-file
  args = {root}/users
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
}}
service anvil {{
  chroot =
}}
"""


class Dovecot:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port

    def delivered(self, user: str, count: int = 1) -> list[bytes]:
        """Wait until `user`'s Maildir holds `count` messages (LMTP is synchronous: they are
        there when the 250 came); return them all."""
        new = self.root / "mail" / user / "Maildir" / "new"
        deadline = time.monotonic() + WAIT
        while True:
            files = sorted(new.iterdir()) if new.is_dir() else []
            if len(files) >= count or time.monotonic() > deadline:
                return [p.read_bytes() for p in files]
            time.sleep(0.05)


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    """A private Dovecot with only its lmtp service, for alice@ and bob@example.org."""
    binary = find_tool("dovecot")
    if os.geteuid() != 0:
        pytest.fail("a private Dovecot instance needs root (CI runs as root)", pytrace=False)
    entry = pwd.getpwnam("dovecot")
    root = Path(tempfile.mkdtemp(prefix="smtpkit-dovecot-"))
    root.chmod(0o755)
    (root / "mail").mkdir()
    os.chown(root / "mail", entry.pw_uid, entry.pw_gid)
    ids = f"{entry.pw_uid}:{entry.pw_gid}"
    (root / "users").write_text(
        "".join(f"{u}@example.org::{ids}::{root}/mail/{u}\n" for u in ("alice", "bob"))
    )
    port = free_port()
    conf = root / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(root=root, user="dovecot", uid=entry.pw_uid, port=port))
    proc = subprocess.Popen(
        [binary, "-F", "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_connectable(port, proc, "dovecot")
        yield Dovecot(root, port)
    finally:
        terminate(proc)
        shutil.rmtree(root, ignore_errors=True)


#: rspamd loads its rules and maps for 15 to 30 seconds before it answers.
RSPAMD_START_TIMEOUT = 120.0
#: A private rspamd: one normal worker on a given port, its files in one folder.
RSPAMD_CONF = """\
.include "$CONFDIR/common.conf"
options {{
    .include "$CONFDIR/options.inc"
    # no network here: a closed local port fails every lookup at once
    dns {{ nameserver = ["127.0.0.1:9"]; timeout = 0.2s; retransmits = 1; }}
}}
logging {{ type = "file"; filename = "{folder}/rspamd.log"; level = "warning"; }}
worker "normal" {{
    bind_socket = "127.0.0.1:{port}";
    count = 1;
}}
"""


@pytest.fixture(scope="session")
def rspamd_url() -> Iterator[str]:
    """A real rspamd's normal worker (Debian's, from scripts/setup-test), started once for the
    whole session, as it takes half a minute to start: its URL."""
    program = find_tool("rspamd")
    folder = Path(tempfile.mkdtemp(prefix="smtpkit-rspamd-"))
    port = free_port()
    (folder / "rspamd.conf").write_text(RSPAMD_CONF.format(folder=folder, port=port))
    command = [program, "-f", "-c", str(folder / "rspamd.conf")]
    command += [f"--var={name}={folder}" for name in ("RUNDIR", "DBDIR", "LOGDIR")]
    if os.geteuid() == 0:  # rspamd will not run as root: its own user, owning the folder
        user = pwd.getpwnam("_rspamd")
        os.chown(folder, user.pw_uid, user.pw_gid)
        command += ["-u", "_rspamd", "-g", "_rspamd"]
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + RSPAMD_START_TIMEOUT
    try:
        while True:
            if proc.poll() is not None:
                log = folder / "rspamd.log"
                raise RuntimeError(f"rspamd exited: {log.read_text() if log.exists() else ''}")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=1) as reply:
                    if reply.read().strip() == b"pong":
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("rspamd did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        terminate(proc)
        shutil.rmtree(folder, ignore_errors=True)
