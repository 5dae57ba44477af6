"""The ready handlers that never block: sink and print."""

from __future__ import annotations

import codecs
import logging
import sys
from typing import ClassVar

from smtp_core import Accept

from ._handler import Handler, HookResult
from ._message import Message
from ._trace import log_escape

__all__ = ["PrintHandler", "SinkHandler"]

log = logging.getLogger("smtpkit.print")
_RULE = "-" * 10


class SinkHandler(Handler):
    """Accepts everything and keeps nothing: for benchmarks and for testing clients."""

    blocking: ClassVar[bool] = False

    def data(self, message: Message) -> HookResult:
        return Accept()


class PrintHandler(Handler):
    """Logs one line per message; with `dump`, prints the whole message to stdout too
    (aiosmtpd's Debugging handler), with newlines for CRLF and U+FFFD for undecodable bytes."""

    blocking: ClassVar[bool] = False

    def __init__(self, dump: bool = False) -> None:
        self.dump = dump

    def data(self, message: Message) -> HookResult:
        env = self.envelope
        log.info(
            "message from=<%s> to=%s size=%d",
            log_escape(env.sender or ""),
            ",".join(f"<{log_escape(r)}>" for r in env.recipients),
            message.size,
        )
        if self.dump:
            _dump(message)
        return Accept()


def _dump(message: Message) -> None:
    """Print the message a piece at a time, however large: CRLF as newlines, undecodable
    bytes as U+FFFD."""
    out = sys.stdout
    out.write(f"{_RULE} MESSAGE FOLLOWS {_RULE}\n")
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    held = ""  # a CR that may be the first half of a CRLF split between two pieces
    for piece in message.chunks():
        text = held + decoder.decode(piece)
        held = "\r" if text.endswith("\r") else ""
        out.write(text[: len(text) - len(held)].replace("\r\n", "\n"))
    out.write(held + decoder.decode(b"", final=True))
    out.write(f"\n{_RULE} END MESSAGE {_RULE}\n")
    out.flush()
