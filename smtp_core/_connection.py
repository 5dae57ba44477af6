"""ServerConnection: one SMTP server session as a pure state machine.

Bytes go in with `receive_data()`, events come out of `next_event()`, decisions go in with
`send()`, and every reply leaves through one ordered buffer (`data_to_send()`), so pipelined
replies keep command order whichever side produced them. No I/O, no clocks, no threads.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from typing import Final, final

from ._address import decode_xtext, parse_params, parse_path
from ._config import Config
from ._decisions import Accept, Close, Decision, Reject
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import (
    NEED_DATA,
    PAUSED,
    AuthCredentials,
    Closed,
    Connected,
    Event,
    Hello,
    MailFrom,
    MailParams,
    Message,
    Quit,
    RcptParams,
    RcptTo,
    Reset,
    Signal,
    StartTLS,
)
from ._receivebuffer import TOO_LONG, ReceiveBuffer, TooLong
from ._reply import Reply, format_reply
from ._sasl import MECHANISMS, Credentials, SaslMechanism, decode_response
from ._state import COMMANDS, State, Trigger, next_state

__all__ = ["ServerConnection"]

#: What `send()` takes: a decision, a ready-made reply, or (LMTP, answering a Message) one
#: decision per recipient.
Answer = Decision | Reply | Mapping[str, Decision | Reply]

_BAD_COMMAND_BYTES: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS: Final = re.compile(r"[0-9]{1,20}\Z")
_TRANSACTION_STATES: Final = frozenset({State.MAIL, State.RCPT, State.CHUNKING})
_NOTIFY: Final = frozenset({"SUCCESS", "FAILURE", "DELAY"})


def _r(code: int, enhanced: str | None, text: str) -> Reply:
    return Reply(code=code, text=(text,), enhanced=enhanced)


def _peer_error(code: int, enhanced: str, text: str) -> RemoteProtocolError:
    return RemoteProtocolError(text, _r(code, enhanced, text))


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
#: A SASL response may be `max_auth_line` octets long; its line also holds CRLF and, for an
#: initial response, "AUTH", a mechanism name (at most 20 octets, RFC 4422 3.1) and spaces.
_AUTH_LINE_SLACK: Final = len("AUTH  ") + 20 + len("\r\n")


@final
class ServerConnection:
    """The server side of one SMTP (or LMTP) session.

    `peer` is handed to the application in the `Connected` event; `tls` is true for implicit
    TLS (SMTPS), where the session is encrypted from the first byte.
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
        self.peer: Final = peer
        self._state = State.CONNECT
        self._buf = ReceiveBuffer()
        self._out = bytearray()
        self._pending: Event | None = None
        self._eof = False
        self._close_reason = ""
        self._errors = 0
        self._auth_failures = 0
        # Session: forgotten after STARTTLS.
        self._tls = tls
        self._helo: str | None = None
        self._esmtp = False
        self._user: str | None = None
        self._sasl: SaslMechanism | None = None
        self._sasl_name = ""
        # Transaction: forgotten after RSET, HELO/EHLO and each message.
        self._sender: str | None = None
        self._mail_params = MailParams()
        self._recipients: list[str] = []
        self._rcpt_params: list[RcptParams] = []
        self._rcpt_attempted = False
        # DATA
        self._data_at_start = False
        self._data_dropped = 0
        # BDAT
        self._chunk_left = -1  # -1: no chunk being read
        self._chunk_last = False
        self._chunk_error: Reply | None = None
        self._chunks = bytearray()
        self._chunks_size = 0

    # ------------------------------------------------------------------ public state

    @property
    def state(self) -> State:
        return self._state

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
        return self._chunk_left >= 0

    @property
    def auth_offered(self) -> bool:
        c = self.config
        return bool(c.auth_mechanisms) and (self._tls or c.auth_allow_plaintext)

    # ------------------------------------------------------------------ the h11-style API

    def receive_data(self, data: bytes | bytearray) -> None:
        """Store bytes from the peer; b"" means the peer closed its side."""
        if self._state is State.CLOSED:
            return
        if not data:
            self._eof = True
            if self._state is State.STARTTLS:  # the peer left during the handshake
                self._close("eof")
            return
        if self._eof:
            raise LocalProtocolError("received data after EOF")
        if self._state is State.STARTTLS:
            return  # plaintext behind STARTTLS is an injection attempt (RFC 3207 5)
        self._buf.append(data)

    def next_event(self) -> Event | Signal:
        """The next event, or NEED_DATA, or PAUSED while an event awaits its decision.

        Peer errors never raise: they are answered in the output buffer.
        """
        if self._pending is not None or self._state is State.STARTTLS:
            return PAUSED
        if self._state is State.CLOSED:
            return Closed(reason=self._close_reason)
        while True:
            try:
                event = self._step()
            except RemoteProtocolError as exc:
                self._answer_error(exc)
                event = None
            if event is None:
                if self._is_closed():
                    return Closed(reason=self._close_reason)
                continue
            if event is NEED_DATA:
                if self._eof:
                    self._close("eof")
                    return Closed(reason="eof")
                self._buf.compact()
                return NEED_DATA
            assert isinstance(event, Event)  # _step() never returns PAUSED
            if type(event) in _ANSWERS:
                if type(event) in self.auto_accept:
                    _ANSWERS[type(event)](self, event, _ACCEPT)
                    if self.state is State.STARTTLS:
                        return PAUSED  # the transport runs the handshake now
                    continue
                self._pending = event
            return event

    def send(self, answer: Answer) -> bytes:
        """Answer the event that paused the engine; returns the bytes to write, in order."""
        event = self._pending
        if event is None:
            raise LocalProtocolError("send() called with no event awaiting a decision")
        _check_answer(answer, event, lmtp=self.config.lmtp)
        self._pending = None
        _ANSWERS[type(event)](self, event, answer)
        return self.data_to_send()

    def data_to_send(self) -> bytes:
        """Drain the output buffer: every reply so far, in command order."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def tls_started(self) -> None:
        """The STARTTLS handshake succeeded: forget the session, as RFC 3207 4.2 requires."""
        if self._state is not State.STARTTLS:
            raise LocalProtocolError("tls_started() without an accepted STARTTLS")
        self._tls = True
        self._forget_session()
        self._buf.clear()
        self._go(Trigger.TLS_DONE)

    def abort(self, reply: Reply | None) -> bytes:
        """End the session from the transport's side (a timeout, a shutdown) with `reply`, or
        silently with None (the connection is gone). Input not yet processed is dropped."""
        if self._state is not State.CLOSED:
            self._pending = None
            self._buf.clear()
            if reply is not None:
                self._write(reply)
            self._close("aborted")
        return self.data_to_send()

    # ------------------------------------------------------------------ plumbing

    def _is_closed(self) -> bool:
        return self._state is State.CLOSED

    def _go(self, trigger: Trigger) -> None:
        self._state = next_state(self._state, trigger)

    def _close(self, reason: str) -> None:
        if self._state is not State.CLOSED:
            self._close_reason = reason
            self._go(Trigger.CLOSE)

    def _write(self, reply: Reply, *, enhanced: bool = True) -> None:
        self._out += format_reply(reply, enhanced=enhanced and self.config.enhanced_status_codes)

    def _answer_error(self, exc: RemoteProtocolError) -> None:
        assert exc.reply_hint is not None
        self._write(exc.reply_hint)
        if exc.fatal:
            self._close("errors")
            return
        self._errors += 1
        if self._errors >= self.config.max_errors:
            self._write(_r(421, "4.7.0", f"{self.config.hostname} Error: too many errors"))
            self._close("errors")

    def _reset_transaction(self) -> None:
        self._sender = None
        self._mail_params = MailParams()
        self._recipients.clear()
        self._rcpt_params.clear()
        self._rcpt_attempted = False
        self._chunks.clear()
        self._chunks_size = 0

    def _forget_session(self) -> None:
        self._helo = None
        self._esmtp = False
        self._user = None
        self._reset_transaction()

    # ------------------------------------------------------------------ reading

    def _step(self) -> Event | Signal | None:
        state = self._state
        if state is State.CONNECT:
            return Connected(peer=self.peer)
        if state is State.DATA:
            return self._read_data()
        if self._chunk_left >= 0:
            return self._read_chunk()
        line = self._buf.line(self.config.max_auth_line + _AUTH_LINE_SLACK)
        if line is None:
            return NEED_DATA
        if state is State.AUTH:
            return self._sasl_line(line)
        if line is TOO_LONG or (
            len(line) > self.config.max_command_line - 2 and line[:5].upper() != b"AUTH "
        ):
            raise RemoteProtocolError("line too long", _TOO_LONG)
        return self._command(line)

    def _command(self, line: bytes) -> Event | None:
        if _BAD_COMMAND_BYTES.search(line):
            raise _peer_error(500, "5.5.2", "Error: bad character in command")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise _peer_error(500, "5.5.2", "Error: command is not valid UTF-8") from None
        verb, _, arg = text.partition(" ")
        verb = _upper(verb)
        command = _COMMAND_TABLE.get(verb)
        if command is None:
            if verb in self.config.forbidden_commands:
                self._write(_r(221, "2.7.0", "Error: I can break rules, too. Goodbye."))
                self._close("forbidden")
                return None
            if self._state is State.REFUSED:
                raise _peer_error(503, "5.5.1", "Error: access denied, send QUIT")
            if not verb:
                raise RemoteProtocolError("empty command", _SYNTAX_ERROR)
            raise RemoteProtocolError("unknown command", _UNKNOWN)
        allowed, why = COMMANDS[verb]
        if self._state not in allowed:
            if self._state is State.REFUSED:
                why = "Error: access denied, send QUIT"
            raise _peer_error(503, "5.5.1", why)
        return command(self, verb, arg.strip(" "))

    def _read_data(self) -> Event | Signal | None:
        buf = self._buf
        end = buf.data_end(self._data_at_start)
        if end < 0:
            if len(buf) >= 3:
                self._data_at_start = False
            if len(buf) > self.config.max_message_size:
                # Keeps the start flag: under 3 octets, ".\r\n" may still be arriving.
                self._data_dropped += buf.discard_keeping_tail(4)
            return NEED_DATA
        raw = buf.take(end)
        buf.skip(3)  # ".\r\n"
        self._data_at_start = False
        dropped, self._data_dropped = self._data_dropped, 0
        if dropped or len(raw) > self.config.max_message_size:
            self._refuse_message(_r(552, "5.3.4", "Error: message too large"))
            return None
        limit = self.config.max_text_line
        if limit and max(map(len, raw.split(b"\r\n"))) > limit:
            self._refuse_message(_r(500, "5.5.6", "Error: message line too long"))
            return None
        crlf = raw.count(b"\r\n")
        if raw.count(b"\n") != crlf or raw.count(b"\r") != crlf:
            if self.config.bare_line_endings == "reject":
                self._refuse_message(_r(550, "5.5.2", "Error: bare CR or LF in message text"))
                return None
            raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
            stuffed = True  # lines that began after a bare LF were not scanned for dots
        else:
            stuffed = buf.dot_lines
        # Undo dot-stuffing: a leading dot on any line is removed (RFC 5321 4.5.2).
        content = raw.replace(b"\r\n.", b"\r\n") if stuffed else raw
        if content.startswith(b"."):
            content = content[1:]
        return self._message(content)

    def _read_chunk(self) -> Event | Signal | None:
        buf = self._buf
        if self._chunk_left:
            if not buf:
                return NEED_DATA
            chunk = buf.take(self._chunk_left)
            self._chunk_left -= len(chunk)
            if self._chunk_error is None:
                self._chunks += chunk
            if self._chunk_left:
                return NEED_DATA
        self._chunk_left = -1
        error, self._chunk_error = self._chunk_error, None
        if error is not None:
            if error.code == 552:
                self._reset_transaction()
                self._go(Trigger.RESET)
                self._write(error)
                return None
            raise RemoteProtocolError("BDAT refused", error)
        if not self._chunk_last:
            self._go(Trigger.CHUNK)
            self._write(_r(250, "2.0.0", f"{self._chunks_size} octets received"))
            return None
        content = bytes(self._chunks)
        self._chunks.clear()
        return self._message(content)

    def _message(self, content: bytes) -> Message:
        return Message(
            content=content,
            sender=self._sender or "",
            recipients=tuple(self._recipients),
            params=self._mail_params,
            rcpt_params=tuple(self._rcpt_params),
        )

    def _refuse_message(self, reply: Reply) -> None:
        self._write(reply)
        self._reset_transaction()
        self._go(Trigger.MESSAGE_DONE)

    # ------------------------------------------------------------------ commands

    def _cmd_hello(self, verb: str, arg: str) -> Event:
        if (verb == "LHLO") != self.config.lmtp:
            raise RemoteProtocolError("wrong greeting for this protocol", _UNKNOWN)
        if not arg:
            raise _peer_error(501, "5.5.4", f"Syntax: {verb} hostname")
        # EHLO implies RSET (RFC 5321 4.1.4); a rejected one leaves no HELO behind.
        self._reset_transaction()
        self._helo = None
        self._esmtp = False
        return Hello(hostname=arg, extended=verb != "HELO")

    def _cmd_mail(self, verb: str, arg: str) -> Event:
        if self._state is not State.READY:
            why = "Error: nested MAIL command" if self._helo else "Error: send HELO/EHLO first"
            raise _peer_error(503, "5.5.1", why)
        if arg[:5].upper() != "FROM:":
            raise _peer_error(501, "5.5.4", "Syntax: MAIL FROM:<address>")
        utf8 = self._esmtp and self.config.smtputf8
        sender, rest = parse_path(arg[5:], null_ok=True, utf8=utf8, enhanced="5.1.7")
        params = self._parse_mail_params(rest)
        if not sender.isascii() and not params.smtputf8:
            raise _peer_error(553, "5.6.7", "Error: non-ASCII address needs SMTPUTF8")
        if params.size is not None and params.size > self.config.max_message_size:
            raise _peer_error(552, "5.3.4", "Error: message size exceeds fixed limit")
        return MailFrom(sender=sender, params=params)

    def _cmd_rcpt(self, verb: str, arg: str) -> Event | None:
        if arg[:3].upper() != "TO:":
            raise _peer_error(501, "5.5.4", "Syntax: RCPT TO:<address>")
        self._rcpt_attempted = True
        if len(self._recipients) >= self.config.max_recipients:
            # Not a peer error: a legitimate sender may overshoot (Postfix does not count it).
            self._write(_r(452, "4.5.3", "Error: too many recipients"))
            return None
        utf8 = self._mail_params.smtputf8
        recipient, rest = parse_path(arg[3:], null_ok=False, utf8=utf8, enhanced="5.1.3")
        return RcptTo(recipient=recipient, params=self._parse_rcpt_params(rest))

    def _cmd_data(self, verb: str, arg: str) -> None:
        if arg:
            raise _peer_error(501, "5.5.4", "Syntax: DATA")
        if self._state is State.CHUNKING:
            raise _peer_error(503, "5.5.1", "Error: BDAT in progress")
        if self._state is State.MAIL:
            if self._rcpt_attempted:  # every RCPT was refused (RFC 2920 3.1)
                raise _peer_error(554, "5.5.1", "Error: no valid recipients")
            raise _peer_error(503, "5.5.1", "Error: need RCPT command")
        self._go(Trigger.DATA)
        self._data_at_start = True
        self._buf.start_message()
        self._write(_GO_AHEAD, enhanced=False)

    def _cmd_bdat(self, verb: str, arg: str) -> None:
        if not self.config.chunking:
            raise RemoteProtocolError("CHUNKING is off", _UNKNOWN)
        parts = arg.split(" ")
        if not 1 <= len(parts) <= 2 or not _DIGITS.match(parts[0]):
            raise _peer_error(501, "5.5.4", "Syntax: BDAT count [LAST]")
        if len(parts) == 2 and _upper(parts[1]) != "LAST":
            raise _peer_error(501, "5.5.4", "Syntax: BDAT count [LAST]")
        size = int(parts[0])
        # The chunk is read in every case, so that the session stays in sync (RFC 3030 2).
        self._chunk_left = size
        self._chunk_last = len(parts) == 2
        if self._state not in (State.RCPT, State.CHUNKING):
            if self._state is State.MAIL and self._rcpt_attempted:
                self._chunk_error = _r(554, "5.5.1", "Error: no valid recipients")
            else:
                self._chunk_error = _r(503, "5.5.1", "Error: need RCPT command")
        elif self._chunks_size + size > self.config.max_message_size:
            self._chunk_error = _r(552, "5.3.4", "Error: message too large")
        else:
            self._chunks_size += size

    def _cmd_rset(self, verb: str, arg: str) -> Event:
        if arg:
            raise _peer_error(501, "5.5.4", "Syntax: RSET")
        self._reset_transaction()
        self._go(Trigger.RESET)
        self._write(_OK)
        return Reset()

    def _cmd_noop(self, verb: str, arg: str) -> None:
        self._write(_OK)

    def _cmd_help(self, verb: str, arg: str) -> None:
        hidden = ("HELO", "EHLO") if self.config.lmtp else ("LHLO",)
        names = " ".join(name for name in _COMMAND_TABLE if name not in hidden)
        self._write(_r(214, "2.0.0", f"Commands: {names}"))

    def _cmd_vrfy(self, verb: str, arg: str) -> None:
        if not arg:
            raise _peer_error(501, "5.5.4", "Syntax: VRFY address")
        text = "Cannot VRFY user, but will accept message and attempt delivery"
        self._write(_r(252, "2.5.2", text))

    def _cmd_expn(self, verb: str, arg: str) -> None:
        raise _peer_error(502, "5.5.1", "Error: command not implemented")

    def _cmd_quit(self, verb: str, arg: str) -> Event:
        self._write(_BYE)
        self._close("quit")
        return Quit()

    def _cmd_starttls(self, verb: str, arg: str) -> Event:
        if arg:
            raise _peer_error(501, "5.5.4", "Syntax: STARTTLS")
        if self._tls:
            raise _peer_error(503, "5.5.1", "Error: TLS already active")
        if not self.config.tls_available:
            raise _peer_error(502, "5.5.1", "Error: command not implemented")
        return StartTLS()

    def _cmd_auth(self, verb: str, arg: str) -> Event | None:
        config = self.config
        if not config.auth_mechanisms:
            raise _peer_error(502, "5.5.1", "Error: authentication not enabled")
        if not self.auth_offered:
            raise _peer_error(538, "5.7.11", "Error: must issue a STARTTLS command first")
        if self._state in _TRANSACTION_STATES:
            raise _peer_error(503, "5.5.1", "Error: MAIL transaction in progress")
        if not self._esmtp:
            raise _peer_error(503, "5.5.1", "Error: send EHLO first")
        if self._user is not None:
            raise _peer_error(503, "5.5.1", "Error: already authenticated")
        name, _, initial = arg.partition(" ")
        name = _upper(name)
        if not name:
            raise _peer_error(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
        if name not in config.auth_mechanisms:
            raise _peer_error(504, "5.5.4", "Error: unsupported authentication mechanism")
        initial = initial.strip(" ")
        if len(initial) > config.max_auth_line:
            raise _peer_error(500, "5.5.6", "Error: authentication exchange line is too long")
        if initial == "*":
            raise _peer_error(501, "5.7.0", "Error: authentication cancelled")
        response = decode_response(initial.encode()) if initial else None
        self._sasl = MECHANISMS[name]()
        self._sasl_name = name
        self._go(Trigger.AUTH)
        return self._sasl_step(response)

    # ------------------------------------------------------------------ AUTH exchange

    def _sasl_line(self, line: bytes | TooLong) -> Event | None:
        if line is TOO_LONG or len(line) > self.config.max_auth_line:
            self._sasl_abort()
            raise _peer_error(500, "5.5.6", "Error: authentication exchange line is too long")
        if line.strip() == b"*":
            self._sasl_abort()
            raise _peer_error(501, "5.7.0", "Error: authentication cancelled")
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

    # ------------------------------------------------------------------ parameters

    def _parse_mail_params(self, text: str) -> MailParams:
        raw = parse_params(text)
        if raw and not self._esmtp:
            raise _peer_error(555, "5.5.4", "Error: parameters need EHLO")
        c = self.config
        size = body = ret = envid = auth = None
        smtputf8 = False
        for key, value in raw.items():
            if key == "SIZE" and c.size and value is not None:
                if not _DIGITS.match(value):
                    raise _peer_error(501, "5.5.4", "Error: bad SIZE value")
                size = int(value)
            elif key == "BODY" and c.eightbitmime and value is not None:
                body = value.upper()
                if body not in ("7BIT", "8BITMIME"):
                    raise _peer_error(501, "5.5.4", "Error: BODY is 7BIT or 8BITMIME")
            elif key == "SMTPUTF8" and c.smtputf8 and value is None:
                smtputf8 = True
            elif key == "RET" and c.dsn and value is not None:
                ret = value.upper()
                if ret not in ("FULL", "HDRS"):
                    raise _peer_error(501, "5.5.4", "Error: RET is FULL or HDRS")
            elif key == "ENVID" and c.dsn and value is not None:
                envid = decode_xtext(value, key)
                if len(envid) > 100:
                    raise _peer_error(501, "5.5.4", "Error: ENVID too long")
            elif key == "AUTH" and self.auth_offered and value is not None:
                auth = value if value == "<>" else decode_xtext(value, key)
            else:
                raise _peer_error(555, "5.5.4", f"Error: unsupported parameter {key}")
        return MailParams(size=size, body=body, smtputf8=smtputf8, ret=ret, envid=envid, auth=auth)

    def _parse_rcpt_params(self, text: str) -> RcptParams:
        raw = parse_params(text)
        if raw and not self._esmtp:
            raise _peer_error(555, "5.5.4", "Error: parameters need EHLO")
        notify: tuple[str, ...] | None = None
        orcpt: tuple[str, str] | None = None
        for key, value in raw.items():
            if key == "NOTIFY" and self.config.dsn and value is not None:
                notify = tuple(v.upper() for v in value.split(","))
                if notify != ("NEVER",) and not set(notify) <= _NOTIFY:
                    raise _peer_error(501, "5.5.4", "Error: bad NOTIFY value")
            elif key == "ORCPT" and self.config.dsn and value is not None:
                kind, semi, address = value.partition(";")
                if not semi or not kind or not address:
                    raise _peer_error(501, "5.5.4", "Error: ORCPT is type;address")
                orcpt = (kind.lower(), decode_xtext(address, key))
            else:
                raise _peer_error(555, "5.5.4", f"Error: unsupported parameter {key}")
        return RcptParams(notify=notify, orcpt=orcpt)

    # ------------------------------------------------------------------ answers

    def _decide(self, answer: Answer, ok: Reply, no: Reply) -> tuple[str, Reply]:
        """Resolve an answer against the event's standard replies: ("accept"|"reject"|"close",
        the reply to write)."""
        if isinstance(answer, Reply):
            if answer.is_positive:
                return "accept", answer
            return ("close" if answer.code == 421 else "reject"), answer
        if isinstance(answer, Accept):
            if answer.text is None:
                return "accept", ok
            return "accept", Reply(code=ok.code, text=(answer.text,), enhanced=ok.enhanced)
        if isinstance(answer, Reject):
            code = no.code if answer.code is None else answer.code
            text = no.text if answer.text is None else (answer.text,)
            # A 421 always ends the session (RFC 5321 3.8), whichever decision carried it.
            kind = "close" if code == 421 else "reject"
            return kind, Reply(code=code, text=text, enhanced=_enhanced_for(code, no.enhanced))
        if isinstance(answer, Close):
            text = (
                (f"{self.config.hostname} Error: closing connection",)
                if answer.text is None
                else (answer.text,)
            )
            enhanced = _enhanced_for(answer.code, "4.7.0")
            return "close", Reply(code=answer.code, text=text, enhanced=enhanced)
        raise LocalProtocolError(f"not a decision: {answer!r}")

    def _answer_connected(self, event: Event, answer: Answer) -> None:
        host = self.config.hostname
        kind, reply = self._decide(
            answer,
            _r(220, None, self.config.banner),
            _GREETING_NO,
        )
        if isinstance(answer, (Accept, Reject, Close)) and not reply.text[0].startswith(host):
            reply = Reply(code=reply.code, text=(f"{host} {reply.text[0]}",))
        self._write(reply, enhanced=False)
        if kind == "close":
            self._close("refused")
        else:
            self._go(Trigger.GREET if kind == "accept" else Trigger.REFUSE)

    def _answer_hello(self, event: Event, answer: Answer) -> None:
        assert isinstance(event, Hello)
        host = self.config.hostname
        kind, reply = self._decide(answer, _r(250, None, host), _HELLO_NO)
        if kind == "accept":
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
        if kind == "close":
            self._close("refused")
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
            (c.tls_available and not self._tls, "STARTTLS"),
            (self.auth_offered, "AUTH " + " ".join(c.auth_mechanisms)),
        )
        return [keyword for enabled, keyword in table if enabled]

    def _answer_auth(self, event: Event, answer: Answer) -> None:
        assert isinstance(event, AuthCredentials)
        kind, reply = self._decide(
            answer,
            _AUTH_OK,
            _AUTH_NO,
        )
        self._go(Trigger.AUTH_DONE)
        if kind == "accept":
            self._user = event.username
        elif kind == "reject":
            self._auth_failures += 1
            if self._auth_failures >= self.config.max_auth_failures:
                self._write(_r(421, "4.7.0", "Error: too many failed authentication attempts"))
                self._close("auth")
                return
        self._write(reply)
        if kind == "close":
            self._close("refused")

    def _answer_mail(self, event: Event, answer: Answer) -> None:
        assert isinstance(event, MailFrom)
        kind, reply = self._decide(answer, _MAIL_OK, _MAIL_NO)
        self._write(reply)
        if kind == "accept":
            self._sender = event.sender
            self._mail_params = event.params
            self._go(Trigger.MAIL)
        elif kind == "close":
            self._close("refused")

    def _answer_rcpt(self, event: Event, answer: Answer) -> None:
        assert isinstance(event, RcptTo)
        kind, reply = self._decide(answer, _RCPT_OK, _RCPT_NO)
        self._write(reply)
        if kind == "accept":
            self._recipients.append(event.recipient)
            self._rcpt_params.append(event.params)
            self._go(Trigger.RCPT)
        elif kind == "close":
            self._close("refused")

    def _answer_message(self, event: Event, answer: Answer) -> None:
        assert isinstance(event, Message)
        ok, no = _OK, _DATA_NO
        close = False
        if self.config.lmtp:
            # RFC 2033 4.2: one reply per accepted recipient, in RCPT order.
            for rcpt in event.recipients:
                one = answer[rcpt] if isinstance(answer, Mapping) else answer
                kind, reply = self._decide(one, ok, no)
                self._write(reply)
                close = close or kind == "close"
        else:
            kind, reply = self._decide(answer, ok, no)
            self._write(reply)
            close = kind == "close"
        self._reset_transaction()
        self._go(Trigger.MESSAGE_DONE)
        if close:
            self._close("refused")

    def _answer_starttls(self, event: Event, answer: Answer) -> None:
        kind, reply = self._decide(
            answer,
            _TLS_OK,
            _TLS_NO,
        )
        self._write(reply)
        if kind == "accept":
            self._buf.clear()  # anything pipelined behind STARTTLS is dropped (RFC 3207 5)
            self._go(Trigger.STARTTLS)
        elif kind == "close":
            self._close("refused")


_DECISION_TYPES: Final = (Accept, Reject, Close, Reply)


def _check_answer(answer: object, event: Event, *, lmtp: bool) -> None:
    """Refuse a malformed answer before any state changes, so a caller's bug leaves the
    session exactly as it was."""
    if isinstance(answer, Mapping):
        if not (lmtp and isinstance(event, Message)):
            raise LocalProtocolError("per-recipient answers are for LMTP messages only")
        for rcpt in event.recipients:
            if not isinstance(answer.get(rcpt), _DECISION_TYPES):
                raise LocalProtocolError(f"no decision for recipient {rcpt!r}")
    elif not isinstance(answer, _DECISION_TYPES):
        raise LocalProtocolError(f"not a decision: {answer!r}")


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
}
_ANSWERS: Final[dict[type[Event], Callable[[ServerConnection, Event, Answer], None]]] = {
    Connected: ServerConnection._answer_connected,
    Hello: ServerConnection._answer_hello,
    AuthCredentials: ServerConnection._answer_auth,
    MailFrom: ServerConnection._answer_mail,
    RcptTo: ServerConnection._answer_rcpt,
    Message: ServerConnection._answer_message,
    StartTLS: ServerConnection._answer_starttls,
}
