"""The message given to `Handler.data()`: spooled content plus an ordered list of header edits.

The content arrives once and is never copied to change it: a policy that adds
`Authentication-Results:` or a `DKIM-Signature:`, or removes a forged header, records an edit,
and the edits are applied as the message is read (`open()`, `chunks()`, `read()`). Small
messages stay in memory; larger ones are in a spool file (`path`), read a piece at a time, so
a deliverer never needs the whole message in memory.

    def data(self, message):
        raw = bytes(message)                    # small messages: the whole content
        with message.open() as file:            # any size: a binary file
            parsed = email.message_from_binary_file(file)
        for piece in message.chunks():          # any size: bounded pieces, for delivery
            out.write(piece)
"""

from __future__ import annotations

import enum
import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final, final

__all__ = ["EditKind", "HeaderEdit", "Message"]

#: Pieces read from a spool file: large enough to be fast, small enough to stay bounded.
READ_SIZE: Final = 1 << 20
#: Header removals look at the header fields in this much of the content; a header section
#: larger than that keeps its later fields (Postfix keeps 100 KiB of a header).
HEADER_SCAN: Final = 256 * 1024

#: One header field: a line that starts with neither WSP nor CR/LF, and its continuation lines.
_FIELD: Final = re.compile(rb"[^ \t\r\n][^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")
_FOLD: Final = re.compile(rb"\r\n(?=[ \t])")
#: RFC 5322 ftext: printable US-ASCII but ":".
_FIELD_NAME: Final = re.compile(r"[!-9;-~]+\Z")
#: A header value's line breaks must be folds: CRLF then a space or a tab.
_BAD_BREAK: Final = re.compile(r"\r(?!\n[ \t])|(?<!\r)\n|\r\n(?![ \t])")


class EditKind(enum.Enum):
    """What a `HeaderEdit` does."""

    #: A header field added at the top of the header section.
    ADD = "add"
    #: Header fields with this name (and a value `where` accepts) removed.
    REMOVE = "remove"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderEdit:
    """One entry of `Message.edits`."""

    kind: EditKind
    #: The field name, as given.
    name: str
    #: ADD: the whole field as written, CRLF-terminated.
    field: bytes = b""
    #: REMOVE: only fields whose (unfolded, stripped) value this accepts; None: every one.
    where: Callable[[str], bool] | None = None

    def removes(self, name: bytes, value: bytes) -> bool:
        """True when this removal applies to the field `name: value`."""
        if name.decode("ascii", "replace").strip().lower() != self.name.lower():
            return False
        if self.where is None:
            return True
        text = _FOLD.sub(b"", value).strip().decode("utf-8", "replace")
        return self.where(text)


@final
class Message:
    """The content of one message as `data()` receives it, with the `Received:` header the
    server wrote first.

    `size` is its length as read; `open()` a binary file reading it; `read()` or `bytes(message)`
    the whole of it (in memory: for small messages); `chunks()` bounded pieces of it. Header
    edits (`add_header()`, `remove_header()`) are kept in order and applied as it is read.

    Valid until `data()` returns: the server removes the spool file then. Keep
    `bytes(message)` (or your own copy of the file) if you need it later.

    `Message(b"...")` makes one from bytes, to call a handler's `data()` in a test.
    """

    __slots__ = ("_chunks", "_edits", "_path", "_raw_size", "_size", "_size_edits")

    def __init__(self, content: bytes | bytearray = b"") -> None:
        self._chunks: tuple[bytes, ...] = (bytes(content),) if content else ()
        self._path: str | None = None
        self._raw_size = len(content)
        self._edits: list[HeaderEdit] = []
        self._size = self._raw_size
        self._size_edits = 0

    @classmethod
    def spooled(
        cls, *, chunks: Iterable[bytes] = (), path: str | None = None, size: int
    ) -> Message:
        """The message held in memory as `chunks`, or in the file `path` (its `size` bytes);
        what the server's spool gives. The file must not change while the message is used."""
        message = cls()
        message._chunks = tuple(chunks)
        message._path = path
        message._raw_size = message._size = size
        return message

    # ------------------------------------------------------------------ reading

    @property
    def size(self) -> int:
        """The length in octets of the message as read, edits applied."""
        if self._size_edits != len(self._edits):
            top, removals = self._plan()
            removed = _removed_bytes(self._raw_chunks(), removals) if removals else 0
            self._size = sum(map(len, top)) + self._raw_size - removed
            self._size_edits = len(self._edits)
        return self._size

    def __len__(self) -> int:
        return self.size

    @property
    def path(self) -> str | None:
        """The spool file holding the content when it is on disk (None: in memory). It holds
        the content without the header edits; read-only, and removed when `data()` returns.
        A deliverer may hard-link it when `edits` is empty."""
        return self._path

    @property
    def edits(self) -> tuple[HeaderEdit, ...]:
        """The header edits so far, in the order they were made."""
        return tuple(self._edits)

    def chunks(self) -> Iterator[bytes]:
        """The message as read, edits applied, in pieces of at most 1 MiB from a spool file
        (as they arrived for one in memory). Never the whole of a spooled message at once."""
        top, removals = self._plan()
        yield from top
        raw = self._raw_chunks()
        if removals:
            yield from _filter_header(raw, removals)
        else:
            yield from raw

    def open(self) -> BinaryIO:
        """A binary file that reads the message, edits applied. Close it (or use `with`)."""
        return io.BufferedReader(_ChunkReader(self.chunks()), buffer_size=64 * 1024)

    def read(self) -> bytes:
        """The whole message as bytes, edits applied: for small messages."""
        if not self._edits and len(self._chunks) == 1:
            return self._chunks[0]
        return b"".join(self.chunks())

    def __bytes__(self) -> bytes:
        return self.read()

    # ------------------------------------------------------------------ header edits

    def add_header(self, name: str, value: str) -> None:
        """Add the field `name: value` at the top of the header section (above the fields
        added before it, as each hop of a mail's path does). A value may be folded (CRLF and a
        space or tab); any other CR or LF is a ValueError, so a value can never start a
        header of its own."""
        if not _FIELD_NAME.match(name):
            raise ValueError(f"not a header field name: {name!r}")
        if _BAD_BREAK.search(value):
            raise ValueError("a header value may contain CR LF only to fold it")
        self.add_field(f"{name}: {value}\r\n".encode())

    def add_field(self, field: bytes) -> None:
        """Add a whole header field, already formatted (`b"DKIM-Signature: v=1; ...\\r\\n"`),
        at the top of the header section, byte for byte: for signatures that cover it."""
        if not field.endswith(b"\r\n"):
            field += b"\r\n"
        match = _FIELD.fullmatch(field)
        colon = field.find(b":")
        if match is None or colon < 1 or not _FIELD_NAME.match(field[:colon].decode("latin-1")):
            raise ValueError("not one header field")
        name = field[:colon].decode("ascii")
        self._edits.append(HeaderEdit(kind=EditKind.ADD, name=name, field=field))

    def remove_header(self, name: str, where: Callable[[str], bool] | None = None) -> None:
        """Remove every field called `name` (case-insensitively) that is in the message at
        this point, added ones included; with `where`, only those whose value (unfolded,
        stripped) it accepts, as in `where=lambda v: v.split(";")[0].strip() == "mx.example"`
        to drop forged `Authentication-Results:`. Fields past the first 256 KiB of a header
        section are never removed."""
        if not _FIELD_NAME.match(name):
            raise ValueError(f"not a header field name: {name!r}")
        self._edits.append(HeaderEdit(kind=EditKind.REMOVE, name=name, where=where))

    # ------------------------------------------------------------------ internals

    def _plan(self) -> tuple[list[bytes], list[HeaderEdit]]:
        """The fields to write on top (topmost first) and the removals for the original
        header, from the edits in order: a removal also drops what was added before it."""
        added: list[HeaderEdit] = []
        removals: list[HeaderEdit] = []
        for edit in self._edits:
            if edit.kind is EditKind.ADD:
                added.append(edit)
                continue
            removals.append(edit)
            added = [a for a in added if not _removes(edit, a.field)]
        return [a.field for a in reversed(added)], removals

    def _raw_chunks(self) -> Iterator[bytes]:
        if self._path is None:
            yield from self._chunks
            return
        with open(self._path, "rb", buffering=0) as file:
            while piece := file.read(READ_SIZE):
                yield piece

    def __repr__(self) -> str:
        where = f"file {self._path!r}" if self._path else "memory"
        return f"<Message size={self._raw_size} in {where} edits={len(self._edits)}>"


def _removes(edit: HeaderEdit, field: bytes) -> bool:
    colon = field.find(b":")
    return edit.removes(field[:colon], field[colon + 1 :])


def _head(raw: Iterator[bytes]) -> tuple[bytearray, bool]:
    """Up to HEADER_SCAN bytes from `raw`, enough to hold the header section when it is that
    small; and whether the end of the header section (or of the content) is in them."""
    head = bytearray()
    for piece in raw:
        start = max(0, len(head) - 3)
        head += piece
        if head.startswith(b"\r\n") or head.find(b"\r\n\r\n", start) >= 0:
            return head, True
        if len(head) >= HEADER_SCAN:
            return head, False
    return head, True  # the whole content


def _fields(head: bytes | bytearray, ended: bool) -> tuple[list[tuple[int, int]], int]:
    """The (start, end) of each complete header field at the start of `head`, and where they
    stop: at the blank line, at a line that is not a field, or where `head` is cut."""
    limit = min(len(head), HEADER_SCAN)
    spans: list[tuple[int, int]] = []
    pos = 0
    while pos < limit:
        match = _FIELD.match(head, pos)
        if match is None:
            break
        end = match.end()
        if end > limit or (end == len(head) and not ended):
            break  # cut: its continuation lines may be in the next piece
        line_end = head.find(b"\n", pos)
        if head.find(b":", pos, line_end) < 0:
            break  # not a header field: the body begins here
        spans.append((pos, end))
        pos = end
    return spans, pos


def _filter_header(raw: Iterator[bytes], removals: list[HeaderEdit]) -> Iterator[bytes]:
    head, ended = _head(raw)
    spans, stop = _fields(head, ended)
    kept = bytearray()
    for start, end in spans:
        if not _removed(bytes(head[start:end]), removals):
            kept += head[start:end]
    kept += head[stop:]
    yield bytes(kept)
    yield from raw


def _removed(field: bytes, removals: list[HeaderEdit]) -> bool:
    colon = field.find(b":")
    name, value = field[:colon], field[colon + 1 :]
    return any(r.removes(name, value) for r in removals)


def _removed_bytes(raw: Iterator[bytes], removals: list[HeaderEdit]) -> int:
    head, ended = _head(raw)
    spans, _ = _fields(head, ended)
    _close(raw)
    return sum(end - start for start, end in spans if _removed(bytes(head[start:end]), removals))


def _close(iterator: Iterator[bytes]) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


class _ChunkReader(io.RawIOBase):
    """A raw binary file over an iterator of byte strings."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._rest = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._rest:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._rest = memoryview(piece)
        count = min(len(buffer), len(self._rest))
        buffer[:count] = self._rest[:count]
        self._rest = self._rest[count:]
        return count

    def close(self) -> None:
        if not self.closed:
            _close(self._pieces)
            self._rest = memoryview(b"")
        super().close()
