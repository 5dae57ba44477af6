"""SMTP replies and how they are written to the wire."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, final

__all__ = ["Reply", "format_reply"]

_ENHANCED_RE: Final = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")
_LEADING_ENHANCED_RE: Final = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?: |\Z)")
# Everything that could split a reply or confuse a terminal: C0 controls and DEL.
_UNSAFE_RE: Final = re.compile(r"[\x00-\x1f\x7f]+")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """One SMTP reply: a code, its text lines and an optional enhanced status code (RFC 3463).

    The text may hold several lines, which become a multi-line reply. It is sanitised when it is
    written, so application text can never contain CR or LF.
    """

    code: int
    text: tuple[str, ...] = ()
    enhanced: str | None = None
    # The wire form, by "with enhanced codes": the engine's constant replies are formatted once.
    _wire: dict[bool, bytes] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code {self.code} is outside 200-599")
        if isinstance(self.text, str):
            raise TypeError("Reply.text is a tuple of lines, not a str")
        if self.enhanced is not None:
            if not _ENHANCED_RE.match(self.enhanced):
                raise ValueError(f"malformed enhanced status code {self.enhanced!r}")
            if self.enhanced[0] != str(self.code)[0]:
                raise ValueError(f"enhanced code {self.enhanced} does not match {self.code}")

    @property
    def is_positive(self) -> bool:
        """True for 2xx and 3xx: the command went through."""
        return self.code < 400


def _sanitise(line: str) -> str:
    return _UNSAFE_RE.sub(" ", line)


def format_reply(reply: Reply, *, enhanced: bool) -> bytes:
    """Write `reply` in wire format (see `_format`), once per Reply object."""
    wire = reply._wire.get(enhanced)
    if wire is None:
        wire = reply._wire[enhanced] = _format(reply, enhanced)
    return wire


def _format(reply: Reply, enhanced: bool) -> bytes:
    """Write `reply` in wire format, one `code-` line per continuation and `code ` on the last.

    With `enhanced`, each line is prefixed with the enhanced status code unless the text
    already starts with one.
    """
    lines = [_sanitise(line) for line in reply.text] or [""]
    code = str(reply.code)
    prefix = f"{reply.enhanced} " if enhanced and reply.enhanced else ""
    out = []
    last = len(lines) - 1
    for i, line in enumerate(lines):
        sep = " " if i == last else "-"
        extra = prefix
        leading = _LEADING_ENHANCED_RE.match(line)
        if leading:
            if line[0] == code[0]:
                extra = ""  # the application chose its own enhanced code
            else:  # one of the wrong class would contradict the reply code (RFC 3463 2)
                line = line[leading.end() :]
        text = f"{code}{sep}{extra}{line}"
        # RFC 4954 4: a SASL challenge is "334" SP [base64], even when the challenge is empty.
        out.append((text if reply.code == 334 else text.rstrip(" ")) + "\r\n")
    return "".join(out).encode("utf-8")
