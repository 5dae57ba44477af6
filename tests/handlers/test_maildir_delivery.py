"""MaildirHandler: the catcher, per-recipient delivery, sanitised names, and the order of the
durable-delivery steps."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import smtplib
import socket
import string
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import WAIT

import smtpkit.handlers._maildir as maildir_module
from smtp_core import Config
from smtpkit.handlers import Maildir, MaildirHandler, Message, mailbox_name
from smtpkit.transports import running_server

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
        # Plain ASCII addresses keep the names they always had.
        ("Alice@Example.ORG", "alice@example.org"),
        ("bob.smith+news@example.org", "bob.smith+news@example.org"),
        ("a_b-c@x.example", "a_b-c@x.example"),
        ("Postmaster", "postmaster"),
        # Everything else is %-escaped, a leading dot included.
        ('"../x"@d', "%22..%2Fx%22@d"),
        ("a/b@c", "a%2Fb@c"),
        ("a b@c", "a%20b@c"),
        ("a%20b@c", "a%2520b@c"),
        ("...", "%2E.."),
        (".", "%2E"),
        ("..", "%2E."),
        (".hidden@d", "%2Ehidden@d"),
        ("j\u00f6rg@example.org", "j%C3%B6rg@example.org"),
        (
            "\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a",
            "%E7%94%A8%E6%88%B7@%E4%BE%8B%E5%AD%90.%E5%B9%BF%E5%91%8A",
        ),
        # The domain is case-insensitive; of the local part only ASCII letters are folded.
        ("x@\u00c4.example", "x@%C3%A4.example"),
        ("\u00c4@x", "%C3%84@x"),
        ("\u212a@x", "%E2%84%AA@x"),  # the Kelvin sign is not the letter k
    ],
)
def test_mailbox_name(address: str, name: str) -> None:
    assert mailbox_name(address) == name


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a", "\u5f20\u4e09@\u4f8b\u5b50.\u5e7f\u544a"),
        ("\u00e4@x", "\u00f6@x"),
        ("a b@x", "a_b@x"),
        ("\u00c4@x", "\u00e4@x"),
        ("\u212a@x", "k@x"),
        ("x" * 300 + "a@example.org", "x" * 300 + "b@example.org"),
        ("\u7528" * 100 + "@x", "\u7528" * 100 + "@y"),
    ],
)
def test_distinct_addresses_get_distinct_mailboxes(one: str, other: str) -> None:
    assert mailbox_name(one) != mailbox_name(other)


def test_an_empty_name_is_refused() -> None:
    with pytest.raises(ValueError):
        mailbox_name("")


def test_long_names_are_cut_at_an_escape_with_a_digest() -> None:
    name = mailbox_name("\u7528" * 100 + "@Example.ORG")
    head, tilde, digest = name.rpartition("~")
    assert tilde and len(name) <= 200
    assert re.fullmatch(r"(%E7%94%A8)+", head)  # no escape cut in two
    # Stable across runs and processes: a SHA-256 of the folded address, not hash().
    assert digest == _digest("\u7528" * 100 + "@example.org")


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _folded(address: str) -> str:
    """The documented case rule: the domain lowercased, the local part's ASCII letters only."""
    if "@" not in address:
        return address.translate(_ASCII_LOWER)
    local, _, domain = address.rpartition("@")
    return f"{local.translate(_ASCII_LOWER)}@{domain.lower()}"


def _digest(folded: str) -> str:
    return hashlib.sha256(folded.encode("utf-8", "surrogatepass")).hexdigest()[:32]


#: Characters that collided before (non-ASCII, "_" and what mapped to it), with the ones the
#: escaping and the case rule treat specially: Hypothesis finds near-collisions among them.
_TRICKY_CHARS = "aAk_ %20./@~\x00\u00e4\u00c4\u00f6\u212a\u0130\u7528\udc80"
ADDRESSES = st.one_of(
    st.text(st.sampled_from(_TRICKY_CHARS), min_size=1, max_size=12),
    st.text(min_size=1, max_size=300),
)


@settings(deadline=None, max_examples=500)
@given(ADDRESSES, ADDRESSES)
def test_distinct_addresses_never_share_a_mailbox(one: str, other: str) -> None:
    if _folded(one) != _folded(other):
        assert mailbox_name(one) != mailbox_name(other)
    else:
        assert mailbox_name(one) == mailbox_name(other)


@settings(deadline=None, max_examples=300)
@given(ADDRESSES)
def test_a_name_decodes_back_to_its_address(address: str) -> None:
    """Why names never collide: one that was not cut decodes back to the folded address, and
    a cut one (the only names with a "~") ends with a digest of it."""
    name = mailbox_name(address)
    if "~" in name:
        assert name.endswith("~" + _digest(_folded(address)))
    else:
        assert urllib.parse.unquote(name, errors="surrogatepass") == _folded(address)


@settings(deadline=None, max_examples=300)
@given(ADDRESSES)
def test_any_name_stays_inside_the_root(address: str) -> None:
    name = mailbox_name(address)
    root = Path("/srv/mail")
    assert name and not name.startswith(".")
    assert "/" not in name and "\x00" not in name
    assert name.isascii() and len(name) <= 200
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


HOUR = 3600.0


def _touch(path: Path, age: float) -> Path:
    """A file last modified `age` seconds ago."""
    path.write_bytes(b"partial message")
    when = time.time() - age
    os.utime(path, (when, when))
    return path


def _bare_maildir(path: Path) -> Path:
    """A Maildir's folders made without Maildir(), which would clean tmp/ already."""
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True)
    return path


def _cleanup_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "from tmp/" in r.getMessage()]


def test_old_tmp_files_are_removed_when_the_deliverer_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = _bare_maildir(tmp_path / "md")
    for i in range(3):
        _touch(box / "tmp" / f"crashed{i}", 36 * HOUR + 60)
    _touch(box / "tmp" / "recent", 35 * HOUR)
    _touch(box / "new" / "old-message", 100 * HOUR)  # delivered mail is never touched
    (box / "tmp" / "folder").mkdir()  # nor anything that is not a plain file
    os.utime(box / "tmp" / "folder", (0, 0))
    (box / "tmp" / "link").symlink_to(box / "new" / "old-message")
    os.utime(box / "tmp" / "link", (0, 0), follow_symlinks=False)
    handler = functools.partial(MaildirHandler, box)
    with caplog.at_level(logging.INFO, "smtpkit.maildir"), running_server(handler) as server:
        send(server, "a@example.org", ["b@example.org"])
        send(server, "a@example.org", ["b@example.org"])  # a second session: no rescan
    assert sorted(p.name for p in (box / "tmp").iterdir()) == ["folder", "link", "recent"]
    assert (box / "new" / "old-message").exists()
    assert len(files(box / "new")) == 3
    assert _cleanup_lines(caplog) == [f"{box}: removed 3 files older than 36 hours from tmp/"]


def test_a_per_recipient_mailbox_is_cleaned_on_first_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    bob = _bare_maildir(root / "bob@example.org")
    carol = _bare_maildir(root / "carol@example.org")
    _touch(bob / "tmp" / "crashed", 40 * HOUR)
    _touch(carol / "tmp" / "crashed", 40 * HOUR)
    factory = functools.partial(MaildirHandler, root, per_recipient=True)
    with caplog.at_level(logging.INFO, "smtpkit.maildir"), running_server(factory) as server:
        send(server, "a@example.org", ["bob@example.org"])
    assert files(bob / "tmp") == []
    assert [p.name for p in files(carol / "tmp")] == ["crashed"]  # not opened yet
    assert _cleanup_lines(caplog) == [f"{bob}: removed 1 files older than 36 hours from tmp/"]


def test_a_tmp_that_cannot_be_listed_is_logged_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """tmp/ with mode 0300 (no root test can make that fail): delivering still works."""

    class UnlistableOS(RecordingOS):
        def scandir(self, path: Any) -> Any:
            raise PermissionError(13, "Permission denied", os.fspath(path))

    box = _bare_maildir(tmp_path / "md")
    monkeypatch.setattr(maildir_module, "os", UnlistableOS([]))
    with caplog.at_level(logging.WARNING, "smtpkit.maildir"):
        maildir = Maildir(box)
    assert maildir.deliver(MESSAGE).parent == box / "new"
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"cannot clean up {box / 'tmp'}: ")


class LinkingOS(RecordingOS):
    """RecordingOS that records hard links too, or refuses them as across file systems."""

    def __init__(self, calls: list[tuple[str, ...]], *, cross_device: bool = False) -> None:
        super().__init__(calls)
        self.cross_device = cross_device

    def link(self, src: Any, dst: Any) -> None:
        if self.cross_device:
            raise OSError(18, "Invalid cross-device link")  # EXDEV
        self.calls.append(("link", os.fspath(src), os.fspath(dst)))
        os.link(src, dst)


BIG = b"Subject: big\r\n\r\n" + b"".join(b"line %07d\r\n" % i for i in range(20_000))


def deliver_spooled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_os: RecordingOS, factory: Any
) -> tuple[Path, list[tuple[str, ...]]]:
    box = tmp_path / "md"
    Maildir(box)
    monkeypatch.setattr(maildir_module, "os", fake_os)
    spool = tmp_path / "spool"
    with running_server(factory, spool_threshold=4096, spool_dir=str(spool)) as server:
        send(server, "a@example.org", ["b@example.org"], BIG)
        fake_os.calls.append(("replied",))
    assert not any(spool.rglob("*/*"))  # the spool file is gone; the mailbox keeps its link
    [path] = (box / "new").iterdir()
    return path, fake_os.calls


def test_a_spooled_message_without_edits_is_hard_linked_in_the_same_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, ...]] = []
    path, calls = deliver_spooled(
        tmp_path, monkeypatch, LinkingOS(calls), functools.partial(MaildirHandler, tmp_path / "md")
    )
    tmp, new = str(tmp_path / "md" / "tmp" / path.name), str(path)
    assert [c[0] for c in calls] == ["link", "fsync", "rename", "fsync", "replied"]
    assert calls[0][2] == tmp and calls[1] == ("fsync", tmp) and calls[2] == ("rename", tmp, new)
    content = path.read_bytes()
    assert content.startswith(b"Received: ") and content.endswith(BIG)


def test_across_file_systems_the_spooled_message_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, ...]] = []
    path, calls = deliver_spooled(
        tmp_path,
        monkeypatch,
        LinkingOS(calls, cross_device=True),
        functools.partial(MaildirHandler, tmp_path / "md"),
    )
    kinds = [c[0] for c in calls]
    assert "link" not in kinds and kinds.count("write") >= 1
    assert kinds[kinds.index("fsync") - 1] == "write" and kinds[-4:] == [
        "fsync",
        "rename",
        "fsync",
        "replied",
    ]
    assert path.read_bytes().endswith(BIG)


class Stamped(MaildirHandler):
    """A deliverer behind a policy that edits the header."""

    def data(self, message: Message) -> Any:
        message.add_header("X-Checked", "yes")
        message.remove_header("Subject")
        return super().data(message)


def test_header_edits_are_written_not_linked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, ...]] = []
    path, calls = deliver_spooled(
        tmp_path, monkeypatch, LinkingOS(calls), functools.partial(Stamped, tmp_path / "md")
    )
    assert "link" not in [c[0] for c in calls]
    content = path.read_bytes()
    assert content.startswith(b"X-Checked: yes\r\nReceived: ")
    assert b"Subject: big" not in content and content.endswith(BIG[len(b"Subject: big\r\n") :])
