"""MaildirHandler: the catcher, per-recipient delivery, sanitised names, and the order of the
durable-delivery steps."""

from __future__ import annotations

import functools
import os
import smtplib
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import smtpkit.handlers._maildir as maildir_module
from smtp_core import Config
from smtpkit.handlers import Maildir, MaildirHandler, mailbox_name
from smtpkit.transports import running_server

WAIT = 10.0
pytestmark = pytest.mark.timeout(60)

MESSAGE = b"Subject: test\r\n\r\nhello\r\n"


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def send(server: Any, sender: str, rcpts: list[str], message: bytes = MESSAGE) -> Any:
    with smtplib.SMTP(server.host, server.port, timeout=WAIT) as smtp:
        return smtp.sendmail(sender, rcpts, message)


def test_catcher_mode_is_the_default(tmp_path: Path) -> None:
    with running_server(functools.partial(MaildirHandler, tmp_path / "md")) as server:
        send(server, "a@example.org", ["b@example.org", "c@example.net"])
    [stored] = files(tmp_path / "md" / "new")
    assert stored.read_bytes().endswith(MESSAGE)
    assert files(tmp_path / "md" / "tmp") == []


def test_per_recipient_delivery(tmp_path: Path) -> None:
    root = tmp_path / "root"
    factory = functools.partial(MaildirHandler, root, per_recipient=True)
    with running_server(factory) as server:
        send(server, "a@example.org", ["Bob@Example.org", "carol+x@example.net", "bob@example.ORG"])
    assert sorted(p.name for p in root.iterdir()) == ["bob@example.org", "carol+x@example.net"]
    # bob was named twice (in two spellings): one copy.
    [bob] = files(root / "bob@example.org" / "new")
    [carol] = files(root / "carol+x@example.net" / "new")
    assert bob.read_bytes() == carol.read_bytes()
    assert bob.read_bytes().endswith(MESSAGE)
    for box in ("bob@example.org", "carol+x@example.net"):
        assert {p.name for p in (root / box).iterdir()} == {"tmp", "new", "cur"}


def test_hostile_recipients_stay_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    factory = functools.partial(MaildirHandler, root, per_recipient=True)
    hostile = ['"../x"@example.org', '"../../etc/passwd"@example.org', '"/abs"@example.org']
    with running_server(factory) as server:
        send(server, "a@example.org", hostile)
    names = sorted(p.name for p in root.iterdir())
    assert names == sorted(mailbox_name(a) for a in hostile)
    assert all("/" not in n and n not in (".", "..") for n in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "evil@example.org").symlink_to(outside)
    factory = functools.partial(MaildirHandler, root, per_recipient=True)
    with running_server(factory) as server:
        with pytest.raises(smtplib.SMTPDataError) as err:
            send(server, "a@example.org", ["evil@example.org", "good@example.org"])
        assert err.value.smtp_code == 550
    assert list(outside.iterdir()) == []
    # Nothing was stored for anyone: one verdict for the whole message.
    assert files(root / "good@example.org" / "new") == []


def test_lmtp_gives_one_verdict_per_recipient(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "evil@example.org").symlink_to(tmp_path)
    factory = functools.partial(MaildirHandler, root, per_recipient=True)
    with running_server(factory, config=Config(lmtp=True)) as server:
        sock = socket.create_connection((server.host, server.port), timeout=WAIT)
        with sock, sock.makefile("rb") as replies:
            sock.sendall(
                b"LHLO client\r\nMAIL FROM:<a@example.org>\r\n"
                b"RCPT TO:<evil@example.org>\r\nRCPT TO:<good@example.org>\r\nDATA\r\n"
            )
            while not replies.readline().startswith(b"354"):
                pass
            sock.sendall(MESSAGE + b".\r\n")
            first, second = replies.readline(), replies.readline()
    assert first.startswith(b"550 5.1.3")
    assert second.startswith(b"250 ")
    assert len(files(root / "good@example.org" / "new")) == 1


@pytest.mark.parametrize(
    ("address", "name"),
    [
        ("Alice@Example.ORG", "alice@example.org"),
        ('"../x"@d', "_.._x_@d"),
        ("a/b@c", "a_b@c"),
        ("Postmaster", "postmaster"),
        ("j\u00f6rg@example.org", "j_rg@example.org"),
        ("...", "..."),
    ],
)
def test_mailbox_name(address: str, name: str) -> None:
    assert mailbox_name(address) == name


@pytest.mark.parametrize("address", ["", ".", ".."])
def test_mailbox_name_refuses(address: str) -> None:
    with pytest.raises(ValueError):
        mailbox_name(address)


def test_long_names_are_cut_and_stay_unique() -> None:
    a = mailbox_name("x" * 300 + "a@example.org")
    b = mailbox_name("x" * 300 + "b@example.org")
    assert len(a) <= 200 and len(b) <= 200 and a != b


@settings(deadline=None, max_examples=300)
@given(st.text(min_size=1, max_size=300))
def test_any_name_stays_inside_the_root(address: str) -> None:
    try:
        name = mailbox_name(address)
    except ValueError:
        return
    root = Path("/srv/mail")
    assert "/" not in name and "\x00" not in name
    assert name not in (".", "..")
    assert (root / name).resolve().parent == root.resolve()


class RecordingOS:
    """Stands in for `os` inside smtpkit.handlers._maildir, and records the durable steps."""

    def __init__(self, calls: list[tuple[str, ...]]) -> None:
        self.calls = calls
        self.paths: dict[int, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def open(self, path: Any, flags: int, mode: int = 0o777) -> int:
        fd = os.open(path, flags, mode)
        self.paths[fd] = os.fspath(path)
        return fd

    def write(self, fd: int, data: Any) -> int:
        self.calls.append(("write", self.paths[fd]))
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        self.calls.append(("fsync", self.paths[fd]))
        os.fsync(fd)

    def rename(self, src: Any, dst: Any) -> None:
        self.calls.append(("rename", os.fspath(src), os.fspath(dst)))
        os.rename(src, dst)

    def close(self, fd: int) -> None:
        self.paths.pop(fd, None)
        os.close(fd)


@pytest.mark.parametrize("per_recipient", [False, True])
def test_order_write_fsync_rename_fsync_dir_then_reply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, per_recipient: bool
) -> None:
    calls: list[tuple[str, ...]] = []
    box = tmp_path / ("root/b@example.org" if per_recipient else "md")
    Maildir(box)  # created beforehand: only the delivery is recorded
    monkeypatch.setattr(maildir_module, "os", RecordingOS(calls))
    factory = functools.partial(MaildirHandler, box.parent if per_recipient else box)
    if per_recipient:
        factory = functools.partial(MaildirHandler, box.parent, per_recipient=True)
    with running_server(factory) as server:
        sock = socket.create_connection((server.host, server.port), timeout=WAIT)
        with sock, sock.makefile("rb") as replies:
            sock.sendall(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n")
            sock.sendall(b"DATA\r\n")
            while not replies.readline().startswith(b"354"):
                pass
            sock.sendall(MESSAGE + b".\r\n")
            final = replies.readline()
            calls.append(("reply", final.decode().strip()))
    [name] = [p.name for p in (box / "new").iterdir()]
    tmp, new = str(box / "tmp" / name), str(box / "new" / name)
    writes = [c for c in calls if c[0] == "write"]
    assert writes and all(c == ("write", tmp) for c in writes)
    rest = [c for c in calls if c[0] != "write"]
    assert rest == [
        ("fsync", tmp),
        ("rename", tmp, new),
        ("fsync", str(box / "new")),
        ("reply", rest[-1][1]),
    ]
    assert rest[-1][1].startswith("250 ")
    # Every write came before the file's fsync.
    assert calls.index(("fsync", tmp)) > max(i for i, c in enumerate(calls) if c[0] == "write")


def test_a_new_mailbox_folder_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(maildir_module, "os", RecordingOS(calls))
    Maildir(tmp_path / "fresh")
    assert ("fsync", str(tmp_path / "fresh")) in calls
    assert ("fsync", str(tmp_path)) in calls
    calls.clear()
    Maildir(tmp_path / "fresh")  # exists: nothing to make durable
    assert calls == []


def test_per_recipient_takes_a_folder_not_a_maildir(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        MaildirHandler(Maildir(tmp_path / "m"), per_recipient=True)
