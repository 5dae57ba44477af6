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

`POLICY_TYPES` and `build_policy()` are the configuration file's names for them.
"""

from ._access import LOOPBACK, RelayControl, RequireAuth, RequireTls
from ._config import POLICY_TYPES, ConfigError, build_policy, dns_servers_problem
from ._dns import Dnsbl, Rhsbl, dnsbl_name
from ._domains import RecipientDomains, RecipientTable, SenderDomains
from ._networks import CidrAllowlist, CidrBlocklist, Networks
from ._passwords import SCHEMES, PasswordAuth, PasswordFile, hash_password, verify_password

__all__ = [
    "LOOPBACK",
    "POLICY_TYPES",
    "SCHEMES",
    "CidrAllowlist",
    "CidrBlocklist",
    "ConfigError",
    "Dnsbl",
    "Networks",
    "PasswordAuth",
    "PasswordFile",
    "RecipientDomains",
    "RecipientTable",
    "RelayControl",
    "RequireAuth",
    "RequireTls",
    "Rhsbl",
    "SenderDomains",
    "build_policy",
    "dns_servers_problem",
    "dnsbl_name",
    "hash_password",
    "verify_password",
]
