"""Prometheus metrics (`--metrics HOST:PORT`): an `Observer` that counts into prometheus_client.

The names follow postfix_exporter's, with `smtpkit_` in front (docs/deployment.md lists them
and what to watch). One `Metrics` per server, each with its own registry, so that several
servers in one program never mix their counts.

With `--processes N`, the children are separate processes: each counts into files of
prometheus_client's multiprocess mode, in a private folder the parent makes before it forks
(`MultiprocessFolder`) and removes at exit, and the parent serves the sum of them
(`MultiProcessCollector`). The live gauges (sessions, queue, spool) are summed over the live
processes only.

This is the only module that imports prometheus_client (`pip install 'smtpkit[metrics]'`),
and only when metrics are made: importing it costs nothing, and the multiprocess folder can be
set up before prometheus_client reads its environment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final, final

from ._listen import Address

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = [
    "HOOK_BUCKETS",
    "MULTIPROCESS_ENV",
    "SIZE_BUCKETS",
    "Metrics",
    "MetricsEndpoint",
    "multiprocess_folder",
    "serve_metrics",
]

log = logging.getLogger("smtpkit")

#: Where prometheus_client's multiprocess mode keeps its files; read when it is imported.
MULTIPROCESS_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: Message sizes, in bytes: 1 KiB to 64 MiB, by fours.
SIZE_BUCKETS: Final = tuple(float(1024 * 4**n) for n in range(9))
#: Hook run times, in seconds: a policy answers in milliseconds; DNS, rspamd or a relay hop
#: in tenths; `--hook-timeout` (300 s) is the end.
HOOK_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 300.0,
)  # fmt: skip
#: Decisions under this code accept; the rest refuse.
_REFUSED: Final = 400


@final
class Metrics:
    """The server's metrics; pass it as `Server(..., observer=metrics)`, serve `registry`.

    Every report is a counter or gauge update on the caller's thread (they are thread-safe);
    label children are looked up once and kept.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._connections = Counter(
            "smtpkit_connections", "Connections admitted (given a session).", registry=r
        )
        self._refused = Counter(
            "smtpkit_connections_refused",
            "Connections turned away before a session (421: a connection limit, a shutdown).",
            ["reason"],
            registry=r,
        )
        self._active = Gauge(
            "smtpkit_sessions_active",
            "Sessions holding a connection slot now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._accepted = Counter(
            "smtpkit_messages_accepted",
            "Messages accepted at the end of data (per recipient for LMTP).",
            ["code"],
            registry=r,
        )
        self._rejected = Counter(
            "smtpkit_messages_rejected",
            "Refusals (4xx, 5xx) by a hook's decision, by stage and reply code.",
            ["stage", "code"],
            registry=r,
        )
        self._auth_failures = Counter(
            "smtpkit_auth_failures", "AUTH attempts refused (wrong password, limit).", registry=r
        )
        self._tls = Counter(
            "smtpkit_tls_connections",
            "TLS sessions begun (STARTTLS or implicit TLS), by protocol version.",
            ["version"],
            registry=r,
        )
        self._lost = Counter(
            "smtpkit_connections_lost",
            "Sessions whose client went away without QUIT, by the stage they were in.",
            ["stage"],
            registry=r,
        )
        self._closed = Counter(
            "smtpkit_disconnects", "Sessions ended, by reason.", ["reason"], registry=r
        )
        self._size = Histogram(
            "smtpkit_message_size_bytes",
            "Size of each message received, before the decision.",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self._hooks = Histogram(
            "smtpkit_hook_duration_seconds",
            "How long each hook ran, by hook.",
            ["hook"],
            buckets=HOOK_BUCKETS,
            registry=r,
        )
        self._queue = Gauge(
            "smtpkit_worker_queue_depth",
            "Plain hooks waiting for a free worker thread.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._spool = Gauge(
            "smtpkit_spool_bytes",
            "Bytes of message content in spool files on disk.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._children: dict[object, object] = {}
        self._lock = threading.Lock()

    def _child(self, metric: Counter | Histogram, *labels: str) -> object:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children[key] = metric.labels(*labels)
        return child

    # ------------------------------------------------------------------ the Observer

    def admitted(self, active: int) -> None:
        self._connections.inc()
        self._active.set(active)

    def released(self, active: int) -> None:
        self._active.set(active)

    def refused(self, reason: str) -> None:
        self._child(self._refused, reason).inc()  # type: ignore[attr-defined]

    def tls_started(self, version: str) -> None:
        self._child(self._tls, version).inc()  # type: ignore[attr-defined]

    def answered(self, stage: str, code: int) -> None:
        if code >= _REFUSED:
            self._child(self._rejected, stage, str(code)).inc()  # type: ignore[attr-defined]
            if stage == "auth":
                self._auth_failures.inc()
        elif stage == "data":
            self._child(self._accepted, str(code)).inc()  # type: ignore[attr-defined]

    def message_received(self, size: int) -> None:
        self._size.observe(size)

    def hook_finished(self, hook: str, seconds: float) -> None:
        self._child(self._hooks, hook).observe(seconds)  # type: ignore[attr-defined]

    def session_closed(self, reason: str, lost_at: str | None) -> None:
        self._child(self._closed, reason).inc()  # type: ignore[attr-defined]
        if lost_at is not None:
            self._child(self._lost, lost_at).inc()  # type: ignore[attr-defined]

    def queue_depth(self, depth: int) -> None:
        self._queue.set(depth)

    def spool_bytes(self, used: int) -> None:
        self._spool.set(used)


@final
class MetricsEndpoint:
    """The HTTP server of `/metrics` (a daemon thread); `close()` it when done."""

    def __init__(self, registry: CollectorRegistry, address: Address) -> None:
        from prometheus_client import start_http_server

        host, port = address
        self._httpd, self._thread = start_http_server(port, host, registry=registry)
        bound = self._httpd.server_address
        self.address: Address = (str(bound[0]), int(bound[1]))
        shown = f"[{self.address[0]}]" if ":" in self.address[0] else self.address[0]
        log.info("metrics on http://%s:%d/metrics", shown, self.address[1])

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def serve_metrics(source: Metrics | str, address: Address) -> MetricsEndpoint:
    """Serve `source` over HTTP on `address` (port 0: a free port, logged): a Metrics, or
    the sum of the processes counting into a `multiprocess_folder()`."""
    if isinstance(source, Metrics):
        return MetricsEndpoint(source.registry, address)
    return MetricsEndpoint(_multiprocess_registry(source), address)


@contextlib.contextmanager
def multiprocess_folder(owner: tuple[int, int] | None = None) -> Iterator[str]:
    """For `--processes`: a private folder for the children's metric files, named in the
    environment that they inherit, removed afterwards. Enter it before prometheus_client is
    imported in this process (it reads the variable then); `owner` is the (uid, gid) the
    children serve as (`--user`), who must be able to write there."""
    folder = tempfile.mkdtemp(prefix="smtpkit-metrics-")
    previous = os.environ.get(MULTIPROCESS_ENV)
    os.environ[MULTIPROCESS_ENV] = folder
    _choose_value_class()
    try:
        if owner is not None:
            os.chown(folder, *owner)
        yield folder
    finally:
        if previous is None:
            os.environ.pop(MULTIPROCESS_ENV, None)
        else:
            os.environ[MULTIPROCESS_ENV] = previous
        _choose_value_class()
        shutil.rmtree(folder, ignore_errors=True)


def _choose_value_class() -> None:
    """prometheus_client picks where values live (memory, or files) from the environment when
    it is imported; when it was imported already (a program that embeds the CLI), pick again."""
    values: Any = sys.modules.get("prometheus_client.values")
    if values is not None:
        values.ValueClass = values.get_value_class()


def _multiprocess_registry(folder: str) -> CollectorRegistry:
    """A registry that reads the metric files of every child under `folder`."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    return registry
