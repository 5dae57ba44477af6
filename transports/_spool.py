"""The spool: where message content waits between DATA and the handler's decision.

Each session collects content in memory up to `spool_threshold` (1 MiB), then in a file, so a
session holds at most that much message in memory however large the message. The files of one
server instance live in its own folder, `<spool_dir>/instance-<pid>-<random>/`, held by an
exclusive `flock` for as long as the instance runs: a folder whose lock can be taken was left
by an instance that died (kill -9, a power cut) and is removed when the next one starts; a live
instance's folder never is. A spool file is removed as soon as its message is answered,
aborted or cut off, and the folder when the server stops.

Files count against a disk budget, `spool_max_bytes` (1 GiB): the session whose content would
cross it (or whose write fails: a full disk) has its file removed at once, the rest of its
content is counted and dropped, and the end of data is answered `452 4.3.1` instead of calling
the handler. The disk never fills up on the spool's account.

Writes go straight to the file from the event loop (or I/O thread): the engine hands content
over in pieces of at most 64 KiB, and a write of that size to a local file lands in the page
cache in microseconds; nothing is ever fsync'ed here (the deliverer makes its copy durable).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import Final, final

from smtpkit.handlers import Message

from ._observer import Observer

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_THRESHOLD", "Spool", "Spooler"]

log = logging.getLogger("smtpkit")

DEFAULT_THRESHOLD: Final = 1 << 20
DEFAULT_MAX_BYTES: Final = 1 << 30
#: Instance folders are named this, then the pid and a random part.
_PREFIX: Final = "instance-"
#: A folder being made: invisible to the sweep until it is locked and renamed.
_NEW_PREFIX: Final = ".new-"


@final
class Spooler:
    """The spool of one server instance: the threshold, the folder and the disk budget.

    `start()` makes the folder (and removes those of dead instances); without it the folder
    is made when the first message needs a file. `stop()` removes it with what is left in it.
    """

    def __init__(
        self,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        folder: str | os.PathLike[str] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        observer: Observer | None = None,
    ) -> None:
        self.threshold = threshold
        self.max_bytes = max_bytes
        #: Told the bytes on disk after each change (metrics), when set.
        self.observer = observer
        self._option = Path(folder) if folder is not None else None
        self._folder: Path | None = None
        self._lock_fd = -1
        self._used = 0
        self._names = itertools.count()
        self._mutex = threading.Lock()

    @property
    def parent(self) -> Path:
        """Where instance folders go: the `folder` given, or smtpkit-spool-<uid> in the system
        temp dir, for the user the server runs as (asked when needed: after `--user`)."""
        if self._option is not None:
            return self._option
        return Path(tempfile.gettempdir()) / f"smtpkit-spool-{os.getuid()}"

    @property
    def folder(self) -> Path | None:
        """This instance's folder, once made."""
        return self._folder

    @property
    def used(self) -> int:
        """Bytes of spool files on disk now."""
        return self._used

    def new(self) -> Spool:
        """An empty spool for one message."""
        return Spool(self)

    # ------------------------------------------------------------------ the folder

    def start(self) -> None:
        """Make this instance's folder, locked, and remove those of instances that died.
        OSError when the spool directory cannot be used."""
        with self._mutex:
            if self._folder is None:
                try:
                    self._make_folder()
                except OSError as exc:
                    why = f"cannot use the spool directory {self.parent}: {exc.strerror or exc}"
                    raise OSError(exc.errno, why) from exc

    def stop(self) -> None:
        """Remove this instance's folder and everything in it."""
        with self._mutex:
            folder, self._folder = self._folder, None
            fd, self._lock_fd = self._lock_fd, -1
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        if fd >= 0:
            os.close(fd)

    def _make_folder(self) -> None:
        parent = self.parent
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._option is None:
            _check_private(parent)
        new = Path(tempfile.mkdtemp(prefix=_NEW_PREFIX, dir=parent))
        fd = os.open(new, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            final = parent / f"{_PREFIX}{os.getpid()}-{new.name[len(_NEW_PREFIX) :]}"
            os.rename(new, final)
        except BaseException:
            os.close(fd)
            shutil.rmtree(new, ignore_errors=True)
            raise
        self._folder, self._lock_fd = final, fd
        _sweep(parent, keep=final)

    def _file(self) -> tuple[int, str]:
        """A new spool file, open for writing."""
        with self._mutex:
            if self._folder is None:
                self._make_folder()
            assert self._folder is not None
            path = str(self._folder / str(next(self._names)))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        return os.open(path, flags, 0o600), path

    # ------------------------------------------------------------------ the budget

    def _reserve(self, count: int) -> bool:
        with self._mutex:
            if self._used + count > self.max_bytes:
                return False
            self._used += count
            if self.observer is not None:
                self.observer.spool_bytes(self._used)
            return True

    def _release(self, count: int) -> None:
        with self._mutex:
            self._used -= count
            if self.observer is not None:
                self.observer.spool_bytes(self._used)

    def __repr__(self) -> str:
        return f"<Spooler {self._folder or self.parent} used={self._used}/{self.max_bytes}>"


def _check_private(folder: Path) -> None:
    """The default parent is in a world-writable temp dir: it must be ours, a real folder,
    and closed to others, or another user could read or plant spool files."""
    info = os.lstat(folder)
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.getuid()
        or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    ):
        raise PermissionError(errno.EACCES, "not a private folder of this user")


def _sweep(parent: Path, *, keep: Path) -> None:
    """Remove the instance folders under `parent` whose lock nobody holds."""
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(_PREFIX)]
    except OSError as exc:
        log.warning("cannot look for stale spool folders in %s: %s", parent, exc)
        return
    for entry in entries:
        if entry.path == str(keep):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue  # removed meanwhile, or not a folder
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live instance holds it
            count = sum(1 for _ in os.scandir(entry.path))
            shutil.rmtree(entry.path, ignore_errors=True)
            log.info(
                "removed the spool folder of a dead instance, %s (%d files)", entry.path, count
            )
        except OSError as exc:
            log.warning("cannot remove the stale spool folder %s: %s", entry.path, exc)
        finally:
            os.close(fd)


@final
class Spool:
    """The content of one message as it arrives: memory first, then a file.

    `write()` every piece, then `message()` for the handler, and `discard()` on every path
    (it is idempotent). After the budget was crossed, `overflowed` is true and pieces are
    only counted."""

    __slots__ = ("_chunks", "_disk", "_fd", "_path", "_spooler", "overflowed", "size")

    def __init__(self, spooler: Spooler) -> None:
        self._spooler = spooler
        self._chunks: list[bytes] = []
        self._fd = -1
        self._path: str | None = None
        #: Bytes of the file counted against the budget.
        self._disk = 0
        #: Bytes written so far (counted on after an overflow).
        self.size = 0
        self.overflowed = False

    def write(self, data: bytes) -> None:
        """Add a piece of content."""
        size = self.size
        self.size = size + len(data)
        if self.overflowed:
            return
        if self._fd < 0:
            if self.size <= self._spooler.threshold:
                self._chunks.append(data)
                return
            if not self._to_file():
                return
        self._write_file(data)

    def message(self) -> Message:
        """The content for `data()`: call it once, after the last write, unless overflowed."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            return Message.spooled(path=self._path, size=self.size)
        return Message.spooled(chunks=self._chunks, size=self.size)

    def discard(self) -> None:
        """Drop the content: close and remove the file, give its bytes back to the budget."""
        self._chunks = []
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
            self._path = None
        if self._disk:
            self._spooler._release(self._disk)
            self._disk = 0

    @property
    def on_disk(self) -> bool:
        return self._path is not None

    def _to_file(self) -> bool:
        try:
            self._fd, self._path = self._spooler._file()
        except OSError as exc:
            log.error("cannot create a spool file in %s: %s", self._spooler.parent, exc)
            self._overflow()
            return False
        chunks, self._chunks = self._chunks, []
        return all(self._write_file(chunk) for chunk in chunks)

    def _write_file(self, data: bytes) -> bool:
        if not self._spooler._reserve(len(data)):
            log.warning(
                "spool budget of %d bytes reached: message content discarded, 452 follows",
                self._spooler.max_bytes,
            )
            self._overflow()
            return False
        self._disk += len(data)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            log.error("cannot write to spool file %s: %s", self._path, exc)
            self._overflow()
            return False
        return True

    def _overflow(self) -> None:
        size = self.size
        self.discard()
        self.size = size
        self.overflowed = True
