"""The error model.

Peer mistakes never escape the engine: parsing code raises `RemoteProtocolError` carrying the
reply to send, and `ServerConnection.next_event()` turns it into that reply (and a 421 and a
close once the errors reach the limit). `LocalProtocolError` is the only error the application
sees, and it means the application misused the engine (answering an event twice, say).
"""

from __future__ import annotations

from ._reply import Reply

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError", "peer_error"]


class ProtocolError(Exception):
    """Base class of the engine's errors; catch this, never raise it directly.

    `reply_hint` is the SMTP reply that describes the error on the wire.
    """

    def __init__(self, msg: str, reply_hint: Reply | None = None) -> None:
        if type(self) is ProtocolError:
            raise TypeError("tried to directly instantiate ProtocolError")
        super().__init__(msg)
        self.reply_hint = reply_hint


class LocalProtocolError(ProtocolError):
    """The application broke the engine's rules; a bug in the caller, not in the peer."""


class RemoteProtocolError(ProtocolError):
    """The peer broke SMTP. The engine answers it with `reply_hint` and counts an error."""

    def __init__(self, msg: str, reply_hint: Reply) -> None:
        super().__init__(msg, reply_hint)


def peer_error(code: int, enhanced: str | None, text: str) -> RemoteProtocolError:
    """The error for a peer mistake whose reply is `code enhanced text`."""
    return RemoteProtocolError(text, Reply(code=code, text=(text,), enhanced=enhanced))
