"""PasswordFile and hash_password (handlers/policies/_passwords.py), and PasswordAuth on them."""

from __future__ import annotations

import base64
import hashlib
import smtplib
from pathlib import Path

import pytest

from smtp_core import Config
from smtpkit.handlers import (
    PasswordFile,
    Pipeline,
    SinkHandler,
    hash_password,
    verify_password,
)
from smtpkit.handlers.policies import PasswordAuth
from smtpkit.transports import running_server

# Cheap costs, so the tests stay fast; the defaults are exercised once each.
FAST_PBKDF2 = {"iterations": 1000}
FAST_SCRYPT = {"n": 2**4, "r": 2, "p": 1}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------------- parsing


def test_plain_entries_comments_and_blank_lines() -> None:
    text = "\n".join(
        [
            "# users of the test gateway",
            "",
            "alice:secret",
            "   # an indented comment",
            "bob:pa:ss word ",  # the password is the rest of the line, exactly
            "  carol :x",  # spaces around the user are not part of it
            "",
        ]
    )
    passwords = PasswordFile.parse(text)
    assert passwords.users == ("alice", "bob", "carol")
    assert len(passwords) == 3
    assert "alice" in passwords and "mallory" not in passwords
    assert passwords.check("alice", "secret")
    assert not passwords.check("alice", "Secret")
    assert not passwords.check("alice", "")
    assert passwords.check("bob", "pa:ss word ")
    assert not passwords.check("bob", "pa:ss word")
    assert passwords.check("carol", "x")
    assert not passwords.check("mallory", "secret")


def test_unicode_passwords() -> None:
    passwords = PasswordFile.parse("jörg:pässwörd\n")
    assert passwords.check("jörg", "pässwörd")
    assert not passwords.check("jörg", "passwort")


def test_crlf_and_bom_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "passwords"
    path.write_bytes(b"\xef\xbb\xbfalice:secret\r\nbob:hunter2\r\n")
    passwords = PasswordFile.load(path)
    assert passwords.check("alice", "secret")
    assert passwords.check("bob", "hunter2")
    assert passwords.source == str(path)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        PasswordFile.load(tmp_path / "nope")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("alice", "expected user:password"),
        (":secret", "empty user name"),
        ("alice:", "empty password"),
        ("alice:pbkdf2_sha256$1000$c2FsdA==", "pbkdf2_sha256 needs"),
        ("alice:pbkdf2_sha256$many$c2FsdA==$" + b64(bytes(32)), "iterations"),
        ("alice:pbkdf2_sha256$0$c2FsdA==$" + b64(bytes(32)), "iterations"),
        ("alice:pbkdf2_sha256$1000$!!!$" + b64(bytes(32)), "salt is not valid base64"),
        ("alice:pbkdf2_sha256$1000$$" + b64(bytes(32)), "salt is empty"),
        ("alice:pbkdf2_sha256$1000$c2FsdA==$" + b64(bytes(8)), "shorter than 16 bytes"),
        ("alice:scrypt$16$8$c2FsdA==$" + b64(bytes(32)), "scrypt needs"),
        ("alice:scrypt$15$8$1$c2FsdA==$" + b64(bytes(32)), "power of 2"),
        ("alice:scrypt$1048576$16$1$c2FsdA==$" + b64(bytes(32)), "1 GiB"),
        ("alice:$2y$10$abcdefghijklmnopqrstuv", "unsupported password hash"),
        ("alice:{SSHA}abcdef", "unsupported password hash"),
    ],
)
def test_malformed_lines_name_the_line(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        PasswordFile.parse(f"# header\nok:fine\n{line}\n", source="users.txt")
    assert str(info.value).startswith("users.txt:3: ")


def test_a_user_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"users:2: user 'alice' appears twice"):
        PasswordFile.parse("alice:a\nalice:b\n", source="users")


def test_entries_from_a_mapping() -> None:
    passwords = PasswordFile({"alice": "secret", "bob": hash_password("pw", **FAST_PBKDF2)})
    assert passwords.check("alice", "secret")
    assert passwords.check("bob", "pw")
    with pytest.raises(ValueError, match="empty password"):
        PasswordFile({"alice": ""})
    with pytest.raises(ValueError, match="invalid user name"):
        PasswordFile({"a:b": "x"})


def test_empty_file_accepts_nobody() -> None:
    passwords = PasswordFile.parse("# nobody yet\n")
    assert len(passwords) == 0
    assert not passwords.check("alice", "secret")


# ------------------------------------------------------------------------- hashes


def test_pbkdf2_entry_made_with_hashlib() -> None:
    """The documented format, built by hand, independent of hash_password()."""
    salt = b"0123456789abcdef"
    digest = hashlib.pbkdf2_hmac("sha256", b"s3cret", salt, 2000)
    passwords = PasswordFile.parse(f"alice:pbkdf2_sha256$2000${b64(salt)}${b64(digest)}\n")
    assert passwords.check("alice", "s3cret")
    assert not passwords.check("alice", "s3cret ")
    assert not passwords.check("alice", "pbkdf2_sha256$2000$...")


def test_scrypt_entry_made_with_hashlib() -> None:
    salt = b"saltsaltsaltsalt"
    digest = hashlib.scrypt(b"s3cret", salt=salt, n=16, r=2, p=1, dklen=64)
    passwords = PasswordFile.parse(f"alice:scrypt$16$2$1${b64(salt)}${b64(digest)}\n")
    assert passwords.check("alice", "s3cret")
    assert not passwords.check("alice", "S3cret")


def test_unpadded_and_urlsafe_base64_are_accepted() -> None:
    salt = b"\xfb\xff\xfe" * 6  # '+' and '/' in standard base64
    digest = hashlib.pbkdf2_hmac("sha256", b"pw", salt, 1000)
    urlsafe = base64.urlsafe_b64encode(salt).decode().rstrip("=")
    hashed = f"pbkdf2_sha256$1000${urlsafe}${b64(digest).rstrip('=')}"
    assert "-" in urlsafe or "_" in urlsafe
    assert verify_password("pw", hashed)
    assert not verify_password("pw2", hashed)


def test_hash_password_pbkdf2_default_cost() -> None:
    hashed = hash_password("correct horse")
    scheme, iterations, salt, digest = hashed.split("$")
    assert scheme == "pbkdf2_sha256"
    assert int(iterations) >= 600_000
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(digest)) == 32
    assert verify_password("correct horse", hashed)
    assert not verify_password("correct horse ", hashed)


def test_hash_password_scrypt_default_cost() -> None:
    hashed = hash_password("correct horse", "scrypt")
    scheme, n, r, p, salt, _digest = hashed.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "5")
    assert len(base64.b64decode(salt)) == 16
    assert verify_password("correct horse", hashed)
    assert not verify_password("Correct horse", hashed)


def test_hash_password_salts_are_random() -> None:
    first = hash_password("pw", **FAST_PBKDF2)
    second = hash_password("pw", **FAST_PBKDF2)
    assert first != second
    assert verify_password("pw", first) and verify_password("pw", second)


def test_hash_password_with_a_given_salt_is_deterministic() -> None:
    salt = b"fixed salt bytes"
    assert hash_password("pw", salt=salt, **FAST_PBKDF2) == hash_password(
        "pw", salt=salt, **FAST_PBKDF2
    )
    expected = hashlib.pbkdf2_hmac("sha256", b"pw", salt, 1000)
    assert hash_password("pw", salt=salt, **FAST_PBKDF2).endswith("$" + b64(expected))


def test_hash_password_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="unknown scheme"):
        hash_password("pw", "md5")
    with pytest.raises(ValueError, match="empty password"):
        hash_password("")
    with pytest.raises(ValueError, match="power of 2"):
        hash_password("pw", "scrypt", n=1000)
    with pytest.raises(ValueError, match="iterations"):
        hash_password("pw", iterations=0)
    with pytest.raises(ValueError, match="empty salt"):
        hash_password("pw", salt=b"")


def test_a_file_mixing_plain_and_hashed_passwords() -> None:
    text = (
        f"alice:{hash_password('a-pass', **FAST_PBKDF2)}\n"
        f"bob:{hash_password('b-pass', 'scrypt', **FAST_SCRYPT)}\n"
        "carol:c-pass\n"
    )
    passwords = PasswordFile.parse(text)
    assert passwords.check("alice", "a-pass")
    assert passwords.check("bob", "b-pass")
    assert passwords.check("carol", "c-pass")
    assert not passwords.check("alice", "b-pass")
    assert not passwords.check("bob", "c-pass")
    assert not passwords.check("carol", "a-pass")
    # A hashed entry's text is not a password that logs in.
    assert not passwords.check("alice", text.splitlines()[0].partition(":")[2])


def test_an_unknown_user_costs_a_real_check() -> None:
    calls: list[str] = []
    passwords = PasswordFile.parse("alice:secret\n")

    class Spy:
        def verify(self, password: str) -> bool:
            calls.append(password)
            return True  # even a "match" must not let an unknown user in

    passwords._dummy = Spy()  # type: ignore[assignment]
    assert not passwords.check("mallory", "guess")
    assert calls == ["guess"]


# ------------------------------------------------------------------------- PasswordAuth

PASSWORDS = PasswordFile.parse(f"alice:secret\nbob:{hash_password('hunter2', **FAST_PBKDF2)}\n")


def test_smtp_login_end_to_end() -> None:
    factory = Pipeline(PasswordAuth(PASSWORDS), deliver=SinkHandler)
    config = Config(hostname="auth.test", auth_allow_plaintext=True)
    with running_server(factory, config=config) as server:
        for user, password in (("alice", "secret"), ("bob", "hunter2")):
            with smtplib.SMTP(server.host, server.port, timeout=10) as client:
                client.ehlo()
                assert "PLAIN" in client.esmtp_features["auth"]
                code, _ = client.login(user, password)
                assert code == 235
                client.sendmail("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\nx\r\n")
        with smtplib.SMTP(server.host, server.port, timeout=10) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError) as info:
                client.login("bob", "secret")
            assert info.value.smtp_code == 535
