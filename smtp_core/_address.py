"""Address syntax (RFC 5321 4.1.2, RFC 6531).

The checks follow RFC 5321's grammar but forgive what Postfix forgives (a space after the
colon, a missing angle bracket, a source route), and are strict about what can hurt: NUL and
control characters and 8-bit without SMTPUTF8.
"""

from __future__ import annotations

import re
from typing import Final

from ._errors import peer_error

__all__ = ["parse_path"]

_ATEXT: Final = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_ATEXT_UTF8: Final = _ATEXT + r"\u0080-\U0010ffff"
_QUOTED: Final = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{u}]|\\[\x20-\x7e{u}])*"'
_LABEL: Final = r"[A-Za-z0-9_{u}](?:[A-Za-z0-9_\-{u}]*[A-Za-z0-9_{u}])?"
_LITERAL: Final = r"\[[\x21-\x5a\x5e-\x7e]+\]"


def _address_re(utf8: bool) -> re.Pattern[str]:
    u = r"\u0080-\U0010ffff" if utf8 else ""
    atext = _ATEXT_UTF8 if utf8 else _ATEXT
    local = rf"(?:[{atext}]+(?:\.+[{atext}]+)*|{_QUOTED.format(u=u)})"
    label = _LABEL.format(u=u)
    domain = rf"(?:{label}(?:\.{label})*\.?|{_LITERAL})"
    return re.compile(rf"{local}@{domain}\Z|(?i:postmaster)\Z")


_ADDRESS: Final = _address_re(utf8=False)
_ADDRESS_UTF8: Final = _address_re(utf8=True)
# <path> may hold a quoted local part, which may hold ">".
_PATH: Final = re.compile(r'<((?:"(?:[^"\\]|\\.)*"|[^<>"])*)>')
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
MAX_ADDRESS: Final = 254  # RFC 5321 4.5.3.1.3: 256 octets for the path, brackets included


def parse_path(arg: str, *, null_ok: bool, utf8: bool, enhanced: str) -> tuple[str, str]:
    """Split "<path> params" into the address and the parameter text.

    Returns ("", rest) for the null path <> when `null_ok`. `enhanced` is the code for a
    syntax error (5.1.7 for a sender, 5.1.3 for a recipient). Non-ASCII without `utf8` gets
    553 5.6.7 (RFC 6531 3.5).
    """
    arg = arg.lstrip(" ")
    if arg.startswith("<"):
        m = _PATH.match(arg)
        if m is None:
            raise peer_error(501, enhanced, "Error: bad address syntax")
        address, rest = m.group(1), arg[m.end() :]
        if rest and not rest.startswith(" "):
            raise peer_error(501, enhanced, "Error: bad address syntax")
    else:
        # Postfix forgives a path without angle brackets; so do we.
        address, _, rest = arg.partition(" ")
    if address.startswith("@"):
        # A source route (RFC 5321 4.1.1.3 says to accept and ignore it).
        _, colon, address = address.partition(":")
        if not colon:
            raise peer_error(501, enhanced, "Error: bad address syntax")
    if not address:
        if null_ok:
            return "", rest
        raise peer_error(501, enhanced, "Error: empty address")
    if len(address) > MAX_ADDRESS or _CONTROL.search(address):
        raise peer_error(501, enhanced, "Error: bad address syntax")
    if not address.isascii() and not utf8:
        raise peer_error(553, "5.6.7", "Error: non-ASCII address needs SMTPUTF8")
    if not (_ADDRESS_UTF8 if utf8 else _ADDRESS).match(address):
        raise peer_error(501, enhanced, "Error: bad address syntax")
    return address, rest
