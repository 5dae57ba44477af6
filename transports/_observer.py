"""What a server reports about its work, for metrics: one small interface.

The lifecycle (admission), the pump (decisions, hooks, TLS, ends of sessions), the worker pool
(its queue) and the spool (its disk use) each hold an `Observer | None` and call it as things
happen. None, the default, reports nothing and costs one `is not None` test per report. The
one implementation is `smtpkit.transports.Metrics` (Prometheus); an application may pass its
own to `Server(..., observer=...)`.

Calls come from the event loop or I/O thread, and from worker threads (the pool's queue), so
an observer must be thread-safe, and quick: it runs inline with serving.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Observer"]


class Observer(Protocol):
    """Receives what the server does. Labels are the project's own names: a `stage` of a
    decision is its hook's name (`welcome`, `ehlo`, `auth`, `mail`, `rcpt`, `data`); the stage
    of a lost connection is the engine's `State` value, lower case (`mail`, `data`, ...)."""

    def admitted(self, active: int) -> None:
        """A connection got a slot; `active` slots are in use now."""

    def released(self, active: int) -> None:
        """A connection's slot was freed; `active` are left."""

    def refused(self, reason: str) -> None:
        """A connection was turned away before its session began (`Refusal` value)."""

    def tls_started(self, version: str) -> None:
        """A TLS session began (STARTTLS or implicit TLS), in `version` ("TLSv1.3")."""

    def answered(self, stage: str, code: int) -> None:
        """A hook's decision (or the server's own 451/452 in its place) got reply `code`."""

    def message_received(self, size: int) -> None:
        """A whole message of `size` octets arrived, before it was decided on."""

    def hook_finished(self, hook: str, seconds: float) -> None:
        """A hook that ran took `seconds` (until it returned, failed or was given up on)."""

    def session_closed(self, reason: str, lost_at: str | None) -> None:
        """A session ended for `reason` (its close reason); `lost_at` is the stage where the
        peer went away without QUIT (EOF or reset), None otherwise."""

    def queue_depth(self, depth: int) -> None:
        """Hooks waiting for a free worker thread: `depth` now."""

    def spool_bytes(self, used: int) -> None:
        """Bytes of spool files on disk now."""
