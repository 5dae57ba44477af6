"""The engine's configuration: limits, extensions and policies, validated once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, final

__all__ = ["Config"]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything that shapes one SMTP session. Frozen, so one instance serves every connection.

    The defaults follow Postfix where it has an opinion.
    """

    #: The name in the greeting and the EHLO reply.
    hostname: str = "localhost"
    #: The greeting's text after the hostname.
    banner: str = "ESMTP smtpkit"
    #: Largest message accepted, in octets (SIZE, 552). Postfix's default is 10 MB; we take 32 MiB.
    max_message_size: int = 32 * 1024 * 1024
    #: Recipients per transaction; more get 452 (Postfix's smtpd_recipient_limit).
    max_recipients: int = 1000
    #: Longest command line, CRLF included; longer ones get 500 (Postfix's line_length_limit).
    max_command_line: int = 2048
    #: Longest SASL response, the base64 text without CRLF, in a continuation line or as the
    #: AUTH command's initial response (Postfix's limit, for large XOAUTH2 tokens).
    max_auth_line: int = 12288
    #: Longest line of message text, CRLF excluded; 0 accepts any length, as Postfix does.
    max_text_line: int = 0
    #: Peer errors (500, 501, 503, ...) before 421 and close (Postfix's smtpd_hard_error_limit).
    max_errors: int = 20
    #: Failed AUTH attempts before 421 and close.
    max_auth_failures: int = 3
    #: NOOP, RSET, VRFY and HELP commands a session may send before each further one counts
    #: as an error toward `max_errors` (Postfix's smtpd_junk_command_limit). A delivered
    #: message starts the count again.
    junk_command_limit: int = 100
    #: What to do with a bare CR or LF inside DATA: "reject" the message with 550 5.5.2, or
    #: "normalize" it to CRLF. Either way only CRLF.CRLF ends the message.
    bare_line_endings: Literal["reject", "normalize"] = "reject"
    #: Speak LMTP (RFC 2033): LHLO, and one reply per recipient after the message.
    lmtp: bool = False
    pipelining: bool = True
    #: Advertise SIZE with `max_message_size`.
    size: bool = True
    eightbitmime: bool = True
    smtputf8: bool = True
    enhanced_status_codes: bool = True
    chunking: bool = True
    dsn: bool = True
    #: STARTTLS is offered when this is true and the session is not encrypted yet.
    tls_available: bool = False
    #: SASL mechanisms to offer, in order; empty means no AUTH. Known: PLAIN, LOGIN.
    auth_mechanisms: tuple[str, ...] = ()
    #: Offer AUTH without TLS too (a local catcher). Otherwise AUTH needs TLS.
    auth_allow_plaintext: bool = False
    #: Commands that end the session at once: an HTTP client or proxy talking to port 25.
    forbidden_commands: frozenset[str] = frozenset({"CONNECT", "GET", "POST"})
    #: The connection comes through a proxy that opens it with a PROXY protocol header (v1 or
    #: v2): the engine reads it before anything is said, and the client it names becomes the
    #: peer. Only for connections from a trusted proxy: the transport decides that.
    proxy_protocol: bool = False
    #: Networks (CIDR) whose clients may send XCLIENT, Postfix's smtpd_authorized_xclient_hosts;
    #: empty: XCLIENT is unknown (500). Checked against the peer after any PROXY header.
    xclient_trusted: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from ._sasl import MECHANISMS
        from ._xclient import parse_networks

        if not self.hostname or any(c.isspace() or ord(c) < 32 for c in self.hostname):
            raise ValueError(f"invalid hostname {self.hostname!r}")
        if self.max_command_line < 512:
            raise ValueError("max_command_line must be at least 512 (RFC 5321 4.5.3.1.4)")
        if self.max_auth_line < self.max_command_line:
            raise ValueError("max_auth_line must be at least max_command_line")
        for name in (
            "max_message_size",
            "max_recipients",
            "max_errors",
            "max_auth_failures",
            "junk_command_limit",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.max_text_line < 0:
            raise ValueError("max_text_line must be 0 (no limit) or positive")
        if self.bare_line_endings not in ("reject", "normalize"):
            raise ValueError("bare_line_endings must be 'reject' or 'normalize'")
        try:
            parse_networks(self.xclient_trusted)
        except (ValueError, TypeError):
            raise ValueError(f"invalid xclient_trusted {self.xclient_trusted!r}") from None
        for mech in self.auth_mechanisms:
            if mech not in MECHANISMS:
                raise ValueError(f"unknown SASL mechanism {mech!r}; known: {sorted(MECHANISMS)}")
