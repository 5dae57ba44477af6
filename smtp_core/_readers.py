"""The readers of message content: DATA text up to CRLF.CRLF, and BDAT chunks by count.

Each reader takes bytes from the receive buffer and says when the content is complete; the
connection decides what that does to the session. Both hold their checks (size, bare CR/LF,
line length) across any split of the input, using bytes methods on whole buffers only.
"""

from __future__ import annotations

from typing import Final, final

from ._config import Config
from ._receivebuffer import ReceiveBuffer
from ._reply import Reply

__all__ = ["ChunkReader", "DataReader"]

_TOO_LARGE: Final = Reply(code=552, text=("Error: message too large",), enhanced="5.3.4")
_LINE_TOO_LONG: Final = Reply(code=500, text=("Error: message line too long",), enhanced="5.5.6")
_BARE_CR_LF: Final = Reply(
    code=550, text=("Error: bare CR or LF in message text",), enhanced="5.5.2"
)


@final
class DataReader:
    """DATA text (RFC 5321 4.1.1.4): only CRLF.CRLF ends it; dot-stuffing is undone.

    Past `max_message_size` the text is counted and dropped as it arrives, so memory stays
    bounded, and the message is refused with 552 once its end has arrived.
    """

    __slots__ = ("_at_start", "_config", "_dropped")

    def __init__(self, config: Config) -> None:
        self._config = config
        self._at_start = False
        self._dropped = 0

    def start(self, buf: ReceiveBuffer) -> None:
        """The text begins at the buffer's read offset (the 354 was just queued)."""
        self._at_start = True
        self._dropped = 0
        buf.start_message()

    def read(self, buf: ReceiveBuffer) -> bytes | Reply | None:
        """The unstuffed content once the end of data has arrived; or the Reply that refuses
        the message (its text was read to the end and dropped); or None: more bytes needed."""
        end = buf.data_end(self._at_start)
        config = self._config
        if end < 0:
            if len(buf) >= 3:
                self._at_start = False
            if len(buf) > config.max_message_size:
                # Keeps the start flag: under 3 octets, ".\r\n" may still be arriving.
                self._dropped += buf.discard_keeping_tail(4)
            return None
        raw = buf.take(end)
        buf.skip(3)  # ".\r\n"
        self._at_start = False
        if self._dropped or len(raw) > config.max_message_size:
            self._dropped = 0
            return _TOO_LARGE
        limit = config.max_text_line
        if limit and max(map(len, raw.split(b"\r\n"))) > limit:
            return _LINE_TOO_LONG
        crlf = raw.count(b"\r\n")
        if raw.count(b"\n") != crlf or raw.count(b"\r") != crlf:
            if config.bare_line_endings == "reject":
                return _BARE_CR_LF
            raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
            stuffed = True  # lines that began after a bare LF were not scanned for dots
        else:
            stuffed = buf.dot_lines
        # Undo dot-stuffing: a leading dot on any line is removed (RFC 5321 4.5.2).
        content = raw.replace(b"\r\n.", b"\r\n") if stuffed else raw
        if content.startswith(b"."):
            content = content[1:]
        return content


@final
class ChunkReader:
    """BDAT chunks (RFC 3030): counted in octets, never scanned, joined into one message.

    A refused chunk is still read, and dropped, so that the session stays in sync (RFC 3030 2).
    """

    __slots__ = ("_chunks", "_config", "_left", "last", "refusal", "size")

    def __init__(self, config: Config) -> None:
        self._config = config
        self._chunks = bytearray()
        self._left = -1  # octets of the current chunk still to come; -1: no chunk
        #: The current chunk is the last one (BDAT n LAST).
        self.last = False
        #: Why the current chunk is refused, or None.
        self.refusal: Reply | None = None
        #: Octets accepted in this transaction so far.
        self.size = 0

    def __len__(self) -> int:
        """Octets held: the accepted chunks of the transaction so far."""
        return len(self._chunks)

    @property
    def active(self) -> bool:
        """A chunk's octets are arriving."""
        return self._left >= 0

    def start(self, count: int, *, last: bool, refusal: Reply | None) -> None:
        """A BDAT command announced `count` octets; `refusal` is why they will be dropped.
        A chunk that would pass `max_message_size` is refused with 552."""
        self._left = count
        self.last = last
        if refusal is None and self.size + count > self._config.max_message_size:
            refusal = _TOO_LARGE
        self.refusal = refusal
        if refusal is None:
            self.size += count

    def read(self, buf: ReceiveBuffer) -> bool:
        """Take the chunk's octets from `buf`; True once the whole chunk has arrived."""
        if self._left:
            if not buf:
                return False
            chunk = buf.take(self._left)
            self._left -= len(chunk)
            if self.refusal is None:
                self._chunks += chunk
            if self._left:
                return False
        self._left = -1
        return True

    def content(self) -> bytes:
        """The chunks of the transaction, joined; the reader is empty afterwards."""
        content = bytes(self._chunks)
        self.clear()
        return content

    def clear(self) -> None:
        """Forget the transaction's chunks (RSET, a new EHLO, a refused chunk)."""
        self._chunks.clear()
        self.size = 0
