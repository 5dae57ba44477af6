"""Whole realistic sessions, compared byte for byte with the expected wire output.

Each transcript is a list of steps: "C:" lines are what the client writes in one go (several
lines in a row are pipelined), "S:" lines what the server must answer to them, and "== TLS"
marks the end of a STARTTLS handshake (the transport calls `tls_started()`).
"""

from __future__ import annotations

import base64
from collections.abc import Callable

from helpers import accept_all, receive_and_get, send_and_get

from smtp_core import (
    Accept,
    Answer,
    AuthCredentials,
    Config,
    Connected,
    EndOfMessage,
    Event,
    MessageData,
    RcptTo,
    Reject,
    Reply,
    ServerConnection,
    State,
)

MX = Config(hostname="mx.example.org", tls_available=True, auth_mechanisms=("PLAIN", "LOGIN"))
SUBMISSION = Config(
    hostname="smtp.example.org", auth_mechanisms=("LOGIN", "PLAIN"), auth_allow_plaintext=True
)
LMTP = Config(hostname="lmtp.example.org", lmtp=True, tls_available=False)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


THUNDERBIRD = f"""
S: 220 mx.example.org ESMTP smtpkit
C: EHLO [192.168.1.10]
S: 250-mx.example.org
S: 250-PIPELINING
S: 250-SIZE 33554432
S: 250-8BITMIME
S: 250-SMTPUTF8
S: 250-ENHANCEDSTATUSCODES
S: 250-CHUNKING
S: 250-DSN
S: 250 STARTTLS
C: STARTTLS
S: 220 2.0.0 Ready to start TLS
== TLS
C: EHLO [192.168.1.10]
S: 250-mx.example.org
S: 250-PIPELINING
S: 250-SIZE 33554432
S: 250-8BITMIME
S: 250-SMTPUTF8
S: 250-ENHANCEDSTATUSCODES
S: 250-CHUNKING
S: 250-DSN
S: 250 AUTH PLAIN LOGIN
C: AUTH PLAIN {b64(chr(0) + "alice@example.org" + chr(0) + "correct horse")}
S: 235 2.7.0 Authentication successful
C: MAIL FROM:<alice@example.org> BODY=8BITMIME SIZE=402
S: 250 2.1.0 Ok
C: RCPT TO:<bob@example.net>
S: 250 2.1.5 Ok
C: DATA
S: 354 End data with <CR><LF>.<CR><LF>
C: Message-ID: <1d6c2f1e-0b57-4a8e@example.org>
C: Date: Tue, 4 Jun 2024 10:00:00 +0200
C: MIME-Version: 1.0
C: User-Agent: Mozilla Thunderbird
C: From: Alice <alice@example.org>
C: To: bob@example.net
C: Subject: Lunch?
C: Content-Type: text/plain; charset=UTF-8; format=flowed
C: Content-Transfer-Encoding: 8bit
C:
C: Caf\u00e9 at noon?
C: ..and a line that starts with a dot
C: .
S: 250 2.0.0 Ok
C: QUIT
S: 221 2.0.0 Bye
"""

POSTFIX_PIPELINING = """
S: 220 mx.example.org ESMTP smtpkit
C: EHLO relay.example.com
S: 250-mx.example.org
S: 250-PIPELINING
S: 250-SIZE 33554432
S: 250-8BITMIME
S: 250-SMTPUTF8
S: 250-ENHANCEDSTATUSCODES
S: 250-CHUNKING
S: 250-DSN
S: 250 STARTTLS
C: MAIL FROM:<bounce+123@example.com> SIZE=310 BODY=8BITMIME ENVID=abc+2Bdef RET=HDRS
C: RCPT TO:<one@example.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;one@example.org
C: RCPT TO:<unknown@example.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;unknown@example.org
C: RCPT TO:<two@example.org> NOTIFY=NEVER
C: DATA
S: 250 2.1.0 Ok
S: 250 2.1.5 Ok
S: 550 5.1.1 <unknown@example.org>: Recipient address rejected: User unknown
S: 250 2.1.5 Ok
S: 354 End data with <CR><LF>.<CR><LF>
C: Received: by relay.example.com (Postfix, from userid 1000)
C: 	id 4VtQ5d1Z0Mz9sRr; Tue,  4 Jun 2024 10:00:00 +0200 (CEST)
C: Subject: report
C:
C: see attached
C: .
C: MAIL FROM:<bounce+124@example.com> SIZE=50
C: RCPT TO:<unknown@example.org>
C: DATA
S: 250 2.0.0 Ok
S: 250 2.1.0 Ok
S: 550 5.1.1 <unknown@example.org>: Recipient address rejected: User unknown
S: 554 5.5.1 Error: no valid recipients
C: RSET
C: QUIT
S: 250 2.0.0 Ok
S: 221 2.0.0 Bye
"""

SWAKS_AUTH_LOGIN = f"""
S: 220 smtp.example.org ESMTP smtpkit
C: EHLO workstation.example
S: 250-smtp.example.org
S: 250-PIPELINING
S: 250-SIZE 33554432
S: 250-8BITMIME
S: 250-SMTPUTF8
S: 250-ENHANCEDSTATUSCODES
S: 250-CHUNKING
S: 250-DSN
S: 250 AUTH LOGIN PLAIN
C: AUTH LOGIN
S: 334 VXNlcm5hbWU6
C: {b64("swaks")}
S: 334 UGFzc3dvcmQ6
C: {b64("wrong")}
S: 535 5.7.8 Error: authentication failed
C: AUTH LOGIN
S: 334 VXNlcm5hbWU6
C: {b64("swaks")}
S: 334 UGFzc3dvcmQ6
C: {b64("secret")}
S: 235 2.7.0 Authentication successful
C: MAIL FROM:<swaks@workstation.example>
S: 250 2.1.0 Ok
C: RCPT TO:<postmaster>
S: 250 2.1.5 Ok
C: DATA
S: 354 End data with <CR><LF>.<CR><LF>
C: Date: Tue, 04 Jun 2024 10:00:00 +0200
C: To: postmaster
C: From: swaks@workstation.example
C: Subject: test Tue, 04 Jun 2024 10:00:00 +0200
C: Message-Id: <20240604100000.012345@workstation.example>
C: X-Mailer: swaks v20240103.0 jetmore.org/john/code/swaks/
C:
C: This is a test mailing
C:
C:
C: .
S: 250 2.0.0 Ok: queued as 4VtQ5d
C: QUIT
S: 221 2.0.0 Bye
"""

CHUNKING_CLIENT = """
S: 220 mx.example.org ESMTP smtpkit
C: EHLO exchange.example.com
S: 250-mx.example.org
S: 250-PIPELINING
S: 250-SIZE 33554432
S: 250-8BITMIME
S: 250-SMTPUTF8
S: 250-ENHANCEDSTATUSCODES
S: 250-CHUNKING
S: 250-DSN
S: 250 STARTTLS
C: MAIL FROM:<a@example.com>
C: RCPT TO:<b@example.org>
C: BDAT 24
C: Subject: chunked
C:
C: .x
S: 250 2.1.0 Ok
S: 250 2.1.5 Ok
S: 250 2.0.0 24 octets received
C: BDAT 0 LAST
S: 250 2.0.0 Ok
C: QUIT
S: 221 2.0.0 Bye
"""

LMTP_DELIVERY = """
S: 220 lmtp.example.org ESMTP smtpkit
C: LHLO mx.example.org
S: 250-lmtp.example.org
S: 250-PIPELINING
S: 250-SIZE 33554432
S: 250-8BITMIME
S: 250-SMTPUTF8
S: 250-ENHANCEDSTATUSCODES
S: 250-CHUNKING
S: 250 DSN
C: MAIL FROM:<a@example.com>
C: RCPT TO:<one@example.org>
C: RCPT TO:<full@example.org>
C: RCPT TO:<unknown@example.org>
C: DATA
S: 250 2.1.0 Ok
S: 250 2.1.5 Ok
S: 250 2.1.5 Ok
S: 550 5.1.1 <unknown@example.org>: User unknown
S: 354 End data with <CR><LF>.<CR><LF>
C: hello
C: .
S: 250 2.0.0 <one@example.org> Saved
S: 452 4.2.2 <full@example.org> Mailbox full
C: QUIT
S: 221 2.0.0 Bye
"""


def mx_policy(event: Event) -> Answer:
    if isinstance(event, RcptTo) and event.recipient.startswith("unknown@"):
        return Reject(550, f"5.1.1 <{event.recipient}>: Recipient address rejected: User unknown")
    return Accept()


def swaks_policy(event: Event) -> Answer:
    if isinstance(event, AuthCredentials):
        return Accept() if event.password == "secret" else Reject()
    if isinstance(event, EndOfMessage):
        return Accept("Ok: queued as 4VtQ5d")
    return Accept()


def lmtp_policy(event: Event) -> Answer:
    if isinstance(event, RcptTo) and event.recipient.startswith("unknown@"):
        return Reply(code=550, text=(f"<{event.recipient}>: User unknown",), enhanced="5.1.1")
    if isinstance(event, EndOfMessage):
        return {
            "one@example.org": Accept("<one@example.org> Saved"),
            "full@example.org": Reply(
                code=452, text=("<full@example.org> Mailbox full",), enhanced="4.2.2"
            ),
        }
    return Accept()


def parse(transcript: str) -> list[tuple[str, bytes]]:
    """Group the transcript into ("C", bytes), ("S", bytes) and ("TLS", b"") steps."""
    steps: list[tuple[str, bytes]] = []
    for line in transcript.strip("\n").split("\n"):
        if line == "== TLS":
            steps.append(("TLS", b""))
            continue
        side, text = line[:2], line[3:]
        assert side in ("C:", "S:"), line
        data = text.encode() + b"\r\n"
        if steps and steps[-1][0] == side[0]:
            steps[-1] = (side[0], steps[-1][1] + data)
        else:
            steps.append((side[0], data))
    return steps


def replay(
    config: Config, transcript: str, policy: Callable[[Event], Answer]
) -> list[tuple[EndOfMessage, bytes]]:
    """Play the client's side; the messages that ended, each with its content."""
    steps = parse(transcript)
    conn = ServerConnection(config, peer=("198.51.100.1", 50000))
    assert isinstance(conn.next_event(), Connected)
    kind, greeting = steps.pop(0)
    assert kind == "S"
    assert send_and_get(conn, Accept()) == greeting
    messages: list[tuple[EndOfMessage, bytes]] = []
    content = b""
    for i, (kind, data) in enumerate(steps):
        if kind == "TLS":
            conn.tls_started()
        elif kind == "C":
            events, wire = receive_and_get(conn, data, policy)
            for event in events:
                if isinstance(event, MessageData):
                    content += event.data
                elif isinstance(event, EndOfMessage):
                    messages.append((event, content))
                    content = b""
            following = steps[i + 1] if i + 1 < len(steps) else ("S", b"")
            expected = following[1] if following[0] == "S" else b""
            assert wire == expected, f"after {data!r}"
    assert conn.state is State.CLOSED
    return messages


def test_thunderbird_submission_over_starttls() -> None:
    [(message, content)] = replay(MX, THUNDERBIRD, accept_all)
    assert message.sender == "alice@example.org"
    assert message.recipients == ("bob@example.net",)
    assert content.endswith(
        "\r\nCaf\u00e9 at noon?\r\n.and a line that starts with a dot\r\n".encode()
    )
    assert content.startswith(b"Message-ID: <1d6c2f1e-0b57-4a8e@example.org>\r\n")


def test_postfix_client_with_pipelining() -> None:
    [(message, content)] = replay(MX, POSTFIX_PIPELINING, mx_policy)
    assert message.recipients == ("one@example.org", "two@example.org")
    assert message.params.envid == "abc+def"
    assert message.params.ret == "HDRS"
    assert [p.notify for p in message.rcpt_params] == [("FAILURE", "DELAY"), ("NEVER",)]
    assert content.endswith(b"\r\n\r\nsee attached\r\n")


def test_swaks_with_auth_login() -> None:
    [(message, content)] = replay(SUBMISSION, SWAKS_AUTH_LOGIN, swaks_policy)
    assert message.recipients == ("postmaster",)
    assert content.endswith(b"\r\n\r\nThis is a test mailing\r\n\r\n\r\n")


def test_chunking_client() -> None:
    [(_, content)] = replay(MX, CHUNKING_CLIENT, accept_all)
    assert content == b"Subject: chunked\r\n\r\n.x\r\n"


def test_lmtp_delivery() -> None:
    [(message, _)] = replay(LMTP, LMTP_DELIVERY, lmtp_policy)
    assert message.recipients == ("one@example.org", "full@example.org")
