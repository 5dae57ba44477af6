"""The readers of message content: DATA text up to CRLF.CRLF, and BDAT chunks by count.

Each reader takes bytes from the receive buffer and hands the content on in pieces of at most
`CHUNK_SIZE` octets as they arrive, so the engine never holds a message; it says when the
content is complete or has failed, and the connection decides what that does to the session.
Both hold their checks (size, bare CR/LF, line length, dot-unstuffing) across any split of the
input, using bytes methods on whole pieces only, never a Python loop over bytes.
"""

from __future__ import annotations

import enum
from typing import Final, final

from ._config import Config
from ._events import CHUNK_SIZE, AbortReason
from ._receivebuffer import ReceiveBuffer
from ._reply import Reply

__all__ = ["END", "ChunkDone", "ChunkReader", "DataReader", "End"]

_TOO_LARGE: Final = Reply(code=552, text=("Error: message too large",), enhanced="5.3.4")
_LINE_TOO_LONG: Final = Reply(code=500, text=("Error: message line too long",), enhanced="5.5.6")
_BARE_CR_LF: Final = Reply(
    code=550, text=("Error: bare CR or LF in message text",), enhanced="5.5.2"
)


#: The failures of DATA text, gravest first: the message is refused for the gravest it had.
_GRAVITY: Final = (
    AbortReason.TOO_LARGE,
    AbortReason.LINE_TOO_LONG,
    AbortReason.BARE_LINE_ENDING,
)
_TOO_LARGE_AT: Final = 0
_LINE_TOO_LONG_AT: Final = 1
_BARE_AT: Final = 2
#: The reply at the end of content that failed, by the reason it failed.
_FAILURE_REPLIES: Final = {
    AbortReason.TOO_LARGE: _TOO_LARGE,
    AbortReason.BARE_LINE_ENDING: _BARE_CR_LF,
    AbortReason.LINE_TOO_LONG: _LINE_TOO_LONG,
}


class End(enum.Enum):
    #: The content is complete.
    END = "END"


END: Final = End.END


def _normalized(piece: bytes) -> bytes:
    """Every bare CR and bare LF of `piece` made a CRLF."""
    return piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


@final
class DataReader:
    """DATA text (RFC 5321 4.1.1.4): only CRLF.CRLF ends it; dot-stuffing is undone.

    The text is handed on in pieces cut after a CRLF where one is near (so that a dot-stuffed
    line or the final dot is always seen whole), or else short of the last octet (which may be
    the CR of a CRLF). After the first failure (too large, a line too long, a bare CR/LF)
    nothing more is handed on, but the text is still checked as it is dropped, so memory stays
    bounded and the verdict does not depend on how the input was split: once the end of data
    has arrived, the message is refused for the gravest failure, in that order.
    """

    __slots__ = (
        "_at_start",
        "_config",
        "_dot_start",
        "_ended",
        "_failure",
        "_line",
        "_raw",
        "size",
    )

    def __init__(self, config: Config) -> None:
        self._config = config
        #: The read offset is just after a CRLF: the final dot may begin there.
        self._at_start = False
        #: A dot at the read offset would begin a line: dot-stuffing to undo.
        self._dot_start = False
        #: The gravest failure so far (an index in `_GRAVITY`), or -1.
        self._failure = -1
        self._ended = False  # the end of data of a failed message was read
        self._line = 0  # octets of the line in progress
        self._raw = 0  # octets of text so far, as sent (stuffed)
        #: Octets of content handed on so far (unstuffed).
        self.size = 0

    def start(self, buf: ReceiveBuffer) -> None:
        """The text begins at the buffer's read offset (the 354 was just queued)."""
        self._at_start = self._dot_start = True
        self._failure = -1
        self._ended = False
        self._line = self._raw = self.size = 0
        buf.start_message()

    def read(self, buf: ReceiveBuffer) -> bytes | End | AbortReason | Reply | None:
        """The next piece of content (bytes); END once the end of data has arrived. For text
        that failed: the reason, once its end of data has arrived, then the Reply. None: more
        bytes needed."""
        if self._ended:
            self._ended = False
            return _FAILURE_REPLIES[_GRAVITY[self._failure]]
        while True:
            end = buf.data_end(self._at_start, CHUNK_SIZE)
            if end == 0:
                buf.skip(3)  # ".\r\n"
                if self._failure < 0:
                    return END
                self._ended = True
                return _GRAVITY[self._failure]
            window = min(len(buf) if end < 0 else end, CHUNK_SIZE)
            line_end = buf.rfind_crlf(window)
            if line_end >= 0:
                raw = buf.take(line_end + 2)
                at_start = True
            elif window < (3 if self._at_start else 2):
                return None  # too short to tell a dot-stuffed line from the final dot
            else:
                raw = buf.take(window - 1)  # the last octet may be a CR whose LF is coming
                at_start = False
            piece = self._piece(raw, at_start, buf.dot_lines)
            if piece:
                return piece

    def _piece(self, raw: bytes, at_start: bool, dot_lines: bool) -> bytes:
        """Check `raw` and undo its dot-stuffing (b"" once the text failed); `at_start`: the
        text after it starts a line; `dot_lines`: a line of the text may begin with a dot."""
        config = self._config
        self._at_start = at_start
        self._raw += len(raw)
        if self._raw > config.max_message_size:
            self._failure = _TOO_LARGE_AT
        if self._failure == _TOO_LARGE_AT:
            return b""  # nothing graver: just count
        limit = config.max_text_line
        if limit:
            lines = raw.split(b"\r\n")
            first = self._line + len(lines[0])
            if first > limit or (len(lines) > 1 and max(map(len, lines[1:])) > limit):
                self._failure = _LINE_TOO_LONG_AT
            self._line = first if len(lines) == 1 else len(lines[-1])
        if self._failure >= 0:
            return b""
        if self._dot_start and raw.startswith(b"."):
            raw = raw[1:]
        crlf = raw.count(b"\r\n")
        bare = raw.count(b"\n") != crlf or raw.count(b"\r") != crlf
        if bare:
            if config.bare_line_endings == "reject":
                self._failure = _BARE_AT
                return b""
            raw = _normalized(raw)
        # After a bare CR or LF made a line end, a dot is stuffing too.
        self._dot_start = at_start or (bare and raw.endswith(b"\n"))
        # Undo dot-stuffing: a leading dot on any line is removed (RFC 5321 4.5.2).
        content = raw.replace(b"\r\n.", b"\r\n") if dot_lines or bare else raw
        self.size += len(content)
        return content


class ChunkDone(enum.Enum):
    #: Every octet of the current chunk has arrived.
    DONE = "DONE"


@final
class ChunkReader:
    """BDAT chunks (RFC 3030): counted in octets, never dot-scanned, handed on as they arrive.

    Bare CR and LF are checked (or normalised) as in DATA text, across chunk and piece
    boundaries: a relay that sent such content on as DATA would recreate SMTP smuggling. A
    refused chunk is still read, and dropped, so that the session stays in sync (RFC 3030 2).
    """

    __slots__ = ("_config", "_cr", "_left", "active", "last", "refusal", "sent", "size")

    def __init__(self, config: Config) -> None:
        self._config = config
        self._left = -1  # octets of the current chunk still to come; -1: no chunk
        #: A chunk's octets are arriving (an attribute: the engine asks before every line).
        self.active = False
        #: reject: the last piece handed on ended with a CR; normalize: a CR is held back.
        self._cr = False
        #: The current chunk is the last one (BDAT n LAST).
        self.last = False
        #: Why the current chunk is refused, or None.
        self.refusal: Reply | None = None
        #: Octets accepted in this transaction so far (announced by the BDAT commands).
        self.size = 0
        #: Octets of content handed on in this transaction so far.
        self.sent = 0

    def start(self, count: int, *, last: bool, refusal: Reply | None) -> None:
        """A BDAT command announced `count` octets; `refusal` is why they will be dropped.
        A chunk that would pass `max_message_size` is refused with 552."""
        self._left = count
        self.active = True
        self.last = last
        if refusal is None and self.size + count > self._config.max_message_size:
            refusal = _TOO_LARGE
        self.refusal = refusal
        if refusal is None:
            self.size += count

    def read(self, buf: ReceiveBuffer) -> bytes | ChunkDone | AbortReason | None:
        """The next piece of the chunk's content (bytes); DONE once the whole chunk has
        arrived; the reason it failed, once (a bare CR or LF: the rest of the chunk is then
        dropped and `refusal` says why); None: more bytes needed."""
        while self._left > 0:
            if not buf:
                return None
            piece = buf.take(min(self._left, CHUNK_SIZE))
            self._left -= len(piece)
            if self.refusal is None:
                checked = self._check(piece, end=self.last and not self._left)
                if checked:
                    return checked
        if self.last and self._cr and self.refusal is None:
            # The CR that ended the previous chunk ends the message: a bare CR.
            return self._check(b"", end=True)
        self._left = -1
        self.active = False
        return ChunkDone.DONE

    def _check(self, piece: bytes, *, end: bool) -> bytes | AbortReason:
        """`piece` if its line endings are all CRLF (a CR at its end may be completed by the
        next piece, unless `end`); else a failure, or the piece normalised."""
        held = self._cr
        crlf = piece.count(b"\r\n")
        joins = held and piece.startswith(b"\n")  # the LF of the CR that ended the last piece
        trailing = piece.endswith(b"\r") and not end
        clean = (
            (joins or not held)
            and piece.count(b"\n") - joins == crlf
            and piece.count(b"\r") - trailing == crlf
        )
        if self._config.bare_line_endings == "reject":
            if not clean:
                self.refusal = _BARE_CR_LF
                return AbortReason.BARE_LINE_ENDING
            self._cr = trailing
            self.sent += len(piece)
            return piece
        if held:
            piece = b"\r" + piece
        self._cr = trailing
        if trailing:
            piece = piece[:-1]
        if not clean:
            piece = _normalized(piece)
        self.sent += len(piece)
        return piece

    def clear(self) -> None:
        """Forget the transaction's chunks (RSET, a new EHLO, a refused chunk, its end)."""
        self.size = self.sent = 0
        self._cr = False
