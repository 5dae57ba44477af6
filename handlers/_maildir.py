"""Maildir delivery: each message becomes exactly one file, durably, before the 250.

The order is what makes it safe against a crash at any instant: write into tmp/, fsync the
file, rename into new/, fsync the new/ directory. A reader never sees a partial file in new/,
and a message the client saw accepted is on disk.

Two modes: a catcher (every message in one Maildir, the default) and per-recipient delivery
into `<root>/<recipient>/`, where the recipient's name is sanitised so that no address can
lead outside the root.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from smtp_core import Accept, Decision, Reject

from ._handler import Handler, HookResult

__all__ = ["Maildir", "MaildirHandler", "mailbox_name"]

log = logging.getLogger("smtpkit.maildir")
_counter = itertools.count()


class Maildir:
    """One Maildir folder with tmp/, new/ and cur/, created on first use."""

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
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")

    def _unique_name(self) -> str:
        now = time.time()
        sec = int(now)
        usec = int((now - sec) * 1_000_000)
        return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}.{self._host}"

    def deliver(self, content: bytes) -> Path:
        """Store `content` atomically and durably; returns the file's path in new/."""
        name = self._unique_name()
        tmp = self.path / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(content)
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
_UNSAFE: Final = re.compile(r"[^a-z0-9._+@-]")
#: Longer names are cut and made unique with a hash (most file systems allow 255 bytes).
_MAX_NAME: Final = 200


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mailbox_name(address: str) -> str:
    """The folder name for a recipient: lowercased, with every character outside
    `a-z 0-9 . _ + - @` replaced by "_". ValueError for a name that is empty, "." or "..".

    >>> mailbox_name("Alice.Smith+news@Example.ORG")
    'alice.smith+news@example.org'
    >>> mailbox_name('"../x"@example.org')
    '_.._x_@example.org'
    """
    name = _UNSAFE.sub("_", address.lower())
    if name in ("", ".", ".."):
        raise ValueError(f"unusable mailbox name {address!r}")
    if len(name) > _MAX_NAME:
        digest = hashlib.sha256(address.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        name = f"{name[: _MAX_NAME - 17]}_{digest}"
    return name


class MaildirHandler(Handler):
    """Delivers every accepted message into Maildirs.

    >>> MaildirHandler("maildir")                          # the catcher: one Maildir
    >>> MaildirHandler("/srv/mail", per_recipient=True)   # /srv/mail/<recipient>/new/...

    Per recipient, each recipient gets its own copy in `<root>/<name>/`, where `name` is
    `mailbox(recipient)` (the address, by default) made safe by `mailbox_name()`; override
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

    def data(self, message: bytes) -> HookResult:
        if not self.per_recipient:
            try:
                path = self.maildir.deliver(message)
            except OSError:
                log.exception("maildir delivery to %s failed", self.maildir.path)
                return Reject(451, "4.3.0 Error: local delivery failed")
            log.debug("delivered %s", path)
            return Accept()
        return self._deliver_each(message)

    def _deliver_each(self, message: bytes) -> HookResult:
        verdicts: dict[str, Decision] = {}
        boxes: dict[Path, list[str]] = {}
        by_path: dict[Path, Maildir] = {}
        for rcpt in self.envelope.recipients:
            try:
                box = self.maildir_for(rcpt)
            except ValueError as exc:
                log.warning("%s: refusing <%s>: %s", self.envelope.queue_id, rcpt, exc)
                verdicts[rcpt] = Reject(550, "5.1.3 Error: unusable mailbox name")
            except OSError:
                log.exception("%s: cannot create the mailbox of <%s>", self.envelope.queue_id, rcpt)
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
