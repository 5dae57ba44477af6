"""The Message given to data(): reading it, and header edits applied as it is read."""

from __future__ import annotations

import email.parser
import email.policy
import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpkit.handlers import EditKind, Message
from smtpkit.handlers._message import HEADER_SCAN, READ_SIZE

pytestmark = pytest.mark.timeout(60)

RAW = (
    b"Received: from client ([192.0.2.7])\r\n\tby mx.example.org; Tue, 1 Dec 2026\r\n"
    b"Authentication-Results: mx.example.org; spf=pass (forged)\r\n"
    b"Authentication-Results: other.example; dkim=pass\r\n"
    b"Subject: hello\r\n"
    b"X-Folded: first\r\n second\r\n"
    b"\r\n"
    b"Body line\r\n.leading dot\r\n"
)


def both(raw: bytes, tmp_path: Path) -> list[Message]:
    """The same content in memory (in small pieces) and in a spool file."""
    pieces = [raw[i : i + 7] for i in range(0, len(raw), 7)]
    path = tmp_path / "spool"
    path.write_bytes(raw)
    return [
        Message.spooled(chunks=pieces, size=len(raw)),
        Message.spooled(path=str(path), size=len(raw)),
    ]


def test_reading_without_edits(tmp_path: Path) -> None:
    for message in both(RAW, tmp_path):
        assert message.size == len(message) == len(RAW)
        assert bytes(message) == message.read() == RAW
        assert b"".join(message.chunks()) == RAW
        with message.open() as file:
            assert file.read(10) == RAW[:10]
            assert file.read() == RAW[10:]
        assert not message.edits


def test_from_bytes() -> None:
    message = Message(b"Subject: x\r\n\r\nbody\r\n")
    assert bytes(message) == b"Subject: x\r\n\r\nbody\r\n"
    assert message.path is None
    assert bytes(Message()) == b"" and Message().size == 0


def test_added_headers_go_on_top_last_first(tmp_path: Path) -> None:
    for message in both(RAW, tmp_path):
        message.add_header("Authentication-Results", "mx.example.org; spf=pass")
        message.add_field(b"DKIM-Signature: v=1; a=rsa-sha256;\r\n\tb=abc")
        expected = (
            b"DKIM-Signature: v=1; a=rsa-sha256;\r\n\tb=abc\r\n"
            b"Authentication-Results: mx.example.org; spf=pass\r\n" + RAW
        )
        assert bytes(message) == expected
        assert message.size == len(expected)
        assert [e.kind for e in message.edits] == [EditKind.ADD, EditKind.ADD]
        with message.open() as file:
            assert file.read() == expected


def test_remove_forged_results_only(tmp_path: Path) -> None:
    def ours(value: str) -> bool:
        return value.split(";")[0].strip() == "mx.example.org"

    for message in both(RAW, tmp_path):
        message.remove_header("authentication-results", where=ours)
        out = bytes(message)
        assert b"(forged)" not in out
        assert b"Authentication-Results: other.example; dkim=pass\r\n" in out
        assert out == RAW.replace(
            b"Authentication-Results: mx.example.org; spf=pass (forged)\r\n", b""
        )
        assert message.size == len(out)


def test_remove_takes_continuation_lines_and_keeps_the_body(tmp_path: Path) -> None:
    raw = RAW + b"X-Folded: not a header, in the body\r\n"
    for message in both(raw, tmp_path):
        message.remove_header("X-Folded")
        out = bytes(message)
        assert b"second" not in out
        assert out.endswith(b"X-Folded: not a header, in the body\r\n")


def test_edits_apply_in_order(tmp_path: Path) -> None:
    for message in both(RAW, tmp_path):
        message.add_header("X-Spam", "stale-verdict")
        message.remove_header("X-Spam")
        message.add_header("X-Spam", "new")
        out = bytes(message)
        assert out.startswith(b"X-Spam: new\r\n" + RAW[:9])
        assert b"stale-verdict" not in out


def test_header_values_cannot_inject_fields() -> None:
    message = Message(RAW)
    for value in ("x\r\nBcc: victim@example.org", "x\nBcc: y", "x\rBcc: y", "x\r\n"):
        with pytest.raises(ValueError):
            message.add_header("X-Test", value)
    for name in ("", "Bad Name", "Colon:", "Ünicode"):
        with pytest.raises(ValueError):
            message.add_header(name, "v")
    with pytest.raises(ValueError):
        message.add_field(b"Two: fields\r\nThird: one\r\n")
    message.add_header("X-Folded", "one\r\n two")  # a fold is fine
    assert bytes(message).startswith(b"X-Folded: one\r\n two\r\n")


def test_a_message_without_header_or_blank_line(tmp_path: Path) -> None:
    for raw in (b"", b"\r\nbody only\r\n", b"no header here\r\n", b"Subject: x\r\n"):
        for message in both(raw, tmp_path):
            message.remove_header("Subject")
            message.add_header("X-A", "1")
            out = bytes(message)
            assert out.startswith(b"X-A: 1\r\n")
            assert out[8:] == (b"" if raw == b"Subject: x\r\n" else raw)
            assert message.size == len(out)


def test_a_spooled_message_is_read_in_bounded_pieces(tmp_path: Path) -> None:
    raw = b"Subject: big\r\n\r\n" + b"x" * (3 * READ_SIZE + 5)
    [_, message] = both(raw, tmp_path)
    message.remove_header("Subject")
    sizes = [len(piece) for piece in message.chunks()]
    assert max(sizes) <= READ_SIZE
    assert sum(sizes) == message.size == len(raw) - len(b"Subject: big\r\n")


def test_fields_past_the_scan_limit_are_kept(tmp_path: Path) -> None:
    filler = b"".join(
        b"X-Fill-%06d: %s\r\n" % (i, b"y" * 80) for i in range(HEADER_SCAN // 90 + 10)
    )
    raw = b"X-Drop: 1\r\n" + filler + b"X-Drop: 2\r\n\r\nbody\r\n"
    for message in both(raw, tmp_path):
        message.remove_header("X-Drop")
        out = bytes(message)
        assert b"X-Drop: 1\r\n" not in out
        assert out.endswith(b"X-Drop: 2\r\n\r\nbody\r\n")
        assert message.size == len(out)


def test_the_edited_message_parses(tmp_path: Path) -> None:
    for message in both(RAW, tmp_path):
        message.add_header("Authentication-Results", "mx.example.org; dmarc=pass")
        with message.open() as file:
            parsed = email.parser.BytesParser(policy=email.policy.default).parse(file)
        assert parsed["Subject"] == "hello"
        assert parsed.get_all("Authentication-Results")[0] == "mx.example.org; dmarc=pass"


@settings(deadline=None, max_examples=150)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=len(RAW) - 1), max_size=8, unique=True),
    names=st.lists(st.sampled_from(["Subject", "X-Folded", "Received", "Authentication-Results"])),
)
def test_edits_are_the_same_however_the_content_is_split(cuts: list[int], names: list[str]) -> None:
    bounds = [0, *sorted(cuts), len(RAW)]
    pieces = [RAW[a:b] for a, b in itertools.pairwise(bounds)]
    whole = Message(RAW)
    split = Message.spooled(chunks=pieces, size=len(RAW))
    for message in (whole, split):
        for name in names:
            message.remove_header(name)
        message.add_header("X-Top", "1")
    assert bytes(split) == bytes(whole)
    assert split.size == whole.size == len(bytes(whole))
