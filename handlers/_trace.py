"""Trace fields: the `Received:` header and log values, built from what a client sent.

A client chooses its EHLO name, its addresses and its AUTH user. Copied verbatim, an EHLO of
`x ([10.0.0.1])<TAB>by mx.trusted.example ...` closes the comment and adds clauses to the
`Received:` header, and a quoted MAIL FROM with spaces adds `key=value` fields to a log line.
Every client value is made inert here before it is written.

The header does what Postfix does: characters that are not printable, and the characters
that delimit the header's clauses and comments (`` <>()\\";@``), become `?`. A valid domain
name or address literal has none of them, so it is written unchanged.

A log value is escaped so that it is exactly one field: spaces, `=`, `"`, `\\` and anything
unprintable (CR, LF, TAB, other control and format characters, Unicode separators) become
`\\xHH`, `\\uHHHH` or `\\UHHHHHHHH`, as in a Python literal, so the line can be parsed back.
"""

from __future__ import annotations

import email.utils
import functools
import re
import time
from typing import Final

from ._session import Envelope, Session

__all__ = ["format_received", "log_escape", "received_header", "transmission_type"]

#: Delimiters of the Received: header's clauses, comments and addresses (Postfix's list).
_NEUTER: Final = frozenset(' <>()\\";@')
_NEUTER_RE: Final = re.compile("[" + re.escape("".join(sorted(_NEUTER))) + "]")
#: The same, for an address: its "@" is kept.
_NEUTER_ADDRESS_RE: Final = re.compile("[" + re.escape("".join(sorted(_NEUTER - {"@"}))) + "]")
#: Client values are cut to this many characters, so no header line nears 998 octets.
_MAX_TOKEN: Final = 255
_LOG_SPECIAL: Final = re.compile(r'[ ="\\]')
_LOG_ESCAPES: Final = {" ": "\\x20", "=": "\\x3d", '"': "\\x22", "\\": "\\\\"}


def _header_token(value: str, *, utf8: bool, address: bool = False) -> str:
    """`value` as one inert token of the Received: header: non-printable characters (and
    non-ASCII ones unless the message is SMTPUTF8) and delimiters become "?", except the "@"
    of an `address`."""
    value = value[:_MAX_TOKEN]
    neuter = _NEUTER_ADDRESS_RE if address else _NEUTER_RE
    if value.isascii() and value.isprintable() and neuter.search(value) is None:
        return value
    return "".join(
        c
        if c.isprintable()
        and (utf8 or c.isascii())
        and (c not in _NEUTER or (address and c == "@"))
        else "?"
        for c in value
    )


_date_cache: tuple[int, str] = (-1, "")


def _date_now() -> str:
    """The local date and time as RFC 5322 writes it, made once a second: formatting it costs
    more than the rest of the header."""
    global _date_cache
    second = int(time.time())
    cached = _date_cache
    if cached[0] != second:
        cached = _date_cache = (second, email.utils.formatdate(second, localtime=True))
    return cached[1]


def transmission_type(session: Session) -> str:
    """The `with` clause (RFC 3848): SMTP, ESMTP or LMTP, plus S for TLS and A for AUTH."""
    proto = "LMTP" if session.lmtp else ("ESMTP" if session.esmtp else "SMTP")
    if session.tls:
        proto += "S"
    if session.user is not None:
        proto += "A"
    return proto


def format_received(
    *,
    helo: str | None,
    client_ip: str,
    hostname: str,
    client_name: str | None = None,
    protocol: str,
    queue_id: str | None,
    tls_version: str | None = None,
    recipient: str | None = None,
    utf8: bool = False,
    date: str | None = None,
) -> bytes:
    """One `Received:` header (RFC 5321 4.4), CRLF-terminated, folded over a few lines:

        Received: from HELO (NAME [IP])
                by HOSTNAME (smtpkit) with PROTOCOL id QUEUE_ID
                (using TLS_VERSION)
                for <RECIPIENT>; DATE

    `helo`, `client_name` (the client's host name, from XCLIENT; left out when unknown) and
    `recipient` come from the client and are made inert; the rest is ours.
    Non-ASCII characters are kept only in an SMTPUTF8 message (`utf8`, RFC 6532)."""
    tls = f"\r\n\t(using {tls_version})" if tls_version else ""
    rcpt = f"\r\n\tfor <{_header_token(recipient, utf8=utf8, address=True)}>" if recipient else ""
    qid = f" id {queue_id}" if queue_id else ""
    when = date if date is not None else _date_now()
    header = (
        f"{_from_clause(helo, client_ip, client_name, hostname, protocol, utf8)}"
        f"{qid}{tls}{rcpt}; {when}\r\n"
    )
    return header.encode("utf-8")


@functools.lru_cache(maxsize=256)
def _from_clause(
    helo: str | None,
    client_ip: str,
    client_name: str | None,
    hostname: str,
    protocol: str,
    utf8: bool,
) -> str:
    """The header up to its queue ID, the same for every message of a session: made once."""
    name = _header_token(helo or "", utf8=utf8) or "unknown"
    literal = f"IPv6:{client_ip}" if ":" in client_ip else client_ip
    if client_name:
        literal = f"{_header_token(client_name, utf8=False)} [{literal}"
    else:
        literal = f"[{literal}"
    return f"Received: from {name} ({literal}])\r\n\tby {hostname} (smtpkit) with {protocol}"


def received_header(
    session: Session, envelope: Envelope, *, hostname: str, queue_id: str | None
) -> bytes:
    """The `Received:` header the server writes first in the message of `envelope`. The
    recipient is named only when there is one, so that Bcc recipients stay hidden (as Postfix
    does)."""
    recipients = envelope.recipients
    params = envelope.mail_params
    return format_received(
        helo=session.helo_name,
        client_ip=session.client_ip,
        client_name=session.client_name,
        hostname=hostname,
        protocol=transmission_type(session),
        queue_id=queue_id,
        tls_version=session.tls_version,
        recipient=recipients[0] if len(recipients) == 1 else None,
        utf8=params is not None and params.smtputf8,
    )


def log_escape(value: str) -> str:
    r"""`value` as exactly one `key=value` field of a log line: spaces, `=`, `"`, `\` and
    every unprintable character escaped Python-style; anything else (non-ASCII letters
    included) is kept, so ordinary addresses read as they are. `"x decision=y"@example.org`
    is logged as `\x22x\x20decision\x3dy\x22@example.org`."""
    if value.isprintable() and _LOG_SPECIAL.search(value) is None:
        return value
    return "".join(_LOG_ESCAPES.get(c) or (c if c.isprintable() else _escape(c)) for c in value)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
