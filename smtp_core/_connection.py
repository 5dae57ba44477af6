"""ServerConnection: one SMTP server session as a pure state machine.

Bytes go in with `receive_data()`, events come out of `next_event()`, decisions go in with
`send()`, and every reply, the engine's own and the application's, leaves through one ordered
buffer that `data_to_send()` drains, so pipelined replies keep command order. No I/O, no
clocks, no threads.

Message content is never held: it leaves as `MessageData` pieces while it arrives, and every
message that began ends with exactly one `EndOfMessage` (which needs the decision) or
`MessageAborted` (which needs none).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from typing import Final, cast, final

from ._address import parse_path
from ._config import Config
from ._decisions import (
    ACCEPTED,
    CLOSING,
    REJECTED,
    Accept,
    Close,
    Decision,
    Outcome,
    Reject,
    outcome_of,
)
from ._errors import LocalProtocolError, RemoteProtocolError, peer_error
from ._events import (
    NEED_DATA,
    PAUSED,
    AbortReason,
    AuthCredentials,
    Closed,
    CloseReason,
    Connected,
    EndOfMessage,
    Event,
    Hello,
    MailFrom,
    MailParams,
    MessageAborted,
    MessageData,
    Quit,
    RcptParams,
    RcptTo,
    Reset,
    Signal,
    StartTLS,
)
from ._params import NO_MAIL_PARAMS, parse_mail_params, parse_rcpt_params
from ._proxy import MAX_V2_HEADER, ProxyError, ProxyHeader, parse_proxy_header
from ._readers import END, ChunkDone, ChunkReader, DataReader
from ._receivebuffer import TOO_LONG, ReceiveBuffer, TooLong
from ._reply import Reply, format_reply
from ._sasl import MECHANISMS, Credentials, SaslMechanism, decode_response
from ._state import (
    CLOSED_STATE,
    COMMAND_NAMES,
    CONNECT_STATE,
    FACTS,
    HANDSHAKE_STATE,
    NEED_RCPT,
    ON_CLOSE,
    ON_DATA,
    ON_MAIL,
    ON_MESSAGE_DONE,
    ON_RCPT,
    ON_RESET,
    READS_PROXY,
    READS_SASL,
    READS_TEXT,
    STARTTLS_STATE,
    UNKNOWN,
    State,
    Trigger,
    next_state,
)
from ._xclient import XCLIENT_ATTRIBUTES, parse_xclient, trusted

__all__ = ["Answer", "ServerConnection"]

#: What `send()` takes: a decision, a ready-made reply, or (LMTP, answering an EndOfMessage)
#: one decision per recipient.
Answer = Decision | Reply | Mapping[str, Decision | Reply]

_BAD_COMMAND_BYTES: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS: Final = re.compile(r"[0-9]{1,20}\Z")
#: Commands that do not move a session toward delivering mail: past
#: `Config.junk_command_limit` of them each counts as an error (Postfix's junk commands, plus
#: HELP, which would otherwise let a client idle just as well as NOOP does).
_JUNK: Final = frozenset({"NOOP", "RSET", "VRFY", "HELP"})
#: The limits `stress` puts in force (Postfix's stress values).
_STRESS_LIMIT: Final = 1


def _r(code: int, enhanced: str | None, text: str) -> Reply:
    return Reply(code=code, text=(text,), enhanced=enhanced)


_ACCEPT: Final = Accept()
_OK: Final = _r(250, "2.0.0", "Ok")
_MAIL_OK: Final = _r(250, "2.1.0", "Ok")
_MAIL_NO: Final = _r(550, "5.7.1", "Error: sender rejected")
_RCPT_OK: Final = _r(250, "2.1.5", "Ok")
_RCPT_NO: Final = _r(550, "5.7.1", "Error: recipient rejected")
_DATA_NO: Final = _r(554, "5.7.1", "Error: message rejected")
_AUTH_OK: Final = _r(235, "2.7.0", "Authentication successful")
_AUTH_NO: Final = _r(535, "5.7.8", "Error: authentication failed")
_HELLO_NO: Final = _r(550, "5.7.1", "Error: HELO/EHLO rejected")
_GREETING_NO: Final = _r(554, None, "Error: service refused")
_TLS_OK: Final = _r(220, "2.0.0", "Ready to start TLS")
_TLS_NO: Final = _r(454, "4.7.0", "TLS not available due to temporary reason")
_GO_AHEAD: Final = _r(354, None, "End data with <CR><LF>.<CR><LF>")
_BYE: Final = _r(221, "2.0.0", "Bye")
_SYNTAX_ERROR: Final = _r(500, "5.5.2", "Error: bad syntax")
_UNKNOWN: Final = _r(500, "5.5.2", "Error: command not recognized")
_TOO_LONG: Final = _r(500, "5.5.2", "Error: line too long")
_NO_RECIPIENTS: Final = _r(554, "5.5.1", "Error: no valid recipients")
#: A SASL response may be `max_auth_line` octets long; its line also holds CRLF and, for an
#: initial response, "AUTH", a mechanism name (at most 20 octets, RFC 4422 3.1) and spaces.
_AUTH_LINE_SLACK: Final = len("AUTH  ") + 20 + len("\r\n")


@final
class ServerConnection:
    """The server side of one SMTP (or LMTP) session.

    `peer` is handed to the application in the `Connected` event; `tls` is true for implicit
    TLS (SMTPS), where the session is encrypted from the first byte. With
    `Config.proxy_protocol` the session begins with the PROXY header, which names the peer;
    `tls` then means that the TLS handshake follows that header (SMTPS behind a proxy).
    """

    def __init__(
        self,
        config: Config | None = None,
        peer: tuple[str, int] | None = None,
        *,
        tls: bool = False,
        auto_accept: frozenset[type[Event]] = frozenset(),
    ) -> None:
        self.config: Final = config if config is not None else Config()
        #: Decision events the engine accepts itself, with the standard reply, without
        #: returning them: for an application that has no policy for them.
        self.auto_accept = auto_accept
        #: The client's (address, port): as the transport saw it, then as a PROXY header or
        #: XCLIENT names it.
        self.peer = peer
        proxied = self.config.proxy_protocol
        self._state = State.PROXY if proxied else CONNECT_STATE
        self._facts = FACTS[self._state]
        self._buf = ReceiveBuffer()
        self._out = bytearray()
        self._pending: Event | None = None
        self._eof = False
        self._close_reason = CloseReason.ABORTED
        self._errors = 0
        self._junk = 0
        self._stress = False
        self._max_errors = self.config.max_errors
        self._junk_limit = self.config.junk_command_limit
        #: The longest line read (a SASL response may be longer than a command), and the
        #: longest command, CRLF excluded.
        self._line_cap = self.config.max_auth_line + _AUTH_LINE_SLACK
        self._command_cap = self.config.max_command_line - 2
        self._auth_failures = 0
        self._discarded = 0
        # The connection: the PROXY header, and what XCLIENT says.
        self._proxy: ProxyHeader | None = None
        self._proxy_error: ProxyError | None = None
        self._handshake_after_proxy = tls and proxied
        self._server_address: tuple[str, int] | None = None
        self._client_name: str | None = None
        self._xclient_ok = trusted(peer, self.config.xclient_trusted)
        # Session: forgotten after STARTTLS.
        self._tls = tls and not proxied
        self._helo: str | None = None
        self._esmtp = False
        self._user: str | None = None
        self._sasl: SaslMechanism | None = None
        self._sasl_name = ""
        # Transaction: forgotten after RSET, HELO/EHLO and each message.
        self._sender: str | None = None
        self._mail_params = NO_MAIL_PARAMS
        self._recipients: list[str] = []
        self._rcpt_params: list[RcptParams] = []
        self._rcpt_attempted = False
        self._data = DataReader(self.config)
        self._chunks = ChunkReader(self.config)
        #: A message's content began (DATA, an accepted BDAT) and has not ended yet.
        self._content_open = False
        #: The message in progress ended under the command just read (RSET, EHLO between BDAT
        #: chunks): MessageAborted goes out first, then `_held`, that command's event.
        self._aborted: AbortReason | None = None
        self._held: Event | None = None
        #: The reply codes the last answer resolved to (one per recipient for an LMTP
        #: message answered per recipient): what the transport's metrics count.
        self.answered_codes: list[int] = []

    # ------------------------------------------------------------------ public state

    @property
    def state(self) -> State:
        return self._state

    @property
    def in_transaction(self) -> bool:
        """A mail transaction is open: MAIL was accepted and its message not yet answered."""
        return self._facts.in_transaction

    @property
    def reading_content(self) -> bool:
        """The bytes the engine reads now are message content: DATA text, or the octets of a
        BDAT chunk (a refused one included), not command lines."""
        return self._facts.reads is READS_TEXT or self._chunks.active

    @property
    def helo_name(self) -> str | None:
        """The accepted HELO/EHLO/LHLO name, or None."""
        return self._helo

    @property
    def esmtp(self) -> bool:
        """True after an accepted EHLO or LHLO."""
        return self._esmtp

    @property
    def tls_active(self) -> bool:
        return self._tls

    @property
    def authenticated_user(self) -> str | None:
        return self._user

    @property
    def sender(self) -> str | None:
        """The accepted MAIL FROM address ("" for <>), or None outside a transaction."""
        return self._sender

    @property
    def recipients(self) -> tuple[str, ...]:
        """The accepted recipients of the current transaction."""
        return tuple(self._recipients)

    @property
    def mail_params(self) -> MailParams:
        """The accepted MAIL FROM parameters (empty outside a transaction)."""
        return self._mail_params

    @property
    def rcpt_params(self) -> tuple[RcptParams, ...]:
        """The parameters of each accepted recipient, in `recipients` order."""
        return tuple(self._rcpt_params)

    @property
    def reading_chunk(self) -> bool:
        """True while the octets of a BDAT chunk are arriving."""
        return self._chunks.active

    @property
    def auth_offered(self) -> bool:
        c = self.config
        return bool(c.auth_mechanisms) and (self._tls or c.auth_allow_plaintext)

    @property
    def starttls_offered(self) -> bool:
        return self.config.tls_available and not self._tls

    @property
    def proxy_header(self) -> ProxyHeader | None:
        """The PROXY header the connection began with (`Config.proxy_protocol`), once read."""
        return self._proxy

    @property
    def proxy_error(self) -> ProxyError | None:
        """Why the connection was closed without a greeting (`CloseReason.PROXY`)."""
        return self._proxy_error

    @property
    def server_address(self) -> tuple[str, int] | None:
        """The (address, port) the client connected to, as a PROXY header or XCLIENT
        (DESTADDR, DESTPORT) says; None when neither did."""
        return self._server_address

    @property
    def client_name(self) -> str | None:
        """The client's host name as XCLIENT NAME gave it; None when unknown."""
        return self._client_name

    @property
    def xclient_offered(self) -> bool:
        """The client may send XCLIENT: its address (after any PROXY header) is in
        `Config.xclient_trusted`."""
        return self._xclient_ok

    @property
    def trailing_data(self) -> bytes:
        """In the HANDSHAKE state (implicit TLS behind a proxy): the bytes that arrived right
        behind the PROXY header, the start of the TLS handshake. Hand them to TLS before
        anything read later; `tls_started()` drops them from the engine. Else b""."""
        if self._state is not HANDSHAKE_STATE:
            return b""
        return self._buf.peek(len(self._buf))

    @property
    def plaintext_discarded(self) -> int:
        """Octets the client pipelined behind STARTTLS, which the engine dropped unread (RFC
        3207 5): more than 0 is an injection attempt, worth a log line."""
        return self._discarded

    @property
    def stress(self) -> bool:
        """Stress mode, as Postfix's: while true, the junk-command limit and the error limit
        are both 1. The transport sets it (when most connection slots are taken, say) and may
        clear it again, which restores the Config's limits."""
        return self._stress

    @stress.setter
    def stress(self, on: bool) -> None:
        self._stress = on
        self._max_errors = _STRESS_LIMIT if on else self.config.max_errors
        self._junk_limit = _STRESS_LIMIT if on else self.config.junk_command_limit

    # ------------------------------------------------------------------ the h11-style API

    def receive_data(self, data: bytes | bytearray) -> None:
        """Store bytes from the peer; b"" means the peer closed its side."""
        if self._state is CLOSED_STATE:
            return
        handshake = self._state is STARTTLS_STATE or self._state is HANDSHAKE_STATE
        if not data:
            self._eof = True
            if handshake:  # the peer left during the handshake
                self._close(CloseReason.EOF)
            return
        if self._eof:
            raise LocalProtocolError("received data after EOF")
        if handshake:
            raise LocalProtocolError(
                "receive_data() while the STARTTLS handshake is pending: bytes that arrive "
                "now belong to the handshake; call tls_started() first"
            )
        self._buf.append(data)

    def next_event(self) -> Event | Signal:
        """The next event, or NEED_DATA, or PAUSED while an event awaits its decision.

        Peer errors never raise: they are answered in the output buffer.
        """
        if (
            self._pending is not None
            or self._state is STARTTLS_STATE
            or self._state is HANDSHAKE_STATE
        ):
            return PAUSED
        if self._state is CLOSED_STATE and self._held is None:
            return self._closed()
        while True:
            if self._held is not None:
                event: Event | Signal | None = self._held
                self._held = None
            else:
                try:
                    event = self._step()
                except RemoteProtocolError as exc:
                    self._answer_error(exc)
                    event = None
                if self._aborted is not None:
                    reason, self._aborted = self._aborted, None
                    if isinstance(event, Event):
                        self._held = event
                    return MessageAborted(reason=reason)
            if event is None:
                if self.state is CLOSED_STATE:  # the property: mypy narrows attributes
                    return self._closed()
                continue
            if event is NEED_DATA:
                if self._eof:
                    self._close(CloseReason.EOF)
                    return self._closed()
                self._buf.compact()
                return NEED_DATA
            if event is PAUSED:  # the TLS handshake behind the PROXY header is due
                return PAUSED
            assert isinstance(event, Event)
            kind = type(event)
            if kind in _ANSWERS:
                if kind in self.auto_accept:
                    self._answer(event, _ACCEPT)
                    if self.state is STARTTLS_STATE:
                        return PAUSED  # the transport runs the handshake now
                    continue
                self._pending = event
            return event

    def check_answer(self, answer: object, event: Event | None = None) -> Answer:
        """Return `answer` if it can answer the event awaiting a decision (which `event`, when
        given, must be); raise `LocalProtocolError` if not. `send()` makes the same check; call
        this to vet an answer from untrusted code before acting on it."""
        pending = self._pending
        if pending is None:
            raise LocalProtocolError("no event awaits a decision (answered twice?)")
        if event is not None and event is not pending:
            raise LocalProtocolError(f"{event!r} is not the event awaiting a decision")
        if type(answer) in _DECISION_TYPES:
            return answer  # type: ignore[return-value]  # one of the four final classes
        if isinstance(answer, Mapping):
            if not (self.config.lmtp and isinstance(pending, EndOfMessage)):
                raise LocalProtocolError("per-recipient answers are for LMTP messages only")
            for rcpt in pending.recipients:
                if type(answer.get(rcpt)) not in _DECISION_TYPES:
                    raise LocalProtocolError(f"no decision for recipient {rcpt!r}")
            return answer
        raise LocalProtocolError(f"not a decision: {answer!r}")

    def send(self, answer: Answer, event: Event | None = None) -> None:
        """Answer the event that paused the engine (`event`, if given, must be that one). The
        reply joins the output buffer after every earlier one; `data_to_send()` drains it.

        A misuse raises `LocalProtocolError` before anything changes (see `check_answer()`).
        """
        answer = self.check_answer(answer, event)
        pending = self._pending
        assert pending is not None
        self._pending = None
        self._answer(pending, answer)

    def data_to_send(self) -> bytes:
        """Drain the output buffer: every reply so far, in command order."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def tls_started(self) -> None:
        """The STARTTLS handshake succeeded: forget the session, as RFC 3207 4.2 requires.
        (Behind a proxy on an implicit-TLS listener: the handshake after the PROXY header
        succeeded, and the session begins.)"""
        if self._state is HANDSHAKE_STATE:
            self._tls = True
            self._buf.clear()  # `trailing_data`: the transport gave it to TLS
            self._go(Trigger.TLS_DONE)
            return
        if self._state is not STARTTLS_STATE:
            raise LocalProtocolError("tls_started() without an accepted STARTTLS")
        self._tls = True
        self._forget_session()
        self._go(Trigger.TLS_DONE)

    def abort(self, reply: Reply | None) -> None:
        """End the session from the transport's side (a timeout, a shutdown) with `reply`
        queued in the output buffer, or silently with None (the connection is gone). Input not
        yet processed and any pending event are dropped."""
        if self._state is not CLOSED_STATE:
            self._pending = None
            self._buf.clear()
            if reply is not None:
                self._write(reply)
            self._close(CloseReason.ABORTED)

    # ------------------------------------------------------------------ plumbing

    def _go(self, trigger: Trigger) -> None:
        self._state = state = next_state(self._state, trigger)
        self._facts = FACTS[state]

    def _close(self, reason: CloseReason) -> None:
        if self._state is not CLOSED_STATE:
            self._close_reason = reason
            self._go(ON_CLOSE)

    def _write(self, reply: Reply, *, enhanced: bool = True) -> None:
        self._out += format_reply(reply, enhanced=enhanced and self.config.enhanced_status_codes)

    def _answer_error(self, exc: RemoteProtocolError) -> None:
        assert exc.reply_hint is not None
        self._write(exc.reply_hint)
        self._count_error()

    def _count_error(self) -> None:
        self._errors += 1
        if self._errors >= self._max_errors:
            self._too_many_errors()

    def _too_many_errors(self) -> None:
        self._write(_r(421, "4.7.0", f"{self.config.hostname} Error: too many errors"))
        self._close(CloseReason.ERRORS)

    def _closed(self) -> Event:
        """What a closed session says: that the message in progress was aborted, then Closed."""
        if self._content_open:
            self._content_open = False
            return MessageAborted(reason=AbortReason.CLOSED)
        return Closed(reason=self._close_reason)

    def _reset_transaction(self) -> None:
        if self._content_open:
            self._content_open = False
            self._aborted = AbortReason.RESET
        self._sender = None
        self._mail_params = NO_MAIL_PARAMS
        self._recipients.clear()
        self._rcpt_params.clear()
        self._rcpt_attempted = False
        self._chunks.clear()

    def _forget_session(self) -> None:
        self._helo = None
        self._esmtp = False
        self._user = None
        self._reset_transaction()

    def _out_of_sequence(self, why: str) -> RemoteProtocolError:
        """The 503 for a command the state refuses; DATA and BDAT after nothing but refused
        recipients get 554 instead (RFC 2920 3.1)."""
        if why == NEED_RCPT and self._rcpt_attempted:
            return RemoteProtocolError("no valid recipients", _NO_RECIPIENTS)
        return peer_error(503, "5.5.1", why)

    # ------------------------------------------------------------------ reading

    def _step(self) -> Event | Signal | None:
        reads = self._facts.reads
        if reads is READS_TEXT:
            return self._read_data()
        if reads is READS_PROXY:
            return self._read_proxy()
        if self._state is CONNECT_STATE:
            return Connected(peer=self.peer)
        if self._chunks.active:
            return self._read_chunk()
        line = self._buf.line(self._line_cap)
        if line is None:
            return NEED_DATA
        if reads is READS_SASL:
            return self._sasl_line(line)
        if line is TOO_LONG or (len(line) > self._command_cap and line[:5].upper() != b"AUTH "):
            raise RemoteProtocolError("line too long", _TOO_LONG)
        return self._command(line)

    def _command(self, line: bytes) -> Event | None:
        if self._errors >= self._max_errors:  # stress lowered the limit below the count
            self._too_many_errors()
            return None
        if _BAD_COMMAND_BYTES.search(line):
            raise peer_error(500, "5.5.2", "Error: bad character in command")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise peer_error(500, "5.5.2", "Error: command is not valid UTF-8") from None
        verb, _, arg = text.partition(" ")
        verb = _upper(verb)
        command = _COMMAND_TABLE.get(verb)
        if command is None:
            if verb in self.config.forbidden_commands:
                self._write(_r(221, "2.7.0", "Error: I can break rules, too. Goodbye."))
                self._close(CloseReason.FORBIDDEN)
                return None
            why = self._facts.refused.get(UNKNOWN)
            if why is not None:
                raise self._out_of_sequence(why)
            if not verb:
                raise RemoteProtocolError("empty command", _SYNTAX_ERROR)
            raise RemoteProtocolError("unknown command", _UNKNOWN)
        # BDAT checks the state itself: a refused chunk must still be read.
        why = self._facts.refused.get(verb)
        if why is not None and verb != "BDAT":
            raise self._out_of_sequence(why)
        event = command(self, verb, arg.strip(" "))
        if verb in _JUNK:
            self._junk += 1
            if self._junk > self._junk_limit:
                self._count_error()
        return event

    def _read_proxy(self) -> Signal | None:
        """The PROXY header: the peer it names becomes ours. Nothing is said either way; a
        missing, malformed or oversized header closes the connection."""
        header = parse_proxy_header(self._buf.peek(MAX_V2_HEADER))
        if header is None:
            return NEED_DATA
        if isinstance(header, ProxyError):
            self._proxy_error = header
            self._close(CloseReason.PROXY)
            return None
        self._buf.skip(header.length)
        self._proxy = header
        if header.source is not None:
            self.peer = header.source
            self._server_address = header.destination
            self._xclient_ok = trusted(self.peer, self.config.xclient_trusted)
        if self._handshake_after_proxy:
            self._go(Trigger.PROXY_TLS)
            return PAUSED
        self._go(Trigger.PROXY_READ)
        return None

    def _read_data(self) -> Event | Signal | None:
        result = self._data.read(self._buf)
        if type(result) is bytes:
            return MessageData(data=result)
        if result is None:
            return NEED_DATA
        if result is END:
            return self._end_of_message(self._data.size)
        if isinstance(result, AbortReason):
            self._content_open = False
            return MessageAborted(reason=result)
        assert isinstance(result, Reply)  # the end of a failed message's text
        self._write(result)
        self._reset_transaction()
        self._go(ON_MESSAGE_DONE)
        return None

    def _read_chunk(self) -> Event | Signal | None:
        chunks = self._chunks
        result = chunks.read(self._buf)
        if type(result) is bytes:
            return MessageData(data=result)
        if result is None:
            return NEED_DATA
        if isinstance(result, AbortReason):
            self._content_open = False
            return MessageAborted(reason=result)
        assert result is ChunkDone.DONE
        refusal = chunks.refusal
        if refusal is not None:
            if refusal.code in _CONTENT_REFUSALS:  # the content itself: the transaction ends
                self._reset_transaction()
                self._go(ON_RESET)
                self._write(refusal)
                return None
            raise RemoteProtocolError("BDAT refused", refusal)
        if not chunks.last:
            self._go(Trigger.CHUNK)
            self._write(_r(250, "2.0.0", f"{chunks.size} octets received"))
            return None
        return self._end_of_message(chunks.sent)

    def _end_of_message(self, size: int) -> EndOfMessage:
        self._content_open = False
        return EndOfMessage(
            size=size,
            sender=self._sender or "",
            recipients=tuple(self._recipients),
            params=self._mail_params,
            rcpt_params=tuple(self._rcpt_params),
        )

    # ------------------------------------------------------------------ commands

    def _cmd_hello(self, verb: str, arg: str) -> Event:
        if (verb == "LHLO") != self.config.lmtp:
            raise RemoteProtocolError("wrong greeting for this protocol", _UNKNOWN)
        if not arg:
            raise peer_error(501, "5.5.4", f"Syntax: {verb} hostname")
        # EHLO implies RSET (RFC 5321 4.1.4); a rejected one leaves no HELO behind.
        self._reset_transaction()
        self._helo = None
        self._esmtp = False
        return Hello(hostname=arg, extended=verb != "HELO")

    def _cmd_mail(self, verb: str, arg: str) -> Event:
        if arg[:5].upper() != "FROM:":
            raise peer_error(501, "5.5.4", "Syntax: MAIL FROM:<address>")
        config = self.config
        utf8 = self._esmtp and config.smtputf8
        sender, rest = parse_path(arg[5:], null_ok=True, utf8=utf8, enhanced="5.1.7")
        params = parse_mail_params(rest, config, esmtp=self._esmtp, auth=self.auth_offered)
        if not sender.isascii() and not params.smtputf8:
            raise peer_error(553, "5.6.7", "Error: non-ASCII address needs SMTPUTF8")
        if params.size is not None and params.size > config.max_message_size:
            raise peer_error(552, "5.3.4", "Error: message size exceeds fixed limit")
        return MailFrom(sender=sender, params=params)

    def _cmd_rcpt(self, verb: str, arg: str) -> Event | None:
        if arg[:3].upper() != "TO:":
            raise peer_error(501, "5.5.4", "Syntax: RCPT TO:<address>")
        self._rcpt_attempted = True
        if len(self._recipients) >= self.config.max_recipients:
            # Not a peer error: a legitimate sender may overshoot (Postfix does not count it).
            self._write(_r(452, "4.5.3", "Error: too many recipients"))
            return None
        utf8 = self._mail_params.smtputf8
        recipient, rest = parse_path(arg[3:], null_ok=False, utf8=utf8, enhanced="5.1.3")
        params = parse_rcpt_params(rest, self.config, esmtp=self._esmtp)
        return RcptTo(recipient=recipient, params=params)

    def _cmd_data(self, verb: str, arg: str) -> None:
        if arg:
            raise peer_error(501, "5.5.4", "Syntax: DATA")
        self._go(ON_DATA)
        self._content_open = True
        self._data.start(self._buf)
        self._write(_GO_AHEAD, enhanced=False)

    def _cmd_bdat(self, verb: str, arg: str) -> Event | None:
        if not self.config.chunking:
            raise RemoteProtocolError("CHUNKING is off", _UNKNOWN)
        parts = arg.split(" ")
        if not 1 <= len(parts) <= 2 or not _DIGITS.match(parts[0]):
            raise peer_error(501, "5.5.4", "Syntax: BDAT count [LAST]")
        if len(parts) == 2 and _upper(parts[1]) != "LAST":
            raise peer_error(501, "5.5.4", "Syntax: BDAT count [LAST]")
        why = self._facts.refused.get("BDAT")
        refusal = None if why is None else self._out_of_sequence(why).reply_hint
        # The chunk is read in every case, so that the session stays in sync (RFC 3030 2).
        chunks = self._chunks
        chunks.start(int(parts[0]), last=len(parts) == 2, refusal=refusal)
        if chunks.refusal is None:
            self._content_open = True
        elif self._content_open and chunks.refusal.code in _CONTENT_REFUSALS:
            self._content_open = False  # the 552 ends the message that began
            return MessageAborted(reason=AbortReason.TOO_LARGE)
        return None

    def _cmd_rset(self, verb: str, arg: str) -> Event:
        if arg:
            raise peer_error(501, "5.5.4", "Syntax: RSET")
        self._reset_transaction()
        self._go(ON_RESET)
        self._write(_OK)
        return Reset()

    def _cmd_noop(self, verb: str, arg: str) -> None:
        self._write(_OK)

    def _cmd_help(self, verb: str, arg: str) -> None:
        c = self.config
        # Only what this session can use now: no EXPN (never implemented), and STARTTLS, AUTH
        # and BDAT only while they are offered.
        hidden = {
            "HELO": c.lmtp,
            "EHLO": c.lmtp,
            "LHLO": not c.lmtp,
            "EXPN": True,
            "BDAT": not c.chunking,
            "STARTTLS": not self.starttls_offered,
            "AUTH": not self.auth_offered,
            "XCLIENT": not self._xclient_ok,
        }
        names = " ".join(name for name in COMMAND_NAMES if not hidden.get(name, False))
        self._write(_r(214, "2.0.0", f"Commands: {names}"))

    def _cmd_vrfy(self, verb: str, arg: str) -> None:
        if not arg:
            raise peer_error(501, "5.5.4", "Syntax: VRFY address")
        text = "Cannot VRFY user, but will accept message and attempt delivery"
        self._write(_r(252, "2.5.2", text))

    def _cmd_expn(self, verb: str, arg: str) -> None:
        raise peer_error(502, "5.5.1", "Error: command not implemented")

    def _cmd_quit(self, verb: str, arg: str) -> Event:
        self._write(_BYE)
        self._close(CloseReason.QUIT)
        return Quit()

    def _cmd_starttls(self, verb: str, arg: str) -> Event:
        if arg:
            raise peer_error(501, "5.5.4", "Syntax: STARTTLS")
        if self._tls:
            raise peer_error(503, "5.5.1", "Error: TLS already active")
        if not self.config.tls_available:
            raise peer_error(502, "5.5.1", "Error: command not implemented")
        return StartTLS()

    def _cmd_auth(self, verb: str, arg: str) -> Event | None:
        config = self.config
        if not config.auth_mechanisms:
            raise peer_error(502, "5.5.1", "Error: authentication not enabled")
        if not self.auth_offered:
            raise peer_error(538, "5.7.11", "Error: must issue a STARTTLS command first")
        if not self._esmtp:
            raise peer_error(503, "5.5.1", "Error: send EHLO first")
        if self._user is not None:
            raise peer_error(503, "5.5.1", "Error: already authenticated")
        name, _, initial = arg.partition(" ")
        name = _upper(name)
        if not name:
            raise peer_error(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
        if name not in config.auth_mechanisms:
            raise peer_error(504, "5.5.4", "Error: unsupported authentication mechanism")
        initial = initial.strip(" ")
        if len(initial) > config.max_auth_line:
            raise peer_error(500, "5.5.6", "Error: authentication exchange line is too long")
        if initial == "*":
            raise peer_error(501, "5.7.0", "Error: authentication cancelled")
        response = decode_response(initial.encode()) if initial else None
        self._sasl = MECHANISMS[name]()
        self._sasl_name = name
        self._go(Trigger.AUTH)
        return self._sasl_step(response)

    def _cmd_xclient(self, verb: str, arg: str) -> None:
        if not self.config.xclient_trusted:
            raise RemoteProtocolError("XCLIENT is off", _UNKNOWN)
        if not self._xclient_ok:
            raise peer_error(550, "5.7.0", "Error: insufficient authorization")
        attributes = parse_xclient(arg)
        # Postfix: the session starts over at the greeting, with the new client's attributes
        # (a HELO or PROTO given here stands; the rest of the session is forgotten).
        self._forget_session()
        peer = self.peer
        for name, value in attributes.items():
            if name == "ADDR":
                peer = None if value is None else (value, peer[1] if peer else 0)
            elif name == "PORT":
                if peer is not None:
                    peer = (peer[0], 0 if value is None else int(value))
            elif name == "NAME":
                self._client_name = value
            elif name == "HELO":
                self._helo = value
            elif name == "PROTO":
                self._esmtp = value == "ESMTP"
            elif name == "LOGIN":
                self._user = value
            elif name == "DESTADDR":
                old = self._server_address
                self._server_address = None if value is None else (value, old[1] if old else 0)
            elif name == "DESTPORT" and self._server_address is not None:
                address = self._server_address[0]
                self._server_address = (address, 0 if value is None else int(value))
        self.peer = peer
        self._go(Trigger.XCLIENT)

    # ------------------------------------------------------------------ AUTH exchange

    def _sasl_line(self, line: bytes | TooLong) -> Event | None:
        if line is TOO_LONG or len(line) > self.config.max_auth_line:
            self._sasl_abort()
            raise peer_error(500, "5.5.6", "Error: authentication exchange line is too long")
        if line.strip() == b"*":
            self._sasl_abort()
            raise peer_error(501, "5.7.0", "Error: authentication cancelled")
        try:
            response = decode_response(line.strip())
        except RemoteProtocolError:
            self._sasl_abort()
            raise
        return self._sasl_step(response)

    def _sasl_step(self, response: bytes | None) -> Event | None:
        assert self._sasl is not None
        try:
            result = self._sasl.step(response)
        except RemoteProtocolError:
            self._sasl_abort()
            raise
        if not isinstance(result, Credentials):
            self._write(Reply(code=334, text=(base64.b64encode(result).decode(),)), enhanced=False)
            return None
        self._sasl = None
        return AuthCredentials(
            mechanism=self._sasl_name,
            username=result.username,
            password=result.password,
            authzid=result.authzid,
        )

    def _sasl_abort(self) -> None:
        self._sasl = None
        if self._state is State.AUTH:
            self._go(Trigger.AUTH_DONE)

    # ------------------------------------------------------------------ answers

    def _answer(self, event: Event, answer: Answer) -> None:
        self.answered_codes.clear()
        if self.config.lmtp and isinstance(event, EndOfMessage):
            self._answer_lmtp_message(event, answer)
        else:  # check_answer() allows a mapping for an LMTP message only
            _ANSWERS[type(event)](self, event, cast("Decision | Reply", answer))

    def _decide(self, answer: Decision | Reply, ok: Reply, no: Reply) -> tuple[Outcome, Reply]:
        """Resolve an answer against the event's standard replies: its outcome, and the reply
        to write."""
        outcome, reply = self._resolve(answer, ok, no)
        self.answered_codes.append(reply.code)
        return outcome, reply

    def _resolve(self, answer: Decision | Reply, ok: Reply, no: Reply) -> tuple[Outcome, Reply]:
        if type(answer) is Accept:  # the common case, first (the class is final)
            if answer.text is None:
                return ACCEPTED, ok
            return ACCEPTED, Reply(code=ok.code, text=(answer.text,), enhanced=ok.enhanced)
        outcome = outcome_of(answer)
        if isinstance(answer, Reply):
            return outcome, answer
        if isinstance(answer, Reject):
            code = no.code if answer.code is None else answer.code
            text = no.text if answer.text is None else (answer.text,)
            return outcome, Reply(code=code, text=text, enhanced=_enhanced_for(code, no.enhanced))
        text = (
            (f"{self.config.hostname} Error: closing connection",)
            if answer.text is None
            else (answer.text,)
        )
        enhanced = _enhanced_for(answer.code, "4.7.0")
        return outcome, Reply(code=answer.code, text=text, enhanced=enhanced)

    def _answer_connected(self, event: Event, answer: Decision | Reply) -> None:
        host = self.config.hostname
        outcome, reply = self._decide(answer, _r(220, None, self.config.banner), _GREETING_NO)
        if not isinstance(answer, Reply) and not reply.text[0].startswith(host):
            reply = Reply(code=reply.code, text=(f"{host} {reply.text[0]}",))
        self._write(reply, enhanced=False)
        if outcome is CLOSING:
            self._close(CloseReason.REFUSED)
        elif outcome is ACCEPTED:
            # After an XCLIENT that named the HELO, the client need not greet again.
            self._go(Trigger.GREET if self._helo is None else Trigger.GREET_HELLO)
        else:
            self._go(Trigger.REFUSE)

    def _answer_hello(self, event: Event, answer: Decision | Reply) -> None:
        assert isinstance(event, Hello)
        host = self.config.hostname
        outcome, reply = self._decide(answer, _r(250, None, host), _HELLO_NO)
        if outcome is ACCEPTED:
            first = reply.text[0] if reply.text and reply.text[0] else host
            if not first.startswith(host):
                first = f"{host} {first}"
            lines = (first, *self._extensions()) if event.extended else (first,)
            self._write(Reply(code=250, text=lines), enhanced=False)
            self._helo = event.hostname
            self._esmtp = event.extended
            self._go(Trigger.HELLO)
            return
        self._write(reply)
        if outcome is CLOSING:
            self._close(CloseReason.REFUSED)
        else:
            self._go(Trigger.HELLO_REJECTED)

    def _extensions(self) -> list[str]:
        c = self.config
        table = (
            (c.pipelining, "PIPELINING"),
            (c.size, f"SIZE {c.max_message_size}"),
            (c.eightbitmime, "8BITMIME"),
            (c.smtputf8, "SMTPUTF8"),
            (c.enhanced_status_codes, "ENHANCEDSTATUSCODES"),
            (c.chunking, "CHUNKING"),
            (c.dsn, "DSN"),
            (self.starttls_offered, "STARTTLS"),
            (self.auth_offered, "AUTH " + " ".join(c.auth_mechanisms)),
            (self._xclient_ok, "XCLIENT " + " ".join(XCLIENT_ATTRIBUTES)),
        )
        return [keyword for enabled, keyword in table if enabled]

    def _answer_auth(self, event: Event, answer: Decision | Reply) -> None:
        assert isinstance(event, AuthCredentials)
        outcome, reply = self._decide(answer, _AUTH_OK, _AUTH_NO)
        self._go(Trigger.AUTH_DONE)
        if outcome is ACCEPTED:
            self._user = event.username
        elif outcome is REJECTED:
            self._auth_failures += 1
            if self._auth_failures >= self.config.max_auth_failures:
                self._write(_r(421, "4.7.0", "Error: too many failed authentication attempts"))
                self._close(CloseReason.AUTH)
                return
        self._write(reply)
        if outcome is CLOSING:
            self._close(CloseReason.REFUSED)

    def _answer_mail(self, event: Event, answer: Decision | Reply) -> None:
        assert isinstance(event, MailFrom)
        outcome, reply = self._decide(answer, _MAIL_OK, _MAIL_NO)
        self._write(reply)
        if outcome is ACCEPTED:
            self._sender = event.sender
            self._mail_params = event.params
            self._go(ON_MAIL)
        elif outcome is CLOSING:
            self._close(CloseReason.REFUSED)

    def _answer_rcpt(self, event: Event, answer: Decision | Reply) -> None:
        assert isinstance(event, RcptTo)
        outcome, reply = self._decide(answer, _RCPT_OK, _RCPT_NO)
        self._write(reply)
        if outcome is ACCEPTED:
            self._recipients.append(event.recipient)
            self._rcpt_params.append(event.params)
            self._go(ON_RCPT)
        elif outcome is CLOSING:
            self._close(CloseReason.REFUSED)

    def _answer_message(self, event: Event, answer: Decision | Reply) -> None:
        assert isinstance(event, EndOfMessage)
        outcome, reply = self._decide(answer, _OK, _DATA_NO)
        self._write(reply)
        self._message_answered({outcome})

    def _answer_lmtp_message(self, event: EndOfMessage, answer: Answer) -> None:
        """RFC 2033 4.2: one reply per accepted recipient, in RCPT order."""
        outcomes: set[Outcome] = set()
        for rcpt in event.recipients:
            one = answer[rcpt] if isinstance(answer, Mapping) else answer
            outcome, reply = self._decide(one, _OK, _DATA_NO)
            self._write(reply)
            outcomes.add(outcome)
        self._message_answered(outcomes)

    def _message_answered(self, outcomes: set[Outcome]) -> None:
        self._reset_transaction()
        self._go(ON_MESSAGE_DONE)
        if ACCEPTED in outcomes:
            # A delivered message forgives earlier errors and junk commands, as in Postfix.
            self._errors = self._junk = 0
        if CLOSING in outcomes:
            self._close(CloseReason.REFUSED)

    def _answer_starttls(self, event: Event, answer: Decision | Reply) -> None:
        outcome, reply = self._decide(answer, _TLS_OK, _TLS_NO)
        self._write(reply)
        if outcome is ACCEPTED:
            # Anything pipelined behind STARTTLS is dropped unread (RFC 3207 5).
            self._discarded += len(self._buf)
            self._buf.clear()
            self._go(Trigger.STARTTLS)
        elif outcome is CLOSING:
            self._close(CloseReason.REFUSED)


_DECISION_TYPES: Final = frozenset({Accept, Reject, Close, Reply})
#: Codes of the BDAT refusals about the content itself (too large, bare CR/LF): they end the
#: transaction, unlike one out of sequence.
_CONTENT_REFUSALS: Final = frozenset({550, 552})


def _upper(text: str) -> str:
    """Upper case for keywords, ASCII only: str.upper() turns a dotless i into "I" and a long
    s into "S", which would make a non-ASCII word alias a command."""
    return text.upper() if text.isascii() else text


def _enhanced_for(code: int, standard: str | None) -> str | None:
    """The standard enhanced code, moved to `code`'s class (a 4xx Reject of a 5.7.1 is 4.7.1)."""
    if standard is None:
        return None
    return f"{str(code)[0]}{standard[1:]}"


_Command = Callable[[ServerConnection, str, str], "Event | None"]
_COMMAND_TABLE: Final[dict[str, _Command]] = {
    "HELO": ServerConnection._cmd_hello,
    "EHLO": ServerConnection._cmd_hello,
    "LHLO": ServerConnection._cmd_hello,
    "MAIL": ServerConnection._cmd_mail,
    "RCPT": ServerConnection._cmd_rcpt,
    "DATA": ServerConnection._cmd_data,
    "BDAT": ServerConnection._cmd_bdat,
    "RSET": ServerConnection._cmd_rset,
    "NOOP": ServerConnection._cmd_noop,
    "HELP": ServerConnection._cmd_help,
    "VRFY": ServerConnection._cmd_vrfy,
    "EXPN": ServerConnection._cmd_expn,
    "QUIT": ServerConnection._cmd_quit,
    "STARTTLS": ServerConnection._cmd_starttls,
    "AUTH": ServerConnection._cmd_auth,
    "XCLIENT": ServerConnection._cmd_xclient,
}
assert set(_COMMAND_TABLE) == set(COMMAND_NAMES)
_Answerer = Callable[[ServerConnection, Event, "Decision | Reply"], None]
_ANSWERS: Final[dict[type[Event], _Answerer]] = {
    Connected: ServerConnection._answer_connected,
    Hello: ServerConnection._answer_hello,
    AuthCredentials: ServerConnection._answer_auth,
    MailFrom: ServerConnection._answer_mail,
    RcptTo: ServerConnection._answer_rcpt,
    EndOfMessage: ServerConnection._answer_message,
    StartTLS: ServerConnection._answer_starttls,
}
