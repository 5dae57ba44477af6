"""SASL mechanisms for AUTH (RFC 4954), as a table the state machine looks names up in.

A mechanism is a small object that consumes the client's responses one at a time and either
asks for more (a challenge) or yields the credentials. Adding CRAM-MD5 or XOAUTH2 means
adding a class and a table entry; the state machine does not change.
"""

from __future__ import annotations

import abc
import base64
import binascii
from dataclasses import dataclass, field
from typing import Final, final

from ._errors import RemoteProtocolError, peer_error

__all__ = ["MECHANISMS", "Credentials", "SaslMechanism", "decode_response"]


@final
@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    authzid: str = ""


def _bad(msg: str) -> RemoteProtocolError:
    return peer_error(501, "5.5.2", msg)


def decode_response(data: bytes) -> bytes:
    """Decode one base64 SASL response; "=" stands for an empty one (RFC 4954 section 4)."""
    if data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("Error: malformed authentication response") from None


def _text(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("Error: authentication data is not UTF-8") from None
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise _bad("Error: control character in authentication data")
    return text


class SaslMechanism(abc.ABC):
    """One SASL exchange. `step()` gets each decoded client response (None when AUTH carried
    no initial response) and returns a challenge to send, or the finished credentials."""

    name: str = ""

    @abc.abstractmethod
    def step(self, response: bytes | None) -> bytes | Credentials: ...


@final
class Plain(SaslMechanism):
    """RFC 4616: one message, authzid NUL authcid NUL password."""

    name = "PLAIN"

    def step(self, response: bytes | None) -> bytes | Credentials:
        if response is None:
            return b""
        parts = response.split(b"\x00")
        if len(parts) != 3 or not parts[1]:
            raise _bad("Error: malformed PLAIN response")
        authzid, user, password = (_text(p) for p in parts)
        return Credentials(user, password, authzid)


@final
class Login(SaslMechanism):
    """The LOGIN mechanism: "Username:" then "Password:". An initial response is the user."""

    name = "LOGIN"

    def __init__(self) -> None:
        self._user: str | None = None

    def step(self, response: bytes | None) -> bytes | Credentials:
        if response is None:
            return b"Username:"
        if self._user is None:
            self._user = _text(response)
            if not self._user:
                raise _bad("Error: empty LOGIN user name")
            return b"Password:"
        return Credentials(self._user, _text(response))


MECHANISMS: Final[dict[str, type[SaslMechanism]]] = {"PLAIN": Plain, "LOGIN": Login}
