"""What a hook can see of its connection, without keeping copies of its own.

`Session` and `Envelope` are read-only views over the engine's state: the engine is the one
place that knows what was accepted, so these never drift from the wire.
"""

from __future__ import annotations

from typing import final

from smtp_core import MailParams, RcptParams, ServerConnection

__all__ = ["Envelope", "Session"]


@final
class Session:
    """The connection: peer, HELO name, TLS and the logged-in user."""

    __slots__ = ("_conn", "tls_version")

    def __init__(self, conn: ServerConnection, tls_version: str | None = None) -> None:
        self._conn = conn
        #: The negotiated TLS version ("TLSv1.3"), set by the transport; None in plaintext.
        self.tls_version = tls_version

    @property
    def hostname(self) -> str:
        """Our own name, as the greeting gives it (`--hostname`)."""
        return self._conn.config.hostname

    @property
    def peer(self) -> tuple[str, int] | None:
        return self._conn.peer

    @property
    def client_ip(self) -> str:
        peer = self._conn.peer
        return peer[0] if peer else ""

    @property
    def client_name(self) -> str | None:
        """The client's host name, when XCLIENT NAME gave it; None otherwise."""
        return self._conn.client_name

    @property
    def helo_name(self) -> str | None:
        return self._conn.helo_name

    @property
    def esmtp(self) -> bool:
        return self._conn.esmtp

    @property
    def tls(self) -> bool:
        return self._conn.tls_active

    @property
    def user(self) -> str | None:
        """The authenticated user, or None."""
        return self._conn.authenticated_user

    @property
    def lmtp(self) -> bool:
        return self._conn.config.lmtp

    def __repr__(self) -> str:
        return (
            f"<Session peer={self.peer} helo={self.helo_name!r} tls={self.tls} user={self.user!r}>"
        )


@final
class Envelope:
    """The current transaction: the sender and the recipients accepted so far."""

    __slots__ = ("_conn", "queue_id")

    def __init__(self, conn: ServerConnection) -> None:
        self._conn = conn
        #: Set when the message has arrived, before `data()` runs.
        self.queue_id: str | None = None

    @property
    def sender(self) -> str | None:
        """The MAIL FROM address ("" for <>), or None before MAIL."""
        return self._conn.sender

    @property
    def recipients(self) -> tuple[str, ...]:
        return self._conn.recipients

    @property
    def mail_params(self) -> MailParams | None:
        return self._conn.mail_params if self._conn.sender is not None else None

    @property
    def rcpt_params(self) -> tuple[RcptParams, ...]:
        return self._conn.rcpt_params

    def __repr__(self) -> str:
        return f"<Envelope sender={self.sender!r} recipients={list(self.recipients)!r}>"
