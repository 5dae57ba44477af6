"""Where greylisting and the rate limits keep their state: one small `Store` interface and
its backends.

    SqliteStore("/var/lib/smtpkit/state.sqlite")   the default: a local file, no setup
    RedisStore("redis://10.0.0.5:6379/0")          shared by several smtpkit instances
    MemoryStore()                                   this process only (tests, AUTH's default)

`open_store("sqlite:PATH" | "redis://HOST:PORT/DB" | "memory:")` makes one from the
configuration file's `store` key.

A store holds numbers under string keys, each with an expiry. Every operation is atomic across
threads, processes (SQLite: one transaction each) and machines (Redis: one Lua script each), so
that two connections can never both be "the first" or lose a count. Time comes from the
store's `clock` (wall-clock seconds, as the state outlives the process): a test gives a clock
of its own and moves it, rather than sleeping through a greylisting delay. Expiry is decided
against that clock; Redis's own key expiry only collects the garbage.

The operations block (a file lock, a network round trip), so the policies that use a store run
on the worker pool; under trio too, where the synchronous `redis` client is the one that fits.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, final

from smtp_core import Close, Decision, Reject

from ._networks import ip_address

if TYPE_CHECKING:
    import redis

__all__ = [
    "DEFAULT_STORE",
    "MemoryStore",
    "RedisStore",
    "SqliteStore",
    "Store",
    "StoreError",
    "client_network",
    "open_store",
    "store_failure",
    "store_of",
]

log = logging.getLogger("smtpkit.policy")

#: The store of a policy that names none: a SQLite file in the working directory.
DEFAULT_STORE: Final = "sqlite:smtpkit-state.sqlite"

#: Expired entries are swept after this many writes (per process).
_SWEEP_EVERY: Final = 1000

Clock = Callable[[], float]


class StoreError(Exception):
    """The store could not do an operation (Redis unreachable, the SQLite file locked or
    unwritable): the policies answer a temporary failure."""


class Store(abc.ABC):
    """Numbers under string keys, each with an expiry, with atomic operations.

    `ttl` is in seconds from now. A key whose expiry has passed is absent for every operation.
    """

    def __init__(self, clock: Clock = time.time) -> None:
        #: Seconds since the epoch; every expiry and every "now" of the policies is read here.
        self.clock = clock

    @abc.abstractmethod
    def incr(self, key: str, ttl: float) -> int:
        """Add 1 to the count under `key` and return it. A new count (1) expires after `ttl`;
        later increments keep that expiry: a fixed window, as Postfix's anvil counts."""

    @abc.abstractmethod
    def get(self, key: str) -> float | None:
        """The value under `key`, or None."""

    @abc.abstractmethod
    def put(self, key: str, value: float, ttl: float) -> None:
        """Store `value` under `key`, replacing what was there, until `ttl` from now."""

    @abc.abstractmethod
    def add(self, key: str, value: float, ttl: float) -> float | None:
        """Store `value` under `key` until `ttl` from now unless the key is present: None when
        it was stored, else the value already there (which is kept)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Let go of connections and files (the next operation opens them again)."""


def client_network(ip: str, ipv4_prefix: int, ipv6_prefix: int) -> str:
    """The network of a client address as a store key: `"192.0.2.0/24"`. An IPv4-mapped
    address counts as IPv4; what is not an address is kept as it is."""
    address = ip_address(ip)
    if address is None:
        return ip
    prefix = ipv4_prefix if address.version == 4 else ipv6_prefix
    shift = address.max_prefixlen - prefix
    network = (int(address) >> shift) << shift
    return f"{type(address)(network)}/{prefix}"


def store_failure(stage: str, who: object, exc: StoreError) -> Decision:
    """The answer of a policy whose store failed: a temporary failure, so that the client
    comes back (as Postfix answers when its policy service is down). One warning line."""
    log.warning("%r: store unavailable, answering a temporary failure: %s", who, exc)
    if stage == "welcome":
        return Close(421, "4.3.0 Error: temporary failure, try again later")
    if stage == "auth":
        return Reject(454, "4.7.0 Temporary authentication failure")
    return Reject(451, "4.3.0 Error: temporary failure, try again later")


def _expiry(now: float, ttl: float) -> float:
    if not ttl > 0:
        raise ValueError(f"ttl must be more than 0 seconds, not {ttl!r}")
    return now + ttl


# ------------------------------------------------------------------------------------ memory


@final
class MemoryStore(Store):
    """A dict in this process, behind a lock: for tests, and for state that need not outlive
    the process or be shared (each `--processes` child has its own)."""

    def __init__(self, clock: Clock = time.time) -> None:
        super().__init__(clock)
        self._entries: dict[str, tuple[float, float]] = {}  # key -> (value, expires)
        self._lock = threading.Lock()
        self._writes = 0

    def _live(self, key: str, now: float) -> float | None:
        entry = self._entries.get(key)
        return entry[0] if entry is not None and entry[1] > now else None

    def _set(self, key: str, value: float, expires: float, now: float) -> None:
        self._entries[key] = (value, expires)
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            for gone in [k for k, (_, e) in self._entries.items() if e <= now]:
                del self._entries[gone]

    def incr(self, key: str, ttl: float) -> int:
        now = self.clock()
        expires = _expiry(now, ttl)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[1] > now:
                value, expires = entry[0] + 1, entry[1]
            else:
                value = 1
            self._set(key, value, expires, now)
            return int(value)

    def get(self, key: str) -> float | None:
        now = self.clock()
        with self._lock:
            return self._live(key, now)

    def put(self, key: str, value: float, ttl: float) -> None:
        now = self.clock()
        expires = _expiry(now, ttl)
        with self._lock:
            self._set(key, value, expires, now)

    def add(self, key: str, value: float, ttl: float) -> float | None:
        now = self.clock()
        expires = _expiry(now, ttl)
        with self._lock:
            present = self._live(key, now)
            if present is None:
                self._set(key, value, expires, now)
            return present

    def close(self) -> None:
        """Nothing to let go of: the entries stay, as a file's would."""

    def __repr__(self) -> str:
        return "MemoryStore()"


# ------------------------------------------------------------------------------------ SQLite

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS smtpkit_state ("
    " key TEXT PRIMARY KEY, value REAL NOT NULL, expires REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS smtpkit_state_expires ON smtpkit_state (expires)",
)
_INCR: Final = (
    "INSERT INTO smtpkit_state (key, value, expires) VALUES (:key, 1, :expires)"
    " ON CONFLICT (key) DO UPDATE SET"
    " value = CASE WHEN expires <= :now THEN 1 ELSE value + 1 END,"
    " expires = CASE WHEN expires <= :now THEN :expires ELSE expires END"
)
_GET: Final = "SELECT value FROM smtpkit_state WHERE key = ? AND expires > ?"
_PUT: Final = "INSERT OR REPLACE INTO smtpkit_state (key, value, expires) VALUES (?, ?, ?)"
_SWEEP: Final = "DELETE FROM smtpkit_state WHERE expires <= ?"


@final
class SqliteStore(Store):
    """A local SQLite file: no setup, survives a restart, and is shared by every process on
    the machine that opens it (`--processes` children).

    WAL mode lets readers and the one writer proceed together; `timeout` is how long an
    operation waits for another process's write (SQLite's busy timeout). Commits are not
    fsynced (`synchronous=NORMAL`): a power cut may lose the last moments of counts, never
    corrupt the file. The file is created at the first operation, by the process that serves
    (after `--user` has dropped root), so its folder must be writable by that user.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Clock = time.time, timeout: float = 5.0
    ) -> None:
        super().__init__(clock)
        self.path = os.path.abspath(os.fspath(path))
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise ValueError(f"{self.path}: no such folder {folder}")
        self.timeout = timeout
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._writes = 0

    def _connection(self) -> sqlite3.Connection:
        """This process's connection (a forked child opens its own: one must never cross a
        fork)."""
        if self._db is None or self._pid != os.getpid():
            db = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                for statement in _SCHEMA:
                    db.execute(statement)
            except BaseException:
                db.close()
                raise
            self._db, self._pid = db, os.getpid()
        return self._db

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        """One atomic transaction (BEGIN IMMEDIATE takes the write lock first, so that a read
        and the write that depends on it see no other writer in between)."""
        with self._lock:
            try:
                db = self._connection()
                if not write:
                    yield db
                    return
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    self._writes += 1
                    if self._writes % _SWEEP_EVERY == 0:
                        db.execute(_SWEEP, (self.clock(),))
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {exc}") from exc

    def incr(self, key: str, ttl: float) -> int:
        now = self.clock()
        expires = _expiry(now, ttl)
        with self._transaction(write=True) as db:
            db.execute(_INCR, {"key": key, "now": now, "expires": expires})
            (value,) = db.execute(_GET, (key, now)).fetchone()
        return int(value)

    def get(self, key: str) -> float | None:
        now = self.clock()
        with self._transaction(write=False) as db:
            row = db.execute(_GET, (key, now)).fetchone()
        return None if row is None else float(row[0])

    def put(self, key: str, value: float, ttl: float) -> None:
        expires = _expiry(self.clock(), ttl)
        with self._transaction(write=True) as db:
            db.execute(_PUT, (key, value, expires))

    def add(self, key: str, value: float, ttl: float) -> float | None:
        now = self.clock()
        expires = _expiry(now, ttl)
        with self._transaction(write=True) as db:
            row = db.execute(_GET, (key, now)).fetchone()
            if row is not None:
                return float(row[0])
            db.execute(_PUT, (key, value, expires))
        return None

    def close(self) -> None:
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                self._db.close()
            self._db = None

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"


# ------------------------------------------------------------------------------------ Redis

# Each key is a hash {v: value, e: expiry}; the scripts take the caller's clock (ARGV[1]), so
# that expiry follows `Store.clock`; PEXPIRE (ARGV[3], ms) only lets Redis collect the key.
_LIVE: Final = """
local r = redis.call('HMGET', KEYS[1], 'v', 'e')
local live = r[1] and tonumber(r[2]) > tonumber(ARGV[1])
"""
_REDIS_INCR: Final = """
local e = tonumber(redis.call('HGET', KEYS[1], 'e'))
if e == nil or e <= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'v', 1, 'e', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return redis.call('HINCRBY', KEYS[1], 'v', 1)
"""
_REDIS_GET: Final = _LIVE + "if live then return r[1] end\nreturn false\n"
_REDIS_PUT: Final = """
redis.call('HSET', KEYS[1], 'v', ARGV[4], 'e', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return false
"""
_REDIS_ADD: Final = _LIVE + "if live then return r[1] end\n" + _REDIS_PUT


@final
class RedisStore(Store):
    """A Redis server, shared by several smtpkit instances (the existing engine to use past one
    machine). `url` is redis-py's: `redis://[:password@]host:port/db`, `rediss://` for TLS,
    `unix:///run/redis.sock?db=0`. Keys start with `prefix`. Needs the `redis` package
    (`pip install smtpkit[redis]`): its synchronous client, thread-safe and fork-safe, which
    the worker pool calls under every transport and loop (trio included).
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Clock = time.time,
        timeout: float = 5.0,
        prefix: str = "smtpkit:",
    ) -> None:
        super().__init__(clock)
        try:
            import redis
        except ImportError:
            raise RuntimeError(
                "the Redis store needs the redis package: pip install smtpkit[redis]"
            ) from None
        self.url = url
        self.prefix = prefix
        self._errors: tuple[type[Exception], ...] = (redis.RedisError,)
        try:
            self._client: redis.Redis = redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        except ValueError as exc:
            raise ValueError(f"{url}: {exc}") from None
        register = self._client.register_script
        self._incr = register(_REDIS_INCR)
        self._get = register(_REDIS_GET)
        self._put = register(_REDIS_PUT)
        self._add = register(_REDIS_ADD)

    def _run(self, script: Callable[..., Any], key: str, ttl: float = 0.0, value: float = 0) -> Any:
        """Run `script` on `key` (ttl 0: a read, which sets no expiry)."""
        now = self.clock()
        expires = _expiry(now, ttl) if ttl else now
        ttl_ms = max(1, math.ceil((expires - now) * 1000))
        try:
            return script(
                keys=[self.prefix + key], args=[repr(now), repr(expires), ttl_ms, repr(value)]
            )
        except self._errors as exc:
            raise StoreError(f"{self.url}: {exc}") from exc

    def incr(self, key: str, ttl: float) -> int:
        return int(self._run(self._incr, key, ttl, 1))

    def get(self, key: str) -> float | None:
        found = self._run(self._get, key)
        return None if found is None else float(found)

    def put(self, key: str, value: float, ttl: float) -> None:
        self._run(self._put, key, ttl, value)

    def add(self, key: str, value: float, ttl: float) -> float | None:
        found = self._run(self._add, key, ttl, value)
        return None if found is None else float(found)

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r})"


# ------------------------------------------------------------------------------------ names


def open_store(spec: str, *, clock: Clock = time.time) -> Store:
    """The store a `store` setting names: `sqlite:PATH` (relative to the working directory),
    `redis://HOST:PORT/DB` (or `rediss://`, `unix://`), or `memory:`. ValueError when it names
    none; RuntimeError when Redis is named but the redis package is missing."""
    if spec.startswith("sqlite:"):
        path = spec.removeprefix("sqlite:")
        if not path:
            raise ValueError("sqlite: needs a file name: sqlite:/var/lib/smtpkit/state.sqlite")
        return SqliteStore(path, clock=clock)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(spec, clock=clock)
    if spec == "memory:":
        return MemoryStore(clock)
    raise ValueError(f"{spec!r} is not a store: sqlite:PATH, redis://HOST:PORT/DB or memory:")


def store_of(store: Store | str | None) -> Store:
    """A policy's `store` argument as a Store (None: DEFAULT_STORE)."""
    if isinstance(store, Store):
        return store
    return open_store(DEFAULT_STORE if store is None else store)
