"""Passwords from a file, for AUTH: `PasswordFile`, `hash_password()`, and the `PasswordAuth`
policy that checks them.

The file has one `user:password` per line; blank lines and `#` comments are ignored. The user
ends at the first colon, and the password is the rest of the line, taken exactly (spaces
included). A password is either plain text or hashed with a standard-library scheme:

    pbkdf2_sha256$ITERATIONS$SALT_B64$HASH_B64      hashlib.pbkdf2_hmac("sha256", ...)
    scrypt$N$r$p$SALT_B64$HASH_B64                  hashlib.scrypt(...)

`hash_password()` (and `smtpkit hash-password`) makes the hashed form. Comparisons use
`hmac.compare_digest`, and an unknown user costs as much as a known one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Iterator, Mapping
from typing import ClassVar, Final, final

from smtp_core import Accept, Reject

from .._pipeline import Context, Policy, PolicyResult
from .._trace import log_escape
from ._ratelimit import AuthLimit
from ._store import Store

__all__ = ["SCHEMES", "PasswordAuth", "PasswordFile", "hash_password", "verify_password"]

log = logging.getLogger("smtpkit.auth")

#: The hash schemes understood, the default first.
SCHEMES: Final = ("pbkdf2_sha256", "scrypt")

#: OWASP's 2023 figure for PBKDF2-HMAC-SHA256.
PBKDF2_ITERATIONS: Final = 600_000
#: OWASP's "N=2^14, r=8, p=5": 16 MiB per check, whatever p is.
SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 5
#: Refuse scrypt parameters that need more memory than this per check.
SCRYPT_MAX_MEMORY: Final = 2**30
_SALT_BYTES: Final = 16
_HASH_BYTES: Final = 32
_MIN_HASH_BYTES: Final = 16

#: Prefixes of hashes made by other tools (crypt, htpasswd, LDAP); they are refused rather than
#: taken for plain-text passwords.
_FOREIGN_PREFIXES: Final = (
    "$1$",
    "$2a$",
    "$2b$",
    "$2y$",
    "$5$",
    "$6$",
    "$apr1$",
    "$argon2",
    "$y$",
    "$7$",
    "{SHA}",
    "{SSHA}",
    "{CRYPT}",
)


class _Verifier:
    """One stored password."""

    __slots__ = ()

    def verify(self, password: str) -> bool:
        raise NotImplementedError


@final
class _Plain(_Verifier):
    __slots__ = ("_secret",)

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode("utf-8")

    def verify(self, password: str) -> bool:
        return hmac.compare_digest(password.encode("utf-8", "surrogateescape"), self._secret)


@final
class _Pbkdf2(_Verifier):
    __slots__ = ("_hash", "_iterations", "_salt")

    def __init__(self, iterations: int, salt: bytes, hash_: bytes) -> None:
        self._iterations = iterations
        self._salt = salt
        self._hash = hash_

    def verify(self, password: str) -> bool:
        derived = hashlib.pbkdf2_hmac(
            "sha256",
            password.encode("utf-8", "surrogateescape"),
            self._salt,
            self._iterations,
            dklen=len(self._hash),
        )
        return hmac.compare_digest(derived, self._hash)


@final
class _Scrypt(_Verifier):
    __slots__ = ("_hash", "_n", "_p", "_r", "_salt")

    def __init__(self, n: int, r: int, p: int, salt: bytes, hash_: bytes) -> None:
        self._n, self._r, self._p = n, r, p
        self._salt = salt
        self._hash = hash_

    def verify(self, password: str) -> bool:
        derived = _scrypt(password, self._salt, self._n, self._r, self._p, len(self._hash))
        return hmac.compare_digest(derived, self._hash)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    # OpenSSL needs 128*r*(N+2) bytes for V plus 128*r*p for B; give it just that, and a margin.
    maxmem = 128 * r * (n + 2) + 128 * r * p + 2**16
    return hashlib.scrypt(
        password.encode("utf-8", "surrogateescape"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=maxmem,
        dklen=dklen,
    )


def _check_scrypt(n: int, r: int, p: int) -> None:
    if n < 2 or n & (n - 1):
        raise ValueError(f"scrypt N must be a power of 2 greater than 1, not {n}")
    if r < 1 or p < 1:
        raise ValueError("scrypt r and p must be positive")
    if 128 * r * n > SCRYPT_MAX_MEMORY:
        raise ValueError("scrypt N and r need more than 1 GiB of memory")


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    """Standard or URL-safe base64, with or without padding."""
    padded = text + "=" * (-len(text) % 4)
    altchars = b"-_" if ("-" in text or "_" in text) else None
    try:
        data = base64.b64decode(padded, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
    if not data:
        raise ValueError(f"{what} is empty")
    return data


def _int(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{what} must be a positive integer, not {text!r}")
    value = int(text)
    if value < 1:
        raise ValueError(f"{what} must be a positive integer, not {text!r}")
    return value


def _parse_stored(stored: str) -> _Verifier:
    """The verifier for one stored password (plain or hashed); ValueError if malformed."""
    if not stored:
        raise ValueError("empty password")
    scheme, sep, rest = stored.partition("$")
    if sep and scheme == "pbkdf2_sha256":
        fields = rest.split("$")
        if len(fields) != 3:
            raise ValueError("pbkdf2_sha256 needs pbkdf2_sha256$ITERATIONS$SALT_B64$HASH_B64")
        iterations = _int(fields[0], "pbkdf2_sha256 iterations")
        salt = _b64decode(fields[1], "salt")
        hash_ = _b64decode(fields[2], "hash")
        if len(hash_) < _MIN_HASH_BYTES:
            raise ValueError(f"hash is shorter than {_MIN_HASH_BYTES} bytes")
        return _Pbkdf2(iterations, salt, hash_)
    if sep and scheme == "scrypt":
        fields = rest.split("$")
        if len(fields) != 5:
            raise ValueError("scrypt needs scrypt$N$r$p$SALT_B64$HASH_B64")
        n = _int(fields[0], "scrypt N")
        r = _int(fields[1], "scrypt r")
        p = _int(fields[2], "scrypt p")
        _check_scrypt(n, r, p)
        salt = _b64decode(fields[3], "salt")
        hash_ = _b64decode(fields[4], "hash")
        if len(hash_) < _MIN_HASH_BYTES:
            raise ValueError(f"hash is shorter than {_MIN_HASH_BYTES} bytes")
        return _Scrypt(n, r, p, salt, hash_)
    if stored.startswith(_FOREIGN_PREFIXES):
        raise ValueError(
            "unsupported password hash (crypt, htpasswd or LDAP style); "
            f"use plain text or one of {', '.join(SCHEMES)}"
        )
    return _Plain(stored)


def hash_password(
    password: str,
    scheme: str = "pbkdf2_sha256",
    *,
    iterations: int = PBKDF2_ITERATIONS,
    n: int = SCRYPT_N,
    r: int = SCRYPT_R,
    p: int = SCRYPT_P,
    salt: bytes | None = None,
) -> str:
    """The hashed form of `password` for a password file, with a fresh random salt.

    `iterations` is pbkdf2_sha256's cost; `n`, `r` and `p` are scrypt's.
    """
    if not password:
        raise ValueError("empty password")
    if salt is None:
        salt = secrets.token_bytes(_SALT_BYTES)
    elif not salt:
        raise ValueError("empty salt")
    secret = password.encode("utf-8", "surrogateescape")
    if scheme == "pbkdf2_sha256":
        if iterations < 1:
            raise ValueError("iterations must be positive")
        derived = hashlib.pbkdf2_hmac("sha256", secret, salt, iterations, dklen=_HASH_BYTES)
        result = f"pbkdf2_sha256${iterations}${_b64encode(salt)}${_b64encode(derived)}"
    elif scheme == "scrypt":
        _check_scrypt(n, r, p)
        derived = _scrypt(password, salt, n, r, p, _HASH_BYTES)
        result = f"scrypt${n}${r}${p}${_b64encode(salt)}${_b64encode(derived)}"
    else:
        raise ValueError(f"unknown scheme {scheme!r}; one of {', '.join(SCHEMES)}")
    return result


def verify_password(password: str, stored: str) -> bool:
    """True if `password` matches `stored`, a plain or hashed password from a password file."""
    return _parse_stored(stored).verify(password)


@final
class PasswordFile:
    """Users and their passwords, from a file of `user:password` lines.

    >>> passwords = PasswordFile.load("/etc/smtpkit/passwords")
    >>> passwords.check("alice", "secret")
    True

    Immutable once loaded, so one instance serves every connection and thread.
    """

    __slots__ = ("_dummy", "_entries", "source")

    def __init__(self, entries: Mapping[str, str] | None = None, *, source: str = "<memory>"):
        """`entries` maps each user to a stored password, plain or hashed."""
        self.source = source
        self._entries: dict[str, _Verifier] = {}
        for user, stored in (entries or {}).items():
            _check_user(user)
            try:
                self._entries[user] = _parse_stored(stored)
            except ValueError as exc:
                raise ValueError(f"{source}: user {user!r}: {exc}") from None
        # An unknown user is checked against a real entry, so that it costs as much.
        self._dummy: _Verifier | None = next(iter(self._entries.values()), None)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PasswordFile:
        """Read a password file (UTF-8). OSError if unreadable, ValueError if malformed."""
        with open(path, encoding="utf-8-sig") as file:
            text = file.read()
        return cls.parse(text, source=os.fspath(path))

    @classmethod
    def parse(cls, text: str, *, source: str = "<string>") -> PasswordFile:
        """Parse the text of a password file; errors name `source` and the line."""
        entries: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            user, sep, stored = line.partition(":")
            user = user.strip()
            where = f"{source}:{number}"
            if not sep:
                raise ValueError(f"{where}: expected user:password")
            try:
                _check_user(user)
                _parse_stored(stored)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            if user in entries:
                raise ValueError(f"{where}: user {user!r} appears twice")
            entries[user] = stored
        return cls(entries, source=source)

    def check(self, user: str, password: str) -> bool:
        """True if `user` exists and `password` is theirs. Slow by design when hashed."""
        verifier = self._entries.get(user)
        if verifier is None:
            if self._dummy is not None:
                self._dummy.verify(password)
            return False
        return verifier.verify(password)

    @property
    def users(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, user: object) -> bool:
        return user in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<PasswordFile {self.source!r} users={len(self._entries)}>"


def _check_user(user: str) -> None:
    if not user:
        raise ValueError("empty user name")
    if ":" in user or any(ord(c) < 32 or c == "\x7f" for c in user):
        raise ValueError(f"invalid user name {user!r}")


class PasswordAuth(Policy):
    """`auth`: logs in the users of a password file with their passwords (its presence makes
    the server offer AUTH, over TLS only unless the Config allows plaintext).

    A known user with a wrong password is refused (535 5.7.8); an unknown user is left to the
    next auth policy (None), and refused when there is none. Hashing is slow by design, so the
    check runs on the worker pool.

    Guessing is limited by default (`AuthLimit`): at most `max_failures` failed logins per
    client address in `failure_window` seconds, then `421 4.7.0` to its AUTH for `cooldown`
    seconds. The count lives in `store` (a `MemoryStore` of this process when None: give a
    SQLite or Redis store to share it between processes or instances); `max_failures=0`
    turns the limit off.

    >>> PasswordAuth.load("/etc/smtpkit/users")
    """

    accepts: ClassVar[frozenset[str]] = frozenset({"auth"})

    def __init__(
        self,
        passwords: PasswordFile | Mapping[str, str],
        *,
        max_failures: int = 10,
        failure_window: float = 60.0,
        cooldown: float = 300.0,
        store: Store | str | None = None,
    ) -> None:
        self.passwords = (
            passwords if isinstance(passwords, PasswordFile) else PasswordFile(passwords)
        )
        self.limit = (
            AuthLimit(max_failures, failure_window, cooldown, store=store) if max_failures else None
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        max_failures: int = 10,
        failure_window: float = 60.0,
        cooldown: float = 300.0,
        store: Store | str | None = None,
    ) -> PasswordAuth:
        """From a password file; OSError if unreadable, ValueError (file:line) if malformed."""
        return cls(
            PasswordFile.load(path),
            max_failures=max_failures,
            failure_window=failure_window,
            cooldown=cooldown,
            store=store,
        )

    def auth(self, ctx: Context, user: str, password: str) -> PolicyResult:
        ip = ctx.session.client_ip
        limit = self.limit
        if limit is not None and (refused := limit.check(ip)) is not None:
            return refused
        if self.passwords.check(user, password):
            log.info("authenticated user=%s from %s", log_escape(user), ip)
            return Accept()
        log.warning("authentication failed user=%s from %s", log_escape(user), ip)
        if limit is not None and (refused := limit.failed(ip)) is not None:
            return refused
        return Reject() if user in self.passwords else None

    def __repr__(self) -> str:
        return f"PasswordAuth({self.passwords!r}, {self.limit!r})"
