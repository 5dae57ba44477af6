"""ESMTP parameters of MAIL and RCPT (RFC 1869 syntax; SIZE, BODY, SMTPUTF8, DSN and AUTH).

A parameter is accepted only when its extension is on: anything else, and anything that is not
`KEY[=value]` once, gets 555 or 501. Values arrive decoded (xtext undone).
"""

from __future__ import annotations

import re
from typing import Final

from ._config import Config
from ._errors import peer_error
from ._events import MailParams, RcptParams

__all__ = ["NO_MAIL_PARAMS", "NO_RCPT_PARAMS", "parse_mail_params", "parse_rcpt_params"]

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_KEYWORD: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*\Z")
_XTEXT: Final = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")
_XTEXT_HEX: Final = re.compile(r"\+([0-9A-F]{2})")
_DIGITS: Final = re.compile(r"[0-9]{1,20}\Z")
_NOTIFY: Final = frozenset({"SUCCESS", "FAILURE", "DELAY"})
#: What a MAIL or RCPT without parameters has (most of them): made once, as they are frozen.
NO_MAIL_PARAMS: Final = MailParams()
NO_RCPT_PARAMS: Final = RcptParams()


def parse_mail_params(text: str, config: Config, *, esmtp: bool, auth: bool) -> MailParams:
    """The parameters after MAIL FROM:<path>. `auth`: AUTH is offered, so AUTH= is known."""
    if not text or text.isspace():
        return NO_MAIL_PARAMS
    size = body = ret = envid = mailbox = None
    smtputf8 = False
    for key, value in _split(text, esmtp).items():
        if key == "SIZE" and config.size and value is not None:
            if not _DIGITS.match(value):
                raise peer_error(501, "5.5.4", "Error: bad SIZE value")
            size = int(value)
        elif key == "BODY" and config.eightbitmime and value is not None:
            body = value.upper()
            if body not in ("7BIT", "8BITMIME"):
                raise peer_error(501, "5.5.4", "Error: BODY is 7BIT or 8BITMIME")
        elif key == "SMTPUTF8" and config.smtputf8 and value is None:
            smtputf8 = True
        elif key == "RET" and config.dsn and value is not None:
            ret = value.upper()
            if ret not in ("FULL", "HDRS"):
                raise peer_error(501, "5.5.4", "Error: RET is FULL or HDRS")
        elif key == "ENVID" and config.dsn and value is not None:
            envid = decode_xtext(value, key)
            if len(envid) > 100:
                raise peer_error(501, "5.5.4", "Error: ENVID too long")
        elif key == "AUTH" and auth and value is not None:
            mailbox = value if value == "<>" else decode_xtext(value, key)
        else:
            raise peer_error(555, "5.5.4", f"Error: unsupported parameter {key}")
    return MailParams(size=size, body=body, smtputf8=smtputf8, ret=ret, envid=envid, auth=mailbox)


def parse_rcpt_params(text: str, config: Config, *, esmtp: bool) -> RcptParams:
    """The parameters after RCPT TO:<path>."""
    if not text or text.isspace():
        return NO_RCPT_PARAMS
    notify: tuple[str, ...] | None = None
    orcpt: tuple[str, str] | None = None
    for key, value in _split(text, esmtp).items():
        if key == "NOTIFY" and config.dsn and value is not None:
            notify = tuple(v.upper() for v in value.split(","))
            if notify != ("NEVER",) and not set(notify) <= _NOTIFY:
                raise peer_error(501, "5.5.4", "Error: bad NOTIFY value")
        elif key == "ORCPT" and config.dsn and value is not None:
            kind, semi, address = value.partition(";")
            if not semi or not kind or not address:
                raise peer_error(501, "5.5.4", "Error: ORCPT is type;address")
            orcpt = (kind.lower(), decode_xtext(address, key))
        else:
            raise peer_error(555, "5.5.4", f"Error: unsupported parameter {key}")
    return RcptParams(notify=notify, orcpt=orcpt)


def _split(text: str, esmtp: bool) -> dict[str, str | None]:
    """Parse "KEY=value KEY" into an upper-cased dict. Duplicates and junk get 501; any
    parameter after HELO (not EHLO) gets 555."""
    params: dict[str, str | None] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not _KEYWORD.match(key) or (eq and not value):
            raise peer_error(501, "5.5.4", "Error: bad parameter syntax")
        key = key.upper()
        if key in params:
            raise peer_error(501, "5.5.4", f"Error: duplicate parameter {key}")
        if _CONTROL.search(value) or not value.isascii():
            raise peer_error(501, "5.5.4", f"Error: bad value for {key}")
        params[key] = value if eq else None
    if params and not esmtp:
        raise peer_error(555, "5.5.4", "Error: parameters need EHLO")
    return params


def decode_xtext(value: str, key: str) -> str:
    """Undo xtext (RFC 3461 4): "+XX" is a hex-encoded octet. Controls get 501."""
    if not _XTEXT.match(value):
        raise peer_error(501, "5.5.4", f"Error: bad xtext in {key}")
    decoded = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), value)
    if _CONTROL.search(decoded):
        raise peer_error(501, "5.5.4", f"Error: control character in {key}")
    if not decoded.isascii():  # xtext carries US-ASCII (RFC 3461 4); "+C3" is not UTF-8
        raise peer_error(501, "5.5.4", f"Error: non-ASCII character in {key}")
    return decoded
