"""Maildir delivery: each message becomes exactly one file, durably, before the 250.

The order is what makes it safe against a crash at any instant: write into tmp/, fsync the
file, rename into new/, fsync the new/ directory. A reader never sees a partial file in new/,
and a message the client saw accepted is on disk.

A message is written from the spool a piece at a time, never loaded whole; a spooled message
without header edits is not even copied when the spool is on the same file system: its file is
hard-linked into tmp/ (then fsync'ed, renamed and the folder fsync'ed, in the same order).

Two modes: a catcher (every message in one Maildir, the default) and per-recipient delivery
into `<root>/<recipient>/`, where `mailbox_name()` maps each address to its own folder name,
one-to-one, so that no two addresses share a mailbox and none leads outside the root.

Files a crash left in tmp/ are removed when a Maildir is first opened in a process, once they
are 36 hours old (the Maildir convention: a delivery in progress never takes that long).
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
import re
import socket
import stat
import string
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from smtp_core import Accept, Decision, Reject

from ._handler import Handler, HookResult
from ._message import Message
from ._trace import log_escape

__all__ = ["Maildir", "MaildirHandler", "mailbox_name"]

log = logging.getLogger("smtpkit.maildir")
_counter = itertools.count()


class Maildir:
    """One Maildir folder with tmp/, new/ and cur/, created on first use. The first one opened
    for a folder in a process removes the files older than 36 hours from its tmp/."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not all((self.path / sub).is_dir() for sub in _SUBFOLDERS):
            new_folder = not self.path.exists()
            for sub in _SUBFOLDERS:
                (self.path / sub).mkdir(parents=True, exist_ok=True)
            # A new Maildir's folders must outlive a crash as much as its first message.
            _fsync_dir(self.path)
            if new_folder:
                _fsync_dir(self.path.parent)
        _remove_stale_tmp(self.path)
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")

    def _unique_name(self) -> str:
        now = time.time()
        sec = int(now)
        usec = int((now - sec) * 1_000_000)
        return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}.{self._host}"

    def deliver(self, content: Message | bytes) -> Path:
        """Store `content` atomically and durably; returns the file's path in new/."""
        name = self._unique_name()
        tmp = self.path / "tmp" / name
        if isinstance(content, Message):
            linked = not content.edits and content.path is not None and _link(content.path, tmp)
            pieces: Iterable[bytes] = () if linked else content.chunks()
        else:
            linked, pieces = False, (content,)
        fd = os.open(tmp, os.O_RDONLY) if linked else os.open(tmp, _CREATE, 0o600)
        try:
            for piece in pieces:
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        final = self.path / "new" / name
        os.rename(tmp, final)
        _fsync_dir(self.path / "new")
        return final

    def __repr__(self) -> str:
        return f"<Maildir {str(self.path)!r}>"


_SUBFOLDERS: Final = ("tmp", "new", "cur")
_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL
#: os.link() failures that mean "copy instead": another file system, or links not allowed.
_NO_LINK: Final = frozenset({errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP})
#: The Maildir convention: a file in tmp/ untouched this many hours was left by a crash.
_STALE_TMP_HOURS: Final = 36
#: The Maildirs this process has cleaned: handlers are made per connection, the sweep is
#: done once per process.
_swept: set[str] = set()
_swept_lock = threading.Lock()
#: What a mailbox name keeps as it is; every other character is %-escaped (its UTF-8 bytes).
_ESCAPED: Final = re.compile(r"[^a-z0-9._+@-]")
_ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
#: Longer names are cut and made unique with a hash (most file systems allow 255 bytes).
_MAX_NAME: Final = 200
#: Hex digits of SHA-256 that end a cut name, after a "~" (which uncut names never contain).
_DIGEST: Final = 32
#: What a name is cut back to, so that its head is whole characters: an escape cut in two, and
#: the escapes of the last UTF-8 sequence (its lead byte and continuation bytes).
_CUT_TAIL: Final = re.compile(r"(?:%[C-F][0-9A-F])?(?:%[89AB][0-9A-F])*(?:%[0-9A-F]?)?\Z")


def _link(source: str, target: Path) -> bool:
    """Hard-link the spool file `source` as `target`; False when it must be copied."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno in _NO_LINK:
            return False
        raise
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_tmp(path: Path) -> None:
    """Remove the files a crash left in `path`/tmp/, once per process and Maildir."""
    key = os.path.abspath(path)
    with _swept_lock:
        if key in _swept:
            return
        _swept.add(key)
    cutoff = time.time() - _STALE_TMP_HOURS * 3600
    removed = 0
    try:
        with os.scandir(path / "tmp") as entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    pass  # removed meanwhile by another process
    except OSError as exc:
        log.warning("cannot clean up %s: %s", path / "tmp", exc)
    if removed:
        log.info(
            "%s: removed %d files older than %d hours from tmp/", path, removed, _STALE_TMP_HOURS
        )


def mailbox_name(address: str) -> str:
    """The folder name of a recipient's mailbox: one name per address, and safe as a path.

    Case is folded first: the domain is lowercased, and the ASCII letters of the local part
    (Unicode case mappings are not one-to-one). Then a-z 0-9 . _ + - @ stay as they are and
    every other character becomes %HH per UTF-8 byte, a leading dot included, so that no
    name is hidden, ".", ".." or contains "/". A name longer than 200 characters is cut (at
    a character) and ends with "~" and a SHA-256 digest of the whole. ValueError for an
    empty name.

    >>> mailbox_name("Alice.Smith+news@Example.ORG")
    'alice.smith+news@example.org'
    >>> mailbox_name('"../x"@example.org')
    '%22..%2Fx%22@example.org'
    >>> mailbox_name("Jörg@Example.org")
    'j%C3%B6rg@example.org'
    """
    if not address:
        raise ValueError("empty mailbox name")
    if "@" in address:
        local, _, domain = address.rpartition("@")
        key = f"{local.translate(_ASCII_LOWER)}@{domain.lower()}"
    else:
        key = address.translate(_ASCII_LOWER)
    name = _ESCAPED.sub(_escape, key)
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > _MAX_NAME:
        head = _CUT_TAIL.sub("", name[: _MAX_NAME - _DIGEST - 1])
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        name = f"{head}~{digest[:_DIGEST]}"
    return name


def _escape(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match[0].encode("utf-8", "surrogatepass"))


class MaildirHandler(Handler):
    """Delivers every accepted message into Maildirs.

    >>> MaildirHandler("maildir")                          # the catcher: one Maildir
    >>> MaildirHandler("/srv/mail", per_recipient=True)   # /srv/mail/<recipient>/new/...

    Per recipient, each recipient gets its own copy in `<root>/<name>/`, where `name` is
    `mailbox(recipient)` (the address, by default) named by `mailbox_name()`; override
    `mailbox()` to map addresses to user names. Recipients that share a mailbox get one copy.
    A message is accepted only once every copy is on disk; in LMTP mode each recipient gets
    its own verdict.
    """

    def __init__(
        self, maildir: Maildir | str | os.PathLike[str] = "maildir", *, per_recipient: bool = False
    ) -> None:
        self.per_recipient = per_recipient
        if per_recipient:
            if isinstance(maildir, Maildir):
                raise TypeError("per_recipient=True takes the root folder, not a Maildir")
            self.root = Path(maildir)
            self.root.mkdir(parents=True, exist_ok=True)
            self._resolved_root = self.root.resolve()
            self._boxes: dict[str, Maildir] = {}
        else:
            self.maildir = maildir if isinstance(maildir, Maildir) else Maildir(maildir)
            self.root = self.maildir.path

    @staticmethod
    def prepare(
        path: str | os.PathLike[str],
        *,
        per_recipient: bool = False,
        owner: tuple[int, int] | None = None,
    ) -> tuple[Path, ...]:
        """Create now the folders `MaildirHandler(path, per_recipient=...)` delivers into, so
        that a bad path fails before serving rather than at the first message. The folders it
        creates are given to `owner` (uid, gid): the user a server started as root runs as.
        Returns the folders the server must be able to write into. OSError on failure."""
        root = Path(path)
        subs = () if per_recipient else _SUBFOLDERS
        created = [p for p in (root, *(root / sub for sub in subs)) if not p.exists()]
        root.mkdir(parents=True, exist_ok=True)
        for sub in subs:
            (root / sub).mkdir(exist_ok=True)
        if owner is not None:
            for folder in created:
                os.chown(folder, *owner)
        return (root,) if per_recipient else (root / "tmp", root / "new")

    def mailbox(self, recipient: str) -> str:
        """The mailbox (folder) name of `recipient`, before sanitising. Override to map
        addresses to users, e.g. `return recipient.partition("@")[0]`."""
        return recipient

    def maildir_for(self, recipient: str) -> Maildir:
        """The Maildir of `recipient` under the root; ValueError if its name is unusable
        or would lead outside the root (through a symlink, say)."""
        name = mailbox_name(self.mailbox(recipient))
        box = self._boxes.get(name)
        if box is None:
            path = self.root / name
            resolved = path.resolve()
            if resolved == self._resolved_root or not resolved.is_relative_to(self._resolved_root):
                raise ValueError(f"mailbox {name!r} leads outside {self.root}")
            box = self._boxes[name] = Maildir(path)
        return box

    def data(self, message: Message) -> HookResult:
        if not self.per_recipient:
            try:
                path = self.maildir.deliver(message)
            except OSError:
                log.exception("maildir delivery to %s failed", self.maildir.path)
                return Reject(451, "4.3.0 Error: local delivery failed")
            log.debug("delivered %s", path)
            return Accept()
        return self._deliver_each(message)

    def _deliver_each(self, message: Message) -> HookResult:
        verdicts: dict[str, Decision] = {}
        boxes: dict[Path, list[str]] = {}
        by_path: dict[Path, Maildir] = {}
        for rcpt in self.envelope.recipients:
            try:
                box = self.maildir_for(rcpt)
            except ValueError as exc:
                log.warning("%s: refusing <%s>: %s", self.envelope.queue_id, log_escape(rcpt), exc)
                verdicts[rcpt] = Reject(550, "5.1.3 Error: unusable mailbox name")
            except OSError:
                log.exception(
                    "%s: cannot create the mailbox of <%s>",
                    self.envelope.queue_id,
                    log_escape(rcpt),
                )
                verdicts[rcpt] = Reject(451, "4.3.0 Error: local delivery failed")
            else:
                boxes.setdefault(box.path, []).append(rcpt)
                by_path[box.path] = box
        if verdicts and not self.session.lmtp:
            # One verdict for the whole message: store nothing rather than a part.
            return _worst(verdicts)
        for path, rcpts in boxes.items():
            try:
                delivered = by_path[path].deliver(message)
            except OSError:
                log.exception("%s: delivery to %s failed", self.envelope.queue_id, path)
                verdict: Decision = Reject(451, "4.3.0 Error: local delivery failed")
                if not self.session.lmtp:
                    return verdict
            else:
                log.debug("delivered %s", delivered)
                verdict = Accept()
            for rcpt in rcpts:
                verdicts[rcpt] = verdict
        if self.session.lmtp:
            return verdicts
        return Accept()


def _worst(verdicts: Mapping[str, Decision]) -> Decision:
    """The one verdict for a whole message: a temporary failure wins, so the client retries."""
    values = list(verdicts.values())
    for verdict in values:
        if isinstance(verdict, Reject) and verdict.code is not None and verdict.code < 500:
            return verdict
    return values[0]
