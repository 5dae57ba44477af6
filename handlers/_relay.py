"""The relay handler: forward each message to a smarthost, before-queue.

Nothing is queued here. Each client session holds one connection to the smarthost, opened at
the first MAIL, and every command is answered with the smarthost's own verdict: MAIL, each RCPT
(so a recipient the smarthost refuses is refused at RCPT time) and the message itself. An
upstream 4xx becomes our 4xx, a 5xx our 5xx, and a smarthost we cannot reach gives 451 4.4.1,
so the client keeps the message until someone can take it.

The hooks are plain `def`s around the stdlib's blocking `smtplib`; the framework runs them on
its worker pool, never on the event loop. The message is streamed from the spool a piece at a
time, never loaded whole: in BDAT chunks when the smarthost offers CHUNKING (RFC 3030), else as
dot-stuffed DATA.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any, ClassVar, Final, Literal

from smtp_core import Accept, MailParams, RcptParams, Reply

from ._handler import Handler, HookResult
from ._message import Message

__all__ = ["RelayHandler", "StartTLS"]

log = logging.getLogger("smtpkit.relay")

#: When to use STARTTLS with the smarthost: when it is offered (Postfix's "may"), always
#: (Postfix's "encrypt": no TLS, no mail), or never.
StartTLS = Literal["opportunistic", "required", "off"]

_ENHANCED: Final = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?: +|\Z)")

_UNAVAILABLE: Final = Reply(code=451, text=("Error: relay host unavailable",), enhanced="4.4.1")
_LOST: Final = Reply(code=451, text=("Error: lost connection with relay host",), enhanced="4.4.2")
_NO_TLS: Final = Reply(
    code=451, text=("Error: relay host does not offer STARTTLS",), enhanced="4.7.4"
)
_TLS_FAILED: Final = Reply(
    code=451, text=("Error: TLS handshake with relay host failed",), enhanced="4.7.5"
)
_AUTH_FAILED: Final = Reply(
    code=451, text=("Error: relay host refused our credentials",), enhanced="4.7.0"
)
_NO_PLAINTEXT_AUTH: Final = Reply(
    code=451, text=("Error: will not send credentials to relay host without TLS",), enhanced="4.7.0"
)
_NO_UTF8: Final = Reply(
    code=553, text=("Error: relay host does not support SMTPUTF8",), enhanced="5.6.7"
)
#: BDAT chunks are about this large: a round trip each.
_BDAT_SIZE: Final = 1 << 20
_INTERNAL: Final = Reply(code=451, text=("Error: internal relay error",), enhanced="4.3.0")


class _Failed(Exception):
    """A failure to report to the client as `reply` (nothing of it is Python's text)."""

    def __init__(self, reply: Reply, *, drop: bool = True) -> None:
        super().__init__(reply.text[0] if reply.text else "")
        self.reply = reply
        #: The connection with the smarthost is unusable after this.
        self.drop = drop


class _Stale(Exception):
    """A kept connection turned out to be dead (the smarthost timed it out)."""


@functools.lru_cache(maxsize=1)
def _fqdn() -> str:
    # smtplib would call getfqdn() (maybe a slow DNS lookup) for every connection.
    return socket.getfqdn()


@functools.lru_cache(maxsize=1)
def _opportunistic_context() -> ssl.SSLContext:
    """TLS without certificate checks, as MTAs do opportunistically (Postfix "may"/"encrypt"):
    it defeats passive eavesdropping, not an active attacker. One for all connections."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def upstream_reply(code: int, message: bytes) -> Reply:
    """The smarthost's reply as ours: the same code and text, and its enhanced status code
    (or the standard one of the reply's class when it sent none). Multi-line stays multi-line.
    """
    lines = message.decode("utf-8", "replace").split("\n") or [""]
    enhanced: str | None = None
    text: list[str] = []
    for line in lines:
        m = _ENHANCED.match(line)
        if m is not None:
            if enhanced is None and m.group(1) == str(code)[0]:
                enhanced = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
            line = line[m.end() :]
        text.append(line)
    if enhanced is None:
        enhanced = f"{str(code)[0]}.0.0"
    return Reply(code=code, text=tuple(text), enhanced=enhanced)


def xtext(value: str) -> str:
    """RFC 3461 xtext: "+", "=" and anything outside printable ASCII as +HH."""
    out = []
    for byte in value.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


class RelayHandler(Handler):
    """Forwards each message to a smarthost, and answers with the smarthost's verdicts.

    >>> serve(functools.partial(RelayHandler, "mail.example.net", 587, username="me",
    ...                         password="secret", starttls="required"))

    `starttls`: "opportunistic" uses STARTTLS when the smarthost offers it, "required" refuses
    to send mail in the clear (451 4.7.4), "off" never uses it. Certificates are not checked
    unless you give an `ssl_context` that checks them (`ssl.create_default_context()`).
    `username`/`password`: AUTH to the smarthost, only over TLS unless
    `allow_plaintext_auth`. `timeout` bounds each exchange with the smarthost (the reply to
    the end of the message included), `connect_timeout` the connection and its greeting.
    `local_hostname` is the name we give in EHLO (default: this host's FQDN).

    Put policies (CidrBlocklist, RelayControl, ...) in front of it by inheritance.
    """

    #: Sends mail to other hosts: a Pipeline delivering with it needs relay control.
    delivers_onward: ClassVar[bool] = True
    #: The client it talks to the smarthost with (smtplib.LMTP for an LMTP server).
    client_class: ClassVar[type[smtplib.SMTP]] = smtplib.SMTP

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        starttls: StartTLS = "opportunistic",
        username: str | None = None,
        password: str | None = None,
        allow_plaintext_auth: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 30.0,
        local_hostname: str | None = None,
    ) -> None:
        if starttls not in ("opportunistic", "required", "off"):
            raise ValueError("starttls is 'opportunistic', 'required' or 'off'")
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.host = host
        self.port = port
        self.starttls = starttls
        self.username = username
        self.password = password
        self.allow_plaintext_auth = allow_plaintext_auth
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.local_hostname = local_hostname
        self._client: smtplib.SMTP | None = None
        #: A transaction is open upstream (MAIL accepted, message not yet sent).
        self._open = False
        #: Held while a hook talks to the smarthost; close() must not interleave with it.
        self._lock = threading.Lock()

    @staticmethod
    def load_credentials(path: str | os.PathLike[str]) -> tuple[str, str]:
        """The username and password for the smarthost from a file: its first `user:password`
        line (blank lines and # comments are skipped), as `smtpkit serve --relay-auth FILE`
        reads it. OSError if unreadable, ValueError if there is no such line."""
        try:
            with open(path, encoding="utf-8-sig") as file:
                lines = file.read().splitlines()
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 text ({exc.reason})") from None
        for line in lines:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            user, sep, password = line.partition(":")
            if not sep or not user.strip() or not password:
                raise ValueError("expected a 'user:password' line")
            return user.strip(), password
        raise ValueError("no 'user:password' line")

    @property
    def upstream(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # ------------------------------------------------------------------ hooks

    def mail(self, sender: str, params: MailParams) -> HookResult:
        with self._lock:
            return self._guard(self._mail, sender, params)

    def rcpt(self, recipient: str, params: RcptParams) -> HookResult:
        with self._lock:
            return self._guard(self._rcpt, recipient, params)

    def data(self, message: Message) -> HookResult:
        with self._lock:
            return self._guard(self._data, message)

    def reset(self) -> None:
        with self._lock:
            if self._open:
                self._guard(self._rset)

    def close(self) -> None:
        if not self._lock.acquire(blocking=False):
            # A hook is still talking to the smarthost (the client went away meanwhile):
            # cut the connection under it, so that it fails fast.
            sock = getattr(self._client, "sock", None)
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            return
        try:
            client, self._client = self._client, None
            self._open = False
            if client is not None:
                try:
                    client.quit()
                except (smtplib.SMTPException, OSError):
                    pass
                finally:
                    client.close()
        finally:
            self._lock.release()

    # ------------------------------------------------------------------ the exchanges

    def _mail(self, sender: str, params: MailParams) -> HookResult:
        if self._client is not None:
            try:
                return self._send_mail(self._client, sender, params, reused=True)
            except (_Stale, smtplib.SMTPServerDisconnected, OSError):
                pass
            # The kept connection went stale: once more, on a fresh one.
            log.info("connection with %s went stale; reconnecting", self.upstream)
            self._drop()
        return self._send_mail(self._connection(), sender, params, reused=False)

    def _send_mail(
        self, client: smtplib.SMTP, sender: str, params: MailParams, *, reused: bool
    ) -> HookResult:
        if self._open:  # the client began anew without RSET (EHLO, STARTTLS)
            self._open = False
            code, _ = client.rset()
            if code // 100 != 2:
                raise _Stale
        options = self._mail_options(client, params)
        client.command_encoding = "utf-8" if params.smtputf8 else "ascii"
        code, text = client.docmd("MAIL", f"FROM:<{sender}>{options}")
        if code == 421 and reused:
            # What Postfix's idle timeout leaves waiting for our next command.
            raise _Stale
        self._open = code // 100 == 2
        return self._verdict("MAIL", code, text)

    def _rcpt(self, recipient: str, params: RcptParams) -> HookResult:
        client = self._require()
        options = ""
        if client.has_extn("dsn"):
            if params.notify:
                options += f" NOTIFY={','.join(params.notify)}"
            if params.orcpt:
                options += f" ORCPT={params.orcpt[0]};{xtext(params.orcpt[1])}"
        code, text = client.docmd("RCPT", f"TO:<{recipient}>{options}")
        return self._verdict("RCPT", code, text)

    def _data(self, message: Message) -> HookResult:
        client = self._require()
        if client.has_extn("chunking"):
            code, text = _send_bdat(client, message)
        else:
            code, text = _send_data(client, message)
        if code >= 0:
            # The end of the message ends the transaction; but after a refusal some servers
            # (Postfix, after smtpd_end_of_data_restrictions) still hold it, so RSET first then.
            self._open = code // 100 != 2
        else:
            # DATA (or a BDAT chunk before the last) was refused: the upstream transaction stays
            # open until the RSET that the next MAIL sends.
            code = -code
        if code // 100 == 2:
            log.info(
                "%s: relayed to %s: %s",
                self.envelope.queue_id,
                self.upstream,
                text.decode("utf-8", "replace").replace("\n", " "),
            )
        return self._verdict("DATA", code, text)

    def _rset(self) -> HookResult:
        self._open = False
        code, _ = self._require().rset()
        if code // 100 != 2:
            log.warning("%s answered RSET with %d; dropping the connection", self.upstream, code)
            self._drop()
        return Accept()

    # ------------------------------------------------------------------ helpers

    def _verdict(self, hook: str, code: int, text: bytes) -> HookResult:
        if 200 <= code < 300:
            reply = upstream_reply(code, text)
            return Accept(" ".join(line for line in reply.text if line) or None)
        if 400 <= code < 600:
            if code == 421:
                self._drop()  # the smarthost is closing on us
            return upstream_reply(code, text)
        log.warning(
            "%s: unexpected reply %d to %s; dropping the connection", self.upstream, code, hook
        )
        self._drop()
        return _INTERNAL

    def _mail_options(self, client: smtplib.SMTP, params: MailParams) -> str:
        options = ""
        if params.size is not None and client.has_extn("size"):
            options += f" SIZE={params.size}"
        if params.body is not None and client.has_extn("8bitmime"):
            options += f" BODY={params.body}"
        if params.smtputf8:
            if not client.has_extn("smtputf8"):
                raise _Failed(_NO_UTF8, drop=False)
            options += " SMTPUTF8"
        if client.has_extn("dsn"):
            if params.ret is not None:
                options += f" RET={params.ret}"
            if params.envid is not None:
                options += f" ENVID={xtext(params.envid)}"
        return options

    def _require(self) -> smtplib.SMTP:
        if self._client is None:
            raise _Failed(_LOST)
        return self._client

    def _connection(self, *, retry: bool = False) -> smtplib.SMTP:
        """The connection to the smarthost, opened (EHLO, STARTTLS, AUTH) if need be."""
        if self._client is not None:
            return self._client
        try:
            client = self.client_class(
                self.host,
                self.port,
                local_hostname=self.local_hostname or _fqdn(),
                timeout=self.connect_timeout,
            )
        except smtplib.SMTPConnectError as exc:
            log.warning("%s greeted us with %d %r", self.upstream, exc.smtp_code, exc.smtp_error)
            raise _Failed(_UNAVAILABLE) from None
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            log.warning("cannot connect to %s: %s", self.upstream, exc)
            raise _Failed(_UNAVAILABLE) from None
        try:
            self._open_session(client, use_tls=self.starttls != "off" and not retry)
        except _Failed as exc:
            client.close()
            if exc.reply is not _TLS_FAILED or self.starttls != "opportunistic" or retry:
                raise
            # Opportunistic TLS that fails falls back to plaintext, as Postfix does.
            log.info("retrying %s without TLS", self.upstream)
            return self._connection(retry=True)
        except BaseException:
            client.close()
            raise
        self._client = client
        return client

    def _open_session(self, client: smtplib.SMTP, *, use_tls: bool) -> None:
        assert client.sock is not None
        client.sock.settimeout(self.timeout)
        self._hello(client)
        tls = False
        if use_tls and client.has_extn("starttls"):
            context = self.ssl_context or _opportunistic_context()
            try:
                client.starttls(context=context)
            except ssl.SSLError as exc:
                log.warning("TLS with %s failed: %s", self.upstream, exc)
                raise _Failed(_TLS_FAILED) from None
            except smtplib.SMTPResponseException as exc:
                if self.starttls == "required":
                    log.warning("%s refused STARTTLS: %d", self.upstream, exc.smtp_code)
                    raise _Failed(_NO_TLS) from None
                # Opportunistic: carry on in the clear, on a fresh EHLO.
            else:
                tls = True
            self._hello(client)
        elif self.starttls == "required":
            log.warning("%s does not offer STARTTLS", self.upstream)
            raise _Failed(_NO_TLS)
        if self.username is not None and self.password is not None:
            if not client.has_extn("auth"):
                log.warning("%s does not offer AUTH; sending without it", self.upstream)
            elif not tls and not self.allow_plaintext_auth:
                log.warning("%s: not sending credentials without TLS", self.upstream)
                raise _Failed(_NO_PLAINTEXT_AUTH)
            else:
                try:
                    client.login(self.username, self.password)
                except smtplib.SMTPAuthenticationError as exc:
                    log.warning(
                        "%s refused our credentials: %d %r",
                        self.upstream,
                        exc.smtp_code,
                        exc.smtp_error,
                    )
                    raise _Failed(_AUTH_FAILED) from None
                except smtplib.SMTPServerDisconnected:
                    raise
                except smtplib.SMTPException as exc:
                    log.warning("AUTH with %s failed: %s", self.upstream, exc)
                    raise _Failed(_AUTH_FAILED) from None
        log.debug("connected to %s (TLS %s)", self.upstream, "on" if tls else "off")

    def _hello(self, client: smtplib.SMTP) -> None:
        code, text = client.ehlo()
        if code == 250:
            return
        if code == 421 or code == -1:
            raise _Failed(_UNAVAILABLE)
        code, text = client.helo()
        if code != 250:
            log.warning("%s refused our HELO: %d %r", self.upstream, code, text)
            raise _Failed(_UNAVAILABLE)

    def _drop(self) -> None:
        client, self._client = self._client, None
        self._open = False
        if client is not None:
            client.close()

    def _guard(self, step: Callable[..., HookResult], *args: Any) -> HookResult:
        """Run one exchange; whatever goes wrong becomes a 4xx reply and a log line, never a
        Python exception on the wire."""
        try:
            return step(*args)
        except _Failed as exc:
            if exc.drop:
                self._drop()
            return exc.reply
        except _Stale:
            self._drop()
            return _LOST
        except smtplib.SMTPServerDisconnected as exc:
            log.warning("lost connection with %s: %s", self.upstream, exc)
            self._drop()
            return _LOST
        except smtplib.SMTPResponseException as exc:
            # A reply smtplib refused to take as a reply; pass it on as it was.
            if exc.smtp_code == 421 or not 400 <= exc.smtp_code < 600:
                self._drop()
            if not 400 <= exc.smtp_code < 600:
                return _LOST
            return upstream_reply(exc.smtp_code, _as_bytes(exc.smtp_error))
        except OSError as exc:  # timeouts, resets, TLS errors mid-session
            log.warning("connection with %s failed: %s", self.upstream, exc)
            self._drop()
            return _LOST
        except Exception:
            log.exception("relaying to %s failed", self.upstream)
            self._drop()
            return _INTERNAL


def _send_data(client: smtplib.SMTP, message: Message) -> tuple[int, bytes]:
    """DATA, then the message dot-stuffed (RFC 5321 4.5.2) a piece at a time, then the final
    dot: the upstream's reply to it. A refused DATA gives its code negated."""
    client.putcmd("data")
    code, text = client.getreply()
    if code != 354:
        return -code, text
    last = b"\n"
    for piece in _dot_stuffed(message.chunks()):
        client.send(piece)
        last = piece[-1:]
    client.send(b".\r\n" if last == b"\n" else b"\r\n.\r\n")
    return client.getreply()


def _dot_stuffed(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """`pieces` with a dot added before every line that starts with one, across piece
    boundaries: a line split between two pieces is still seen whole."""
    line_start = True
    for piece in pieces:
        if not piece:
            continue
        stuffed = piece.replace(b"\n.", b"\n..")
        if line_start and stuffed[:1] == b".":
            yield b"."
        yield stuffed
        line_start = piece[-1:] == b"\n"


def _send_bdat(client: smtplib.SMTP, message: Message) -> tuple[int, bytes]:
    """The message as BDAT chunks, each answered before the next (RFC 3030): the reply to the
    last. A chunk before the last that is refused gives its code negated."""
    pieces = _coalesced(message.chunks())
    piece = next(pieces, b"")
    while True:
        following = next(pieces, None)
        last = following is None
        client.send(f"BDAT {len(piece)}{' LAST' if last else ''}\r\n".encode("ascii"))
        if piece:
            client.send(piece)
        code, text = client.getreply()
        if last:
            return code, text
        if code // 100 != 2:
            pieces.close()
            return -code, text
        assert following is not None
        piece = following


def _coalesced(pieces: Iterator[bytes], size: int = _BDAT_SIZE) -> Generator[bytes, None, None]:
    """`pieces` joined into chunks of about `size` bytes (fewer round trips for BDAT)."""
    try:
        held = bytearray()
        for piece in pieces:
            if not held and len(piece) >= size:
                yield piece
                continue
            held += piece
            if len(held) >= size:
                yield bytes(held)
                held.clear()
        if held:
            yield bytes(held)
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "replace")
