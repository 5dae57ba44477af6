"""The receive buffer: one bytearray with a read offset, searched with bytes methods only.

Consumed bytes are dropped lazily (`compact()`), so a burst of pipelined commands is parsed
without copying the rest of the buffer after each one.
"""

from __future__ import annotations

import enum
from typing import Final, final

__all__ = ["TOO_LONG", "ReceiveBuffer", "TooLong"]

_DATA_END: Final = b"\r\n.\r\n"


class TooLong(enum.Enum):
    TOO_LONG = "TOO_LONG"


TOO_LONG: Final = TooLong.TOO_LONG


@final
class ReceiveBuffer:
    __slots__ = ("_data", "_dot_lines", "_pos", "_scan", "_skipping")

    def __init__(self) -> None:
        self._data = bytearray()
        self._pos = 0  # start of unconsumed bytes
        self._scan = 0  # where the next search for a terminator resumes
        self._skipping = False  # inside an over-long line
        self._dot_lines = False  # the message text so far has a line starting with "."

    def __len__(self) -> int:
        return len(self._data) - self._pos

    def append(self, data: bytes | bytearray) -> None:
        self._data += data

    def compact(self) -> None:
        """Drop consumed bytes; call when the caller is about to wait for more data."""
        if self._pos:
            del self._data[: self._pos]
            self._scan = max(self._scan - self._pos, 0)
            self._pos = 0

    def clear(self) -> None:
        self._data.clear()
        self._pos = self._scan = 0
        self._skipping = False

    def line(self, limit: int) -> bytes | TooLong | None:
        """Take one line ending in LF (CR LF or bare LF), without its ending.

        None: no full line yet. TOO_LONG: the line was longer than `limit`; its bytes are
        dropped as they arrive (memory stays bounded) and TOO_LONG is returned once, when the
        line finally ends, so the caller answers it once and is back in sync.
        """
        data = self._data
        pos = self._pos
        end = data.find(b"\n", max(self._scan, pos))
        if end < 0:
            if len(data) - pos > limit:
                self.clear()
                self._skipping = True
            else:
                self._scan = len(data)
            return None
        self._pos = self._scan = end + 1
        if self._skipping or end + 1 - pos > limit:
            self._skipping = False
            return TOO_LONG
        if end > pos and data[end - 1] == 13:
            end -= 1
        return bytes(data[pos:end])

    def peek(self, count: int) -> bytes:
        """The next `count` unconsumed bytes (or fewer), left in place."""
        return bytes(self._data[self._pos : self._pos + count])

    def take(self, count: int) -> bytes:
        """Take up to `count` bytes (one copy: a bytearray slice would make two)."""
        pos = self._pos
        with memoryview(self._data) as view:
            chunk = bytes(view[pos : pos + count])
        self._pos = self._scan = pos + len(chunk)
        return chunk

    def start_message(self) -> None:
        """Message text begins at the read offset: forget what the last message's scan saw."""
        self._dot_lines = False
        self._scan = self._pos

    @property
    def dot_lines(self) -> bool:
        """Whether a line of the text that `data_end()` scanned begins with a dot (after the
        first line, which the caller checks): only then is there dot-stuffing to undo."""
        return self._dot_lines

    def rfind_crlf(self, within: int) -> int:
        """Where the last CRLF in the next `within` unconsumed bytes begins, relative to the
        read offset; -1 if there is none."""
        pos = self._pos
        found = self._data.rfind(b"\r\n", pos, pos + within)
        return found - pos if found >= 0 else -1

    def data_end(self, at_start: bool, within: int) -> int:
        """The index just past the message text up to and including the CRLF before the final
        dot, relative to the read offset, if that is at most about `within` octets on; else -1.
        `at_start`: the text began right here, so the DATA line's own CRLF counts as the one
        before the dot.

        Until a dot-stuffed line turns up, the scan looks for CRLF "." (which both begin), so
        that one pass finds the end and tells whether unstuffing is needed at all. Only the
        next `within` octets are scanned: the caller takes them before asking again."""
        data = self._data
        pos = self._pos
        if at_start and data.startswith(b".\r\n", pos):
            return 0
        start = max(self._scan - 4, pos)
        stop = min(len(data), pos + within + 3)
        while not self._dot_lines:
            found = data.find(b"\r\n.", start, stop)
            if found < 0:
                self._scan = stop
                return -1
            if len(data) < found + 5:  # too short to tell a dot line from the end: wait
                self._scan = found
                return -1
            if data[found + 3] == 13 and data[found + 4] == 10:
                return found + 2 - pos
            self._dot_lines = True
            start = found + 3
        found = data.find(_DATA_END, start, stop + 2)
        if found < 0:
            self._scan = stop
            return -1
        return found + 2 - pos

    def skip(self, count: int) -> None:
        self._pos += count
        self._scan = self._pos
