"""transports: the network side of smtpkit.

`Server` and `serve()` run a handler on asyncio, anyio (asyncio or trio) or threads; all three
drive the same I/O-free `Pump` around the sans-IO engine.

The public names are imported on first use (PEP 562). pytest loads our plugin,
`smtpkit.transports.testing`, at start-up, before pytest-cov starts measuring: an eager import here
would load smtp_core too early and hide its module-level lines from coverage.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._lifecycle import Deadline, Expiry, Lifecycle, Phase, Refusal
    from ._listen import make_ssl_context, parse_address
    from ._logging import LogChannel, log_to_stderr
    from ._metrics import Metrics, MetricsEndpoint, serve_metrics
    from ._observer import Observer
    from ._options import App, ServerOptions
    from ._pump import HookCall, Mode, Pump
    from ._server import TRANSPORTS, Runner, Server, serve
    from ._testing import running_server

__all__ = [
    "TRANSPORTS",
    "App",
    "Deadline",
    "Expiry",
    "HookCall",
    "Lifecycle",
    "LogChannel",
    "Metrics",
    "MetricsEndpoint",
    "Mode",
    "Observer",
    "Phase",
    "Pump",
    "Refusal",
    "Runner",
    "Server",
    "ServerOptions",
    "log_to_stderr",
    "make_ssl_context",
    "parse_address",
    "running_server",
    "serve",
    "serve_metrics",
]

#: Public name -> the private module that defines it.
_HOMES: dict[str, str] = {
    "TRANSPORTS": "_server",
    "App": "_options",
    "Deadline": "_lifecycle",
    "Expiry": "_lifecycle",
    "HookCall": "_pump",
    "Lifecycle": "_lifecycle",
    "LogChannel": "_logging",
    "Phase": "_lifecycle",
    "Refusal": "_lifecycle",
    "log_to_stderr": "_logging",
    "Metrics": "_metrics",
    "MetricsEndpoint": "_metrics",
    "Observer": "_observer",
    "serve_metrics": "_metrics",
    "Mode": "_pump",
    "Pump": "_pump",
    "Runner": "_server",
    "Server": "_server",
    "ServerOptions": "_options",
    "make_ssl_context": "_listen",
    "parse_address": "_listen",
    "running_server": "_testing",
    "serve": "_server",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
