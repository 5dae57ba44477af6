"""Maildir delivery: each message becomes exactly one file, durably, before the 250.

The order is what makes it safe against a crash at any instant: write into tmp/, fsync the
file, rename into new/, fsync the new/ directory. A reader never sees a partial file in new/,
and a message the client saw accepted is on disk.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from pathlib import Path

from smtp_core import Accept, Reject

from ._handler import Handler, HookResult

__all__ = ["Maildir", "MaildirHandler"]

log = logging.getLogger("smtpkit.maildir")
_counter = itertools.count()


class Maildir:
    """One Maildir folder with tmp/, new/ and cur/, created on first use."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
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
        dir_fd = os.open(self.path / "new", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final


class MaildirHandler(Handler):
    """The catcher's store: every accepted message becomes one file in one Maildir."""

    def __init__(self, maildir: Maildir | str | os.PathLike[str] = "maildir") -> None:
        self.maildir = maildir if isinstance(maildir, Maildir) else Maildir(maildir)

    def data(self, message: bytes) -> HookResult:
        try:
            path = self.maildir.deliver(message)
        except OSError:
            log.exception("maildir delivery to %s failed", self.maildir.path)
            return Reject(451, "4.3.0 Error: local delivery failed")
        log.debug("delivered %s", path)
        return Accept()
