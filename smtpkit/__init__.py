"""smtpkit: a framework for building SMTP servers.

The installed packages are `smtp_core` (the sans-IO engine), `smtpkit.handlers` (the handler
API, policies and deliverers) and `smtpkit.transports` (asyncio, anyio and threads servers, and
the CLI). The names most programs need are importable from here too:

    from smtpkit import Accept, Handler, ServerOptions, serve

They are imported on first use (PEP 562), so that `import smtpkit.transports.testing`, which
pytest does at start-up, loads nothing else early.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smtpkit.handlers import Accept, Close, Handler, Reject
    from smtpkit.transports import Server, ServerOptions, serve

__version__ = "0.2.0"

# Run from the root of a source checkout, Python finds this folder before the installed
# package; the sub-packages then live beside it, as the design card lays them out.
if not os.path.isdir(os.path.join(__path__[0], "handlers")):
    __path__.append(os.path.dirname(__path__[0]))

__all__ = [
    "Accept",
    "Close",
    "Handler",
    "Reject",
    "Server",
    "ServerOptions",
    "__version__",
    "serve",
]

#: Public name -> the sub-package that defines it.
_HOMES: dict[str, str] = {
    "Accept": "handlers",
    "Close": "handlers",
    "Handler": "handlers",
    "Reject": "handlers",
    "Server": "transports",
    "ServerOptions": "transports",
    "serve": "transports",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
