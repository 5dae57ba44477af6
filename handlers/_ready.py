"""The ready handlers that never block: sink and print."""

from __future__ import annotations

import logging
from typing import ClassVar

from smtp_core import Accept

from ._handler import Handler, HookResult
from ._trace import log_escape

__all__ = ["PrintHandler", "SinkHandler"]

log = logging.getLogger("smtpkit.print")
_RULE = "-" * 10


class SinkHandler(Handler):
    """Accepts everything and keeps nothing: for benchmarks and for testing clients."""

    blocking: ClassVar[bool] = False

    def data(self, message: bytes) -> HookResult:
        return Accept()


class PrintHandler(Handler):
    """Logs one line per message; with `dump`, prints the whole message to stdout too
    (aiosmtpd's Debugging handler), with newlines for CRLF and U+FFFD for undecodable bytes."""

    blocking: ClassVar[bool] = False

    def __init__(self, dump: bool = False) -> None:
        self.dump = dump

    def data(self, message: bytes) -> HookResult:
        env = self.envelope
        log.info(
            "message from=<%s> to=%s size=%d",
            log_escape(env.sender),
            ",".join(f"<{log_escape(r)}>" for r in env.recipients),
            len(message),
        )
        if self.dump:
            text = message.decode("utf-8", errors="replace").replace("\r\n", "\n")
            print(
                f"{_RULE} MESSAGE FOLLOWS {_RULE}\n{text}\n{_RULE} END MESSAGE {_RULE}",
                flush=True,
            )
        return Accept()
