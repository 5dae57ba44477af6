"""The ready policies as the configuration file names them: `[[policy]]` tables.

`build_policy(table)` makes the policy of one table (its `type` and its keys); what is wrong is
a `ConfigError` naming the key, which the file reader turns into `file:line: key: why`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, final

from .._pipeline import Policy
from ._access import RelayControl, RequireAuth, RequireTls
from ._dns import Dnsbl, Rhsbl, parse_dns_server
from ._domains import RecipientDomains, RecipientTable, SenderDomains
from ._networks import CidrAllowlist, CidrBlocklist, Networks
from ._passwords import PasswordAuth

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
    policy: PasswordAuth | None = t.loaded("file", PasswordAuth.load)
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
