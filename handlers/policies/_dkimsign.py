"""DKIM signing (`DkimSign`), the last edit of the message, whatever its size.

The body is hashed as it is read, a piece at a time (`BodyHasher`: RFC 6376 section 3.4
canonicalisation across any split, tested against dkimpy's own hash); only the header section
is held, and dkimpy signs it with that body hash. So a spooled message is never loaded whole.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Final

from .._message import Message
from .._pipeline import Context, Policy
from ._authres import from_domains
from ._dkim import dkimpy
from ._networks import Networks, ip_address

log = logging.getLogger("smtpkit.policy")

__all__ = ["BodyHasher", "DkimSign"]

#: A header section larger than this is not signed (Postfix keeps 100 KiB of a header).
_HEADER_LIMIT: Final = 256 * 1024
_WSP_RUN: Final = re.compile(rb"[ \t]+")
_TRAILING_WSP: Final = re.compile(rb" \r\n")
#: A partial line longer than this is hashed before its end is seen.
_LINE_HOLD: Final = 64 * 1024


class BodyHasher:
    """The DKIM body hash (`bh=`) of a body fed in pieces: `update(piece)`, then `digest()`.
    `relaxed` or simple canonicalisation; empty lines at the end are held back until a line
    with content follows them, so they count only if they are not the end."""

    def __init__(self, relaxed: bool = True, algorithm: str = "sha256") -> None:
        self.relaxed = relaxed
        self._hash = hashlib.new(algorithm)
        self._line = b""  # the partial line not yet ended by CRLF
        self._empty = 0  # empty lines held back
        self._hashed = False  # something has been hashed
        self._open = False  # the start of a long line is hashed, its end is not yet

    def _emit(self, data: bytes) -> None:
        if self._empty:
            self._hash.update(b"\r\n" * self._empty)
            self._empty = 0
        self._hash.update(data)
        self._hashed = True

    def _lines(self, block: bytes) -> None:
        """Whole lines, each ending in CRLF: hashed, but for the empty lines that end them."""
        if self.relaxed:
            block = _TRAILING_WSP.sub(b"\r\n", _WSP_RUN.sub(b" ", block))
        if self._open:  # the first CRLF ends the line whose start is hashed
            first = block.find(b"\r\n") + 2
            self._emit(block[:first])
            block = block[first:]
            self._open = False
        end = len(block)
        while end >= 2 and block[end - 2 : end] == b"\r\n":
            end -= 2
        empty = (len(block) - end) // 2
        if end:  # lines with content, the last of them ended by the first of those CRLFs
            self._emit(block[: end + 2])
            empty -= 1
        self._empty += empty

    def update(self, piece: bytes) -> None:
        data = self._line + piece
        cut = data.rfind(b"\r\n") + 2
        if cut >= 2:
            self._lines(data[:cut])
            data = data[cut:]
        if len(data) > _LINE_HOLD:  # a very long line: hash what cannot change
            keep = len(data) - len(data.rstrip(b" \t\r")) if self.relaxed else 0
            keep = max(keep, 1) if data.endswith(b"\r") else keep
            head = data[: len(data) - keep]
            if head:
                self._emit(_WSP_RUN.sub(b" ", head) if self.relaxed else head)
                self._open = True
            data = data[len(head) :]
            if self.relaxed and data:
                data = _WSP_RUN.sub(b" ", data)
        self._line = data

    def digest(self) -> bytes:
        if self._line or self._open:  # no CRLF at the end: dkimpy's canonical form adds one
            line = _WSP_RUN.sub(b" ", self._line) if self.relaxed else self._line
            self._emit(line + b"\r\n")
            self._line = b""
        if not self._hashed and not self.relaxed:
            self._hash.update(b"\r\n")  # simple: an empty body is one CRLF
            self._hashed = True
        return self._hash.digest()


def _sign_headers(header: bytes, digest: bytes, domain: str, selector: str, key: bytes) -> bytes:
    """The DKIM-Signature field for this header section and body hash (relaxed/relaxed,
    rsa-sha256, dkimpy's default choice of headers), signed by dkimpy."""
    dkim = dkimpy()
    from dkim.canonicalization import CanonicalizationPolicy
    from dkim.crypto import parse_pem_private_key

    signer = dkim.DKIM(header + b"\r\n")
    signer.hasher = hashlib.sha256
    canon = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    include = [name.lower() for name in signer.default_sign_headers()]
    fields = [
        (b"v", b"1"),
        (b"a", b"rsa-sha256"),
        (b"c", canon.to_c_value()),
        (b"d", domain.encode()),
        (b"i", b"@" + domain.encode()),
        (b"q", b"dns/txt"),
        (b"s", selector.encode()),
        (b"t", str(int(time.time())).encode()),
        (b"h", b" : ".join(include)),
        (b"bh", base64.b64encode(digest)),
        (b"b", b"0" * 60),  # folds b= onto its own line, as dkimpy does
    ]
    value: bytes = signer.gen_header(
        fields, include, canon, b"DKIM-Signature", parse_pem_private_key(key)
    )
    return b"DKIM-Signature: " + value


class DkimSign(Policy):
    """`edit`, last of all edits: signs mail from authenticated users and from `networks`
    with `domain`'s key (rsa-sha256, relaxed/relaxed), when its From: domain is `domain` or
    under it. The body is hashed as it is read, so a message of any size is signed.

    >>> DkimSign("example.org", "mail", "/etc/smtpkit/dkim/mail.private",
    ...          networks=["10.0.0.0/8"])
    """

    signs: ClassVar[bool] = True

    def __init__(
        self,
        domain: str,
        selector: str,
        key_file: str | Path,
        *,
        networks: Networks | Sequence[str] = (),
        authenticated: bool = True,
    ) -> None:
        dkimpy()
        from dkim.crypto import UnparsableKeyError, parse_pem_private_key

        self.domain = domain.strip().rstrip(".").lower()
        self.selector = selector.strip()
        if not self.domain or not self.selector:
            raise ValueError("DkimSign needs a domain and a selector")
        self.key = Path(key_file).read_bytes()
        try:
            parse_pem_private_key(self.key)
        except UnparsableKeyError as exc:
            raise ValueError(f"{key_file}: not an RSA private key in PEM ({exc})") from None
        self.networks = networks if isinstance(networks, Networks) else Networks(networks)
        self.authenticated = authenticated

    def trusted(self, ctx: Context) -> bool:
        """The client is one we sign for: authenticated, or in `networks`."""
        if self.authenticated and ctx.session.user is not None:
            return True
        address = ip_address(ctx.session.client_ip)
        return address is not None and address in self.networks

    def edit(self, ctx: Context, message: Message) -> None:
        if not self.trusted(ctx):
            return
        domains = from_domains(message)
        if len(domains) != 1 or not (
            domains[0] == self.domain or domains[0].endswith("." + self.domain)
        ):
            return  # not our domain's mail: a signature of ours would not align
        pieces = message.chunks()
        head = bytearray()
        header, rest = b"", b""
        for piece in pieces:
            head += piece
            end = -2 if head.startswith(b"\r\n") else head.find(b"\r\n\r\n")
            if end != -1:  # the blank line: the header ends, the body begins
                header, rest = bytes(head[: end + 2]), bytes(head[end + 4 :])
                break
            if len(head) > _HEADER_LIMIT:
                log.warning("dkim-sign: header section over %d octets: not signed", _HEADER_LIMIT)
                return
        else:
            header = bytes(head)  # no body at all
        hasher = BodyHasher(relaxed=True)
        hasher.update(rest)
        for piece in pieces:
            hasher.update(piece)
        digest = hasher.digest()
        field = _sign_headers(header, digest, self.domain, self.selector, self.key)
        message.add_field(field)

    def __repr__(self) -> str:
        return f"DkimSign({self.domain!r}, {self.selector!r})"
