"""The PROXY protocol header (HAProxy's, versions 1 and 2): who the client behind a proxy is.

A proxy in front of the server (HAProxy's `send-proxy` and `send-proxy-v2`, a cloud load
balancer) opens each connection with one header that names the client's address and port
and the address it connected to. `parse_proxy_header()` reads it from the first bytes of a
connection: pure, bounded (a v1 header is at most 107 octets, a v2 one at most
`MAX_V2_HEADER`), and it never raises: a header that is not there, malformed or too long is a
`ProxyError`, and the connection must be closed without a word.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from typing import Final, final

__all__ = [
    "MAX_V1_HEADER",
    "MAX_V2_HEADER",
    "ProxyCommand",
    "ProxyError",
    "ProxyHeader",
    "parse_proxy_header",
]

#: The longest v1 header, CRLF included (the specification's own bound).
MAX_V1_HEADER: Final = 107
#: The longest v2 header accepted: the 16-octet preamble and its addresses and TLVs. The
#: specification allows 65551; HAProxy's own headers are far shorter, and 536 octets (the
#: smallest TCP segment every host must accept) hold the addresses and the usual TLVs.
MAX_V2_HEADER: Final = 536

_V1_START: Final = b"PROXY "
_V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_PREAMBLE: Final = 16
_V1_LINE: Final = re.compile(
    rb"PROXY (?:UNKNOWN(?: [\x20-\x7e]*)?|(TCP[46]) ([0-9a-fA-F.:]{2,45}) ([0-9a-fA-F.:]{2,45})"
    rb" (0|[1-9][0-9]{0,4}) (0|[1-9][0-9]{0,4}))\r\n\Z"
)
#: v2 address families: INET, INET6 and UNIX, with the length of their address block.
_V2_ADDRESS_LENGTH: Final = {1: 12, 2: 36, 3: 216}


class ProxyCommand(enum.Enum):
    """What the proxy says about the connection."""

    __hash__ = object.__hash__

    #: It relays a client: the header's source is that client.
    PROXY = "proxy"
    #: The proxy speaks for itself (a health check; v1 `UNKNOWN`): keep the connection's
    #: own addresses.
    LOCAL = "local"


class ProxyError(enum.Enum):
    """Why the first bytes of a connection are not an acceptable PROXY header."""

    __hash__ = object.__hash__

    #: The connection does not start with a PROXY header (a client that came directly).
    MISSING = "no PROXY header"
    #: It starts like one, but breaks the specification.
    MALFORMED = "malformed PROXY header"
    #: A v1 header without its CRLF within 107 octets, or a v2 one past `MAX_V2_HEADER`.
    TOO_LONG = "PROXY header too long"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyHeader:
    """A PROXY header read: `length` octets that precede the connection's own bytes."""

    #: 1 (text) or 2 (binary).
    version: int
    command: ProxyCommand
    #: The client's (address, port), or None when the header names none (LOCAL, v1
    #: UNKNOWN, a v2 UNSPEC or UNIX family): the connection's own peer stands.
    source: tuple[str, int] | None
    #: The (address, port) the client connected to, or None like `source`.
    destination: tuple[str, int] | None
    #: Octets of the header, to skip before the connection's own bytes.
    length: int


def parse_proxy_header(data: bytes | bytearray) -> ProxyHeader | ProxyError | None:
    """The PROXY header at the start of `data`; None when more bytes are needed to tell.

    Whatever the bytes and wherever they were split, the result is the same once the whole
    header has arrived; a `ProxyError` is final (more bytes cannot mend it)."""
    if len(data) < len(_V2_SIGNATURE) and _V2_SIGNATURE.startswith(data):
        return None  # nothing yet, or the start of a v2 signature
    if data.startswith(_V2_SIGNATURE):
        return _parse_v2(data)
    if data[:6] == _V1_START[: len(data)]:
        return _parse_v1(data)
    return ProxyError.MISSING


def _parse_v1(data: bytes | bytearray) -> ProxyHeader | ProxyError | None:
    end = data.find(b"\n", 0, MAX_V1_HEADER)
    if end < 0:
        return ProxyError.TOO_LONG if len(data) >= MAX_V1_HEADER else None
    match = _V1_LINE.match(bytes(data[: end + 1]))
    if match is None:
        return ProxyError.MALFORMED
    if match.group(1) is None:  # UNKNOWN: the proxy could not say
        return ProxyHeader(
            version=1, command=ProxyCommand.LOCAL, source=None, destination=None, length=end + 1
        )
    family = 4 if match.group(1) == b"TCP4" else 6
    source = _address(match.group(2), family)
    destination = _address(match.group(3), family)
    sport, dport = int(match.group(4)), int(match.group(5))
    if source is None or destination is None or sport > 65535 or dport > 65535:
        return ProxyError.MALFORMED
    return ProxyHeader(
        version=1,
        command=ProxyCommand.PROXY,
        source=(source, sport),
        destination=(destination, dport),
        length=end + 1,
    )


def _address(text: bytes, family: int) -> str | None:
    """`text` as the canonical text of an address of `family` (4 or 6), or None."""
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except ValueError:
        return None
    return str(address) if address.version == family else None


def _parse_v2(data: bytes | bytearray) -> ProxyHeader | ProxyError | None:
    if len(data) < _V2_PREAMBLE:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    family, transport = data[13] >> 4, data[13] & 0x0F
    length = _V2_PREAMBLE + int.from_bytes(data[14:16], "big")
    if version != 2 or command > 1 or family > 3 or transport > 2:
        return ProxyError.MALFORMED
    if length > MAX_V2_HEADER:
        return ProxyError.TOO_LONG
    if len(data) < length:
        return None
    needed = _V2_ADDRESS_LENGTH.get(family, 0)
    if length - _V2_PREAMBLE < needed:
        return ProxyError.MALFORMED
    if command == 0 or family in (0, 3):  # LOCAL, or no address we could use: keep ours
        kind = ProxyCommand.LOCAL if command == 0 else ProxyCommand.PROXY
        return ProxyHeader(version=2, command=kind, source=None, destination=None, length=length)
    if transport != 1:  # a proxied TCP connection is a stream
        return ProxyError.MALFORMED
    size = 4 if family == 1 else 16
    block = bytes(data[_V2_PREAMBLE : _V2_PREAMBLE + needed])
    source = str(ipaddress.ip_address(block[:size]))
    destination = str(ipaddress.ip_address(block[size : 2 * size]))
    sport = int.from_bytes(block[2 * size : 2 * size + 2], "big")
    dport = int.from_bytes(block[2 * size + 2 : 2 * size + 4], "big")
    return ProxyHeader(
        version=2,
        command=ProxyCommand.PROXY,
        source=(source, sport),
        destination=(destination, dport),
        length=length,
    )
