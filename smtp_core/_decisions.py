"""The application's answers to events: Accept, Reject or Close (the seed's eAccept, eReject,
eClose). Pure data, so that handlers can re-export them without depending on any transport.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, final

from ._reply import Reply

__all__ = [
    "ACCEPTED",
    "CLOSING",
    "REJECTED",
    "Accept",
    "Close",
    "Decision",
    "Outcome",
    "Reject",
    "outcome_of",
]


@final
@dataclass(frozen=True, slots=True)
class Accept:
    """Let the command through. `text` replaces the standard reply text."""

    text: str | None = None


@final
@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse the command; the session goes on. A 4xx `code` is a temporary failure.

    A missing code or text gets the standard one for the event (550 for MAIL and RCPT, 554 for
    the message and the greeting, 535 for AUTH).
    """

    code: int | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        if self.code is not None and not 400 <= self.code <= 599:
            raise ValueError(f"Reject code must be 4xx or 5xx, not {self.code}")


@final
@dataclass(frozen=True, slots=True)
class Close:
    """Refuse the command and drop the connection after the reply."""

    code: int = 421
    text: str | None = None

    def __post_init__(self) -> None:
        if not 400 <= self.code <= 599:
            raise ValueError(f"Close code must be 4xx or 5xx, not {self.code}")


Decision = Accept | Reject | Close


class Outcome(enum.Enum):
    """What an answer does to the command it answers."""

    __hash__ = object.__hash__

    #: The command goes through.
    ACCEPT = "accept"
    #: The command is refused; the session goes on.
    REJECT = "reject"
    #: The command is refused and the session ends after the reply.
    CLOSE = "close"


# Bound once (see `_state`'s members): every answer is resolved to one of them.
ACCEPTED: Final = Outcome.ACCEPT
CLOSING: Final = Outcome.CLOSE
REJECTED: Final = Outcome.REJECT


def outcome_of(answer: Decision | Reply) -> Outcome:
    """The outcome of a decision or a ready-made reply. A 421 always ends the session (RFC 5321
    3.8), whichever type carries it; a `Reply` of 2xx or 3xx accepts."""
    kind = type(answer)  # the classes are final: comparing types is exact, and fast
    if kind is Accept:
        return ACCEPTED
    if kind is Close:
        return CLOSING
    assert isinstance(answer, (Reject, Reply))
    if answer.code == 421:
        return CLOSING
    if isinstance(answer, Reply) and answer.is_positive:
        return ACCEPTED
    return REJECTED
