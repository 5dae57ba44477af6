"""rspamd: the message is streamed to rspamd's `/checkv2` with its envelope, and its action is
applied (stdlib http.client, on the worker pool; the body is sent from the spool a piece at a
time, never joined into one bytes object).
"""

from __future__ import annotations

import email.header
import enum
import http.client
import json
import logging
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, final

from smtp_core import Reject

from .._message import Message
from .._pipeline import Context, Policy, PolicyResult
from ._authres import DEFAULT_MAX_SCAN_SIZE, too_large

__all__ = ["Rspamd", "RspamdAction"]

log = logging.getLogger("smtpkit.policy")

#: rspamd's answer is a small JSON document; more than this is not rspamd.
_MAX_REPLY: Final = 1024 * 1024
#: The X-Spam headers we write: the client's copies are removed first (forgeries).
SPAM_HEADERS: Final = ("X-Spam-Flag", "X-Spam-Status", "X-Spam-Score", "X-Spam-Action")
_CONTROLS: Final = re.compile(r"[\x00-\x1f\x7f]+")


class RspamdAction(enum.Enum):
    """The actions rspamd answers, and (in `REPLIES`) what each does."""

    REJECT = "reject"
    SOFT_REJECT = "soft reject"
    REWRITE_SUBJECT = "rewrite subject"
    ADD_HEADER = "add header"
    GREYLIST = "greylist"
    NO_ACTION = "no action"


#: What each action answers the client; the others are accepted (with headers).
REPLIES: Final[Mapping[RspamdAction, Reject]] = {
    RspamdAction.REJECT: Reject(554, "5.7.1 Message rejected as spam"),
    RspamdAction.SOFT_REJECT: Reject(451, "4.7.1 Message deferred, try again later"),
    RspamdAction.GREYLIST: Reject(451, "4.7.1 Greylisted, try again later"),
}
#: The actions that mark the message as spam.
SPAM: Final = frozenset({RspamdAction.REWRITE_SUBJECT, RspamdAction.ADD_HEADER})


@final
@dataclass(frozen=True, slots=True)
class _Verdict:
    action: RspamdAction
    score: float
    required: float
    subject: str | None


class Rspamd(Policy):
    """`data`: asks rspamd (`url`, its normal worker: "http://127.0.0.1:11333") about the
    message, with its envelope, and applies its action: reject (554 5.7.1), soft reject and
    greylist (451 4.7.1); add header and rewrite subject mark it (`X-Spam-Flag: YES`; the
    subject as rspamd rewrote it). Every scanned message gets X-Spam-Status, -Score and
    -Action. When rspamd cannot be reached or answers nonsense, `unavailable` decides:
    "tempfail" (451 4.7.1, the default: the client retries) or "accept". A message larger
    than `max_scan_size` is not sent, and X-Spam-Status says so.

    >>> Rspamd("http://127.0.0.1:11333", unavailable="accept")
    """

    accepts: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        url: str = "http://127.0.0.1:11333",
        *,
        timeout: float = 30.0,
        unavailable: str = "tempfail",
        max_scan_size: int = DEFAULT_MAX_SCAN_SIZE,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {url!r}")
        if unavailable not in ("tempfail", "accept"):
            raise ValueError(f"unavailable must be 'tempfail' or 'accept', not {unavailable!r}")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path.rstrip("/") + "/checkv2"
        self.timeout = timeout
        self.unavailable = unavailable
        self.max_scan_size = max_scan_size

    def request_headers(self, ctx: Context, message: Message) -> list[tuple[str, str]]:
        """The envelope as rspamd reads it: IP, Helo, From, one Rcpt each, User, Queue-Id."""
        session, envelope = ctx.session, ctx.envelope
        headers = [("Content-Length", str(message.size)), ("IP", session.client_ip)]
        if session.helo_name:
            headers.append(("Helo", session.helo_name))
        if envelope.sender is not None:
            headers.append(("From", envelope.sender))
        headers += [("Rcpt", recipient) for recipient in envelope.recipients]
        if session.user is not None:
            headers.append(("User", session.user))
        if envelope.queue_id:
            headers.append(("Queue-Id", envelope.queue_id))
        headers.append(("MTA-Name", session.hostname))
        # http.client refuses CR/LF in a header value; a client's value is made safe here
        return [(name, _CONTROLS.sub("?", value)) for name, value in headers]

    def check(self, ctx: Context, message: Message) -> _Verdict:
        """rspamd's verdict; OSError or ValueError when it cannot give one."""
        connection: http.client.HTTPConnection
        if self._https:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, blocksize=64 * 1024
            )
        else:
            connection = http.client.HTTPConnection(
                self._host, self._port, timeout=self.timeout, blocksize=64 * 1024
            )
        try:
            connection.putrequest("POST", self._path, skip_accept_encoding=True)
            for name, value in self.request_headers(ctx, message):
                connection.putheader(name, value.encode("utf-8"))
            connection.endheaders()
            for piece in message.chunks():
                connection.send(piece)
            response = connection.getresponse()
            body = response.read(_MAX_REPLY + 1)
            if response.status != 200 or len(body) > _MAX_REPLY:
                raise ValueError(f"HTTP {response.status} from rspamd")
        except http.client.HTTPException as exc:
            raise ValueError(f"bad HTTP from rspamd: {exc!r}") from None
        finally:
            connection.close()
        return _verdict(json.loads(body))

    def data(self, ctx: Context, message: Message) -> PolicyResult:
        for name in SPAM_HEADERS:  # before scanning: rspamd and the mailbox see only ours
            message.remove_header(name)
        if message.size > self.max_scan_size:
            ctx.state[self] = (id(message), too_large(self.max_scan_size))
            return None
        try:
            verdict = self.check(ctx, message)
        except (OSError, ValueError) as exc:
            log.warning("rspamd %s: %s (%s)", self.url, exc, self.unavailable)
            ctx.state[self] = (id(message), "not checked: rspamd unavailable")
            if self.unavailable == "tempfail":
                return Reject(451, "4.7.1 Service unavailable, try again later")
            return None
        ctx.state[self] = (id(message), verdict)
        return REPLIES.get(verdict.action)

    def edit(self, ctx: Context, message: Message) -> None:
        found = ctx.state.pop(self, None)
        if found is None or found[0] != id(message):
            return
        verdict = found[1]
        if isinstance(verdict, str):
            message.add_header("X-Spam-Status", f"Unknown, {verdict}")
            return
        spam = verdict.action in SPAM
        if verdict.action is RspamdAction.REWRITE_SUBJECT and verdict.subject:
            message.remove_header("Subject")
            message.add_header("Subject", _header_text(verdict.subject))
        if spam:
            message.add_header("X-Spam-Flag", "YES")
        message.add_header("X-Spam-Action", verdict.action.value)
        message.add_header("X-Spam-Score", f"{verdict.score:.2f}")
        status = "Yes" if spam else "No"
        message.add_header(
            "X-Spam-Status", f"{status}, score={verdict.score:.2f} required={verdict.required:.2f}"
        )

    def __repr__(self) -> str:
        return f"Rspamd({self.url!r})"


def _verdict(reply: Any) -> _Verdict:
    if not isinstance(reply, dict):
        raise ValueError("rspamd's answer is not a JSON object")
    try:
        action = RspamdAction(reply.get("action"))
        score = float(reply.get("score", 0.0))
        required = float(reply.get("required_score", 0.0))
    except (TypeError, ValueError):
        raise ValueError(f"rspamd's answer has no action I know: {reply.get('action')!r}") from None
    subject = reply.get("subject")
    return _Verdict(action, score, required, subject if isinstance(subject, str) else None)


def _header_text(text: str) -> str:
    """A header value from rspamd's text: one line, RFC 2047-encoded when not ASCII."""
    text = _CONTROLS.sub(" ", text).strip()
    if text.isascii():
        return text
    return email.header.Header(text, "utf-8").encode()
