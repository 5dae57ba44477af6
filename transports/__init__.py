"""transports: the network side of smtpkit.

`Server` and `serve()` run a handler on asyncio, anyio (asyncio or trio) or threads; all three
drive the same I/O-free `Pump` around the sans-IO engine.
"""

from ._listen import make_ssl_context, parse_address
from ._options import App, ServerOptions
from ._pump import HookCall, Mode, Pump
from ._server import TRANSPORTS, Runner, Server, serve
from ._testing import running_server

__all__ = [
    "TRANSPORTS",
    "App",
    "HookCall",
    "Mode",
    "Pump",
    "Runner",
    "Server",
    "ServerOptions",
    "make_ssl_context",
    "parse_address",
    "running_server",
    "serve",
]
