"""The ready policies of a Pipeline, each built once with its configuration.

    from smtpkit.handlers.policies import CidrBlocklist, Dnsbl, PasswordAuth, RelayControl

| policy | stage | refuses with |
| --- | --- | --- |
| CidrBlocklist | welcome | 421 and close |
| CidrAllowlist | welcome | (Accepts listed clients: later welcome checks are skipped) |
| Dnsbl | welcome | 421 and close |
| Rhsbl | mail | 554 5.7.1 |
| RequireTls | mail | 530 5.7.0 |
| RequireAuth | mail | 530 5.7.0 |
| PasswordAuth | auth | 535 5.7.8 |
| SenderDomains | mail | 554 5.7.1 |
| RelayControl | rcpt | 554 5.7.1 |
| RecipientDomains | rcpt | 554 5.7.1 |
| RecipientTable | rcpt | 550 5.1.1 |
| Spf | mail | 550 5.7.23 on fail, 451 4.7.24 on a DNS failure (configurable) |
| Dkim, Arc | data | (records results; configurable) |
| Dmarc | data | 550 5.7.1 for p=reject, 451 4.7.1 on a DNS failure (configurable) |
| Rspamd | data | 554 5.7.1 reject, 451 4.7.1 soft reject and greylist |
| DkimSign | edit | (signs mail from authenticated users and trusted networks, last) |
| Greylist | rcpt | 451 4.7.1 (until the triplet's delay has passed) |
| RateLimit | welcome, mail, rcpt | 421 4.7.0 and close; 450 4.7.1 |

PasswordAuth limits failed logins per client (`AuthLimit`: 421 4.7.0 past 10 a minute).
Greylist, RateLimit and AuthLimit keep their state in a `Store`: `SqliteStore` (the default
for the first two), `RedisStore`, `MemoryStore`; `open_store()` reads the file's `store` key.

`POLICY_TYPES` and `build_policy()` are the configuration file's names for them.
"""

from ._access import LOOPBACK, RelayControl, RequireAuth, RequireTls
from ._authres import Action, MethodResult, Result, authentication_results
from ._config import POLICY_TYPES, ConfigError, build_policy, dns_servers_problem
from ._dkim import Arc, Dkim
from ._dkimsign import BodyHasher, DkimSign
from ._dmarc import Dmarc, organizational_domain
from ._dns import Dnsbl, Rhsbl, dnsbl_name
from ._domains import RecipientDomains, RecipientTable, SenderDomains
from ._greylist import Greylist
from ._networks import CidrAllowlist, CidrBlocklist, Networks
from ._passwords import SCHEMES, PasswordAuth, PasswordFile, hash_password, verify_password
from ._ratelimit import AuthLimit, Counted, Limits, Per, RateLimit
from ._resolver import DnsTempError, Resolver, resolver
from ._rspamd import Rspamd, RspamdAction
from ._spf import Spf
from ._store import (
    DEFAULT_STORE,
    MemoryStore,
    RedisStore,
    SqliteStore,
    Store,
    StoreError,
    open_store,
)

__all__ = [
    "DEFAULT_STORE",
    "LOOPBACK",
    "POLICY_TYPES",
    "SCHEMES",
    "Action",
    "Arc",
    "AuthLimit",
    "BodyHasher",
    "CidrAllowlist",
    "CidrBlocklist",
    "ConfigError",
    "Counted",
    "Dkim",
    "DkimSign",
    "Dmarc",
    "DnsTempError",
    "Dnsbl",
    "Greylist",
    "Limits",
    "MemoryStore",
    "MethodResult",
    "Networks",
    "PasswordAuth",
    "PasswordFile",
    "Per",
    "RateLimit",
    "RecipientDomains",
    "RecipientTable",
    "RedisStore",
    "RelayControl",
    "RequireAuth",
    "RequireTls",
    "Resolver",
    "Result",
    "Rhsbl",
    "Rspamd",
    "RspamdAction",
    "SenderDomains",
    "Spf",
    "SqliteStore",
    "Store",
    "StoreError",
    "authentication_results",
    "build_policy",
    "dns_servers_problem",
    "dnsbl_name",
    "hash_password",
    "open_store",
    "organizational_domain",
    "resolver",
    "verify_password",
]
