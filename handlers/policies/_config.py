"""The ready policies as the configuration file names them: `[[policy]]` tables.

`build_policy(table)` makes the policy of one table (its `type` and its keys); what is wrong is
a `ConfigError` naming the key, which the file reader turns into `file:line: key: why`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, final

from .._pipeline import Policy
from ._access import RelayControl, RequireAuth, RequireTls
from ._authres import DEFAULT_MAX_SCAN_SIZE, Action
from ._dkim import ARC_ACTIONS, DKIM_ACTIONS, Arc, Dkim
from ._dkimsign import DkimSign
from ._dmarc import DMARC_ACTIONS, Dmarc
from ._dns import Dnsbl, Rhsbl, parse_dns_server
from ._domains import RecipientDomains, RecipientTable, SenderDomains
from ._greylist import Greylist
from ._networks import CidrAllowlist, CidrBlocklist, Networks
from ._passwords import PasswordAuth
from ._ratelimit import Counted, Limits, RateLimit
from ._rspamd import Rspamd
from ._spf import SPF_ACTIONS, Spf
from ._store import Store, open_store

__all__ = ["POLICY_TYPES", "ConfigError", "build_policy", "dns_servers_problem"]


class ConfigError(ValueError):
    """A key of a policy table is wrong; `key` is "" when the table as a whole is."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"{key}: {why}" if key else why)
        self.key = key
        self.why = why


@final
class _Table:
    """Typed reads of one table's keys; each read key is marked, the rest are unknown."""

    def __init__(self, table: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
        self.table = table
        self.defaults = defaults
        self.read: set[str] = {"type"}

    def _get(self, key: str, kinds: tuple[type, ...], what: str) -> Any:
        self.read.add(key)
        value = self.table.get(key)
        if value is None:
            return None
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ConfigError(key, f"expected {what}")
        return value

    def text(self, key: str) -> str | None:
        value: str | None = self._get(key, (str,), "a string")
        if value is not None and not value.strip():
            raise ConfigError(key, "empty")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value: bool | None = self._get(key, (bool,), "true or false")
        return default if value is None else value

    def number(self, key: str, default: float) -> float:
        value: float | None = self._get(key, (int, float), "a number")
        if value is not None and value <= 0:
            raise ConfigError(key, "must be more than 0")
        return default if value is None else float(value)

    def numbers(self, *keys: str) -> dict[str, float]:
        """The keys given, as numbers above 0; the others keep the policy's defaults."""
        return {key: value for key in keys if (value := self.number(key, 0.0))}

    def counts(self, *keys: str) -> dict[str, int]:
        """The keys given, as whole numbers from 0; the others keep the policy's defaults."""
        found: dict[str, int] = {}
        for key in keys:
            value: int | None = self._get(key, (int,), "a whole number")
            if value is not None and value < 0:
                raise ConfigError(key, "must be 0 or more")
            if value is not None:
                found[key] = value
        return found

    def store(self) -> Store | None:
        """The store named by `store` (sqlite:PATH, redis://...); None: the policy's default."""
        spec = self.text("store")
        if spec is None:
            return None
        try:
            return open_store(spec)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError("store", str(exc)) from None

    def strings(self, key: str) -> list[str]:
        value = self._get(key, (list,), "an array of strings")
        if value is None:
            return []
        if not all(isinstance(item, str) for item in value):
            raise ConfigError(key, "expected an array of strings")
        return list(value)

    def dns_servers(self) -> list[str]:
        servers = self.strings("dns_servers") or list(self.defaults.get("dns_servers", ()))
        for server in servers:
            try:
                parse_dns_server(server)
            except ValueError:
                why = f"{server!r} is not ADDRESS or ADDRESS:PORT"
                raise ConfigError("dns_servers", why) from None
        return servers

    def loaded(self, key: str, load: Callable[[str], Any]) -> Any:
        """What `load(path)` makes of the file named by `key`; None when not given."""
        path = self.text(key)
        if path is None:
            return None
        try:
            return load(path)
        except OSError as exc:
            raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(key, f"{path} is not UTF-8 text ({exc.reason})") from None
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from None

    def unknown(self) -> list[str]:
        return [key for key in self.table if key not in self.read]


def _networks(t: _Table) -> Networks:
    listed = t.strings("networks")
    loaded: Networks | None = t.loaded("file", Networks.load)
    if loaded is None and not listed:
        raise ConfigError("", 'needs networks = [...] or file = "..."')
    try:
        given = Networks(listed)
    except ValueError as exc:
        raise ConfigError("networks", str(exc)) from None
    return Networks([*given, *(loaded or ())])


def _zones(t: _Table) -> list[str]:
    zones = t.strings("zones")
    if not zones:
        raise ConfigError("zones", 'missing: the DNS zones to ask, e.g. ["zen.spamhaus.org"]')
    return zones


def _dnsbl(t: _Table) -> Policy:
    return Dnsbl(*_zones(t), dns_servers=t.dns_servers(), timeout=t.number("timeout", 5.0))


def _rhsbl(t: _Table) -> Policy:
    return Rhsbl(*_zones(t), dns_servers=t.dns_servers(), timeout=t.number("timeout", 5.0))


def _password_auth(t: _Table) -> Policy:
    limit: dict[str, Any] = {
        **t.counts("max_failures"),
        **t.numbers("failure_window", "cooldown"),
        "store": t.store(),
    }
    policy: PasswordAuth | None = t.loaded("file", lambda p: PasswordAuth.load(p, **limit))
    if policy is None:
        raise ConfigError("file", "missing: the 'user:password' file")
    if not policy.passwords.users:
        raise ConfigError("file", "no users in the file: every login would fail")
    return policy


def _relay_control(t: _Table) -> Policy:
    try:
        networks = Networks(t.strings("networks"))
    except ValueError as exc:
        raise ConfigError("networks", str(exc)) from None
    return RelayControl(
        networks=networks,
        domains=t.strings("domains"),
        authenticated=t.flag("authenticated", True),
    )


def _domain_list(cls: type[SenderDomains] | type[RecipientDomains]) -> Callable[[_Table], Policy]:
    def build(t: _Table) -> Policy:
        allow, deny = t.strings("allow"), t.strings("deny")
        if not allow and not deny:
            raise ConfigError("", "needs allow = [...] or deny = [...]")
        return cls(allow=allow, deny=deny)

    return build


def _recipient_table(t: _Table) -> Policy:
    delimiter = t.text("delimiter") or "+"
    addresses = t.strings("addresses")
    loaded: RecipientTable | None = t.loaded(
        "file", lambda path: RecipientTable.load(path, delimiter=delimiter)
    )
    if loaded is None and not addresses:
        raise ConfigError("", 'needs addresses = [...] or file = "..."')
    try:
        given = RecipientTable(addresses, delimiter=delimiter)
    except ValueError as exc:
        raise ConfigError("addresses", str(exc)) from None
    if loaded is None:
        return given
    entries = [*given.users, *loaded.users]
    entries += [f"@{d}" for d in given.catch_all | loaded.catch_all]
    return RecipientTable(entries, delimiter=delimiter)


def _greylist(t: _Table) -> Policy:
    try:
        exempt = Networks(t.strings("exempt"))
    except ValueError as exc:
        raise ConfigError("exempt", str(exc)) from None
    options: dict[str, Any] = {
        **t.numbers("delay", "retry_window", "max_age"),
        **t.counts("auto_allow", "ipv4_prefix", "ipv6_prefix"),
    }
    return Greylist(exempt=exempt, store=t.store(), **options)


def _limits(t: _Table, key: str) -> Limits | None:
    table = t._get(key, (dict,), "a table: { connections = N, messages = N, recipients = N }")
    if table is None:
        return None
    known = [counted.value for counted in Counted]
    for name, value in table.items():
        if name not in known:
            raise ConfigError(key, f"{name!r} is not counted: one of {', '.join(known)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(key, f"{name}: expected a whole number, 1 or more")
    return Limits(**table)


def _rate_limit(t: _Table) -> Policy:
    return RateLimit(
        ip=_limits(t, "ip"),
        sender=_limits(t, "sender"),
        user=_limits(t, "user"),
        **t.numbers("window"),
        store=t.store(),
    )


def _actions(t: _Table, defaults: Mapping[Any, Action]) -> dict[str, Any]:
    """The `result = "action"` keys of an authentication policy's table."""
    chosen: dict[str, Any] = {}
    for key in defaults:
        value = t.text(key.value)
        if value is not None:
            try:
                Action.of(value)
            except ValueError as exc:
                raise ConfigError(key.value, str(exc)) from None
            chosen[key.value] = value
    return chosen


def _dns(t: _Table) -> dict[str, Any]:
    return {"dns_servers": t.dns_servers(), "timeout": t.number("timeout", 5.0)}


def _scan_size(t: _Table) -> int:
    return int(t.number("max_scan_size", DEFAULT_MAX_SCAN_SIZE))


def _dkim_sign(t: _Table) -> Policy:
    required = {key: t.text(key) for key in ("domain", "selector", "key_file")}
    for key, value in required.items():
        if value is None:
            raise ConfigError(key, "missing")
    try:
        networks = Networks(t.strings("networks"))
    except ValueError as exc:
        raise ConfigError("networks", str(exc)) from None
    authenticated = t.flag("authenticated", True)
    key_file = str(required["key_file"])
    try:
        return DkimSign(
            str(required["domain"]),
            str(required["selector"]),
            key_file,
            networks=networks,
            authenticated=authenticated,
        )
    except OSError as exc:
        raise ConfigError("key_file", f"cannot read {key_file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError("key_file", str(exc)) from None


def _rspamd(t: _Table) -> Policy:
    url = t.text("url")
    if url is None:
        raise ConfigError("url", 'missing: rspamd\'s normal worker, e.g. "http://127.0.0.1:11333"')
    unavailable = t.text("unavailable") or "tempfail"
    if unavailable not in ("tempfail", "accept"):
        raise ConfigError("unavailable", f"{unavailable!r} is not tempfail or accept")
    try:
        return Rspamd(
            url,
            timeout=t.number("timeout", 30.0),
            unavailable=unavailable,
            max_scan_size=_scan_size(t),
        )
    except ValueError as exc:
        raise ConfigError("url", str(exc)) from None


#: type name -> how a table becomes the policy; the keys of each are in docs/handlers.md.
POLICY_TYPES: Final[Mapping[str, Callable[[_Table], Policy]]] = {
    "cidr-blocklist": lambda t: CidrBlocklist(_networks(t)),
    "cidr-allowlist": lambda t: CidrAllowlist(_networks(t)),
    "dnsbl": _dnsbl,
    "rhsbl": _rhsbl,
    "require-tls": lambda t: RequireTls(),
    "require-auth": lambda t: RequireAuth(),
    "password-auth": _password_auth,
    "relay-control": _relay_control,
    "sender-domains": _domain_list(SenderDomains),
    "recipient-domains": _domain_list(RecipientDomains),
    "recipient-table": _recipient_table,
    "spf": lambda t: Spf(**_dns(t), **_actions(t, SPF_ACTIONS)),
    "dkim": lambda t: Dkim(**_dns(t), max_scan_size=_scan_size(t), **_actions(t, DKIM_ACTIONS)),
    "arc": lambda t: Arc(**_dns(t), max_scan_size=_scan_size(t), **_actions(t, ARC_ACTIONS)),
    "dmarc": lambda t: Dmarc(**_dns(t), max_scan_size=_scan_size(t), **_actions(t, DMARC_ACTIONS)),
    "dkim-sign": _dkim_sign,
    "rspamd": _rspamd,
    "greylist": _greylist,
    "rate-limit": _rate_limit,
}


def build_policy(table: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> Policy:
    """The policy of one `[[policy]]` table. `defaults` holds the file's top-level keys that
    policies share (`dns_servers`). ConfigError for the first thing wrong."""
    kind = table.get("type")
    if not isinstance(kind, str) or kind not in POLICY_TYPES:
        known = ", ".join(POLICY_TYPES)
        shown = "missing" if kind is None else f"{kind!r} is not a policy type"
        raise ConfigError("type", f"{shown}: one of {known}")
    reader = _Table(table, defaults or {})
    try:
        policy = POLICY_TYPES[kind](reader)
    except ConfigError:
        raise
    except (ValueError, RuntimeError) as exc:
        raise ConfigError("", str(exc)) from None
    unknown = reader.unknown()
    if unknown:
        keys = ", ".join(sorted(reader.read - {"type"})) or "none"
        raise ConfigError(unknown[0], f"not a key of type {kind!r} (its keys: {keys})")
    return policy


def dns_servers_problem(value: object) -> str | None:
    """Why a top-level `dns_servers` value is wrong, or None."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return "expected an array of strings"
    for server in value:
        try:
            parse_dns_server(server)
        except ValueError:
            return f"{server!r} is not ADDRESS or ADDRESS:PORT"
    return None
