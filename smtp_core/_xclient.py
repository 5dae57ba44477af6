"""XCLIENT (Postfix's XCLIENT_README): a trusted proxy or filter says who the real client is.

`XCLIENT NAME=... ADDR=... PORT=... PROTO=... HELO=... LOGIN=... DESTADDR=... DESTPORT=...`
replaces the engine's idea of the client for the rest of the session, and the session starts
over at the greeting. Only clients in `Config.xclient_trusted` may send it; to anyone else it
is not advertised and gets 550 5.7.0.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Final

from ._errors import peer_error
from ._params import decode_xtext

__all__ = ["XCLIENT_ATTRIBUTES", "parse_networks", "parse_xclient", "trusted"]

#: The attributes smtpkit accepts, in the order the EHLO reply lists them.
XCLIENT_ATTRIBUTES: Final = (
    "NAME",
    "ADDR",
    "PORT",
    "PROTO",
    "HELO",
    "LOGIN",
    "DESTADDR",
    "DESTPORT",
)
#: Values that say "not known" (any case): the attribute becomes None.
_UNKNOWN_VALUES: Final = frozenset({"[UNAVAILABLE]", "[TEMPUNAVAIL]"})
_PORT: Final = re.compile(r"[0-9]{1,5}\Z")
#: NAME, HELO and LOGIN are at most this long (XCLIENT_README, note 1).
_MAX_NAME: Final = 255

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=16)
def parse_networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    """The networks of `cidrs` (host bits allowed); ValueError for a bad one."""
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def trusted(peer: tuple[str, int] | None, cidrs: tuple[str, ...]) -> bool:
    """Whether the peer's address is in one of `cidrs` (an IPv4-mapped IPv6 address counts
    as its IPv4 address)."""
    if peer is None or not cidrs:
        return False
    try:
        address = ipaddress.ip_address(peer[0].split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in parse_networks(cidrs))


def parse_xclient(arg: str) -> dict[str, str | None]:
    """The attributes of an XCLIENT command line: name (upper case) -> value, xtext undone and
    checked; None for [UNAVAILABLE] and [TEMPUNAVAIL]. ADDR and DESTADDR come back as the
    canonical text of the address (without Postfix's "IPV6:" prefix), PROTO as SMTP or ESMTP.
    A bad attribute is 501."""
    attributes: dict[str, str | None] = {}
    items = arg.split()
    if not items:
        raise peer_error(501, "5.5.4", "Syntax: XCLIENT attribute=value ...")
    for item in items:
        name, eq, raw = item.partition("=")
        name = name.upper() if name.isascii() else name
        if name not in XCLIENT_ATTRIBUTES or not eq:
            raise peer_error(501, "5.5.4", "Error: bad XCLIENT attribute name")
        value = decode_xtext(raw, name)
        if value.upper() in _UNKNOWN_VALUES:
            attributes[name] = None
        else:
            attributes[name] = _check(name, value)
    return attributes


def _check(name: str, value: str) -> str:
    if name in ("ADDR", "DESTADDR"):
        text = value[5:] if value[:5].upper() == "IPV6:" else value
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise peer_error(501, "5.5.4", f"Error: bad {name} address") from None
    if name in ("PORT", "DESTPORT"):
        if not _PORT.match(value) or int(value) > 65535:
            raise peer_error(501, "5.5.4", f"Error: bad {name} number")
        return value
    if name == "PROTO":
        proto = value.upper()
        if proto not in ("SMTP", "ESMTP"):
            raise peer_error(501, "5.5.4", "Error: PROTO is SMTP or ESMTP")
        return proto
    if not value or len(value) > _MAX_NAME:
        raise peer_error(501, "5.5.4", f"Error: bad {name} value")
    return value
