"""Logging that never blocks the event loop or the I/O thread.

A server's stderr may be a pipe nobody reads, or a slow terminal: a plain StreamHandler then
blocks whoever logs, and the event loop logs on every connection. So the loggers only put
records on a queue, bounded at `QUEUE_SIZE`; one daemon thread writes them out. When the queue
is full the record is dropped and counted; the writer reports "N log lines dropped" with the
next line it writes, and when the channel closes.

Putting a record takes no lock: a signal handler runs in the main thread between two bytecodes,
possibly in the middle of a `put()`, and a handler that logs (SIGTERM: "shutting down") would
wait forever for a lock its own thread holds. So the queue is a `queue.SimpleQueue`, whose
`put()` is reentrant, and the drop count is kept without a lock.
"""

from __future__ import annotations

import enum
import itertools
import json
import logging
import queue
import sys
import threading
from collections.abc import Mapping
from typing import Final, TextIO, final

__all__ = [
    "FIELDS",
    "QUEUE_SIZE",
    "JsonFormatter",
    "LogChannel",
    "LogFormat",
    "fields",
    "log_to_stderr",
]

#: Records waiting for the writer before new ones are dropped.
QUEUE_SIZE: Final = 10_000
#: How long `close()` waits for the writer to flush the queue.
CLOSE_WAIT: Final = 1.0
_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The LogRecord attribute holding a line's fields (see `fields()`).
FIELDS: Final = "smtpkit_fields"


def fields(values: Mapping[str, object]) -> dict[str, Mapping[str, object]]:
    """The `extra=` of a log call whose line has fields (`from=<...> nrcpt=1`): a JSON line
    carries each as a key of its own, next to the message that shows them as text."""
    return {FIELDS: values}


@final
class JsonFormatter(logging.Formatter):
    """One JSON object per line (`time`, `level`, `logger`, `message`, the line's fields as
    keys of their own, and `traceback` when there is one), for log collectors. Client values
    are already escaped in the message and the fields; JSON quoting keeps any line break
    inside the string."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra: Mapping[str, object] | None = getattr(record, FIELDS, None)
        if extra:
            entry.update((key, value) for key, value in extra.items() if key not in entry)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class LogFormat(enum.Enum):
    """`--log-format`: how each log line is written."""

    TEXT = "text"
    JSON = "json"

    def formatter(self) -> logging.Formatter:
        if self is LogFormat.JSON:
            return JsonFormatter()
        return logging.Formatter(_TEXT_FORMAT)


@final
class _DroppingHandler(logging.Handler):
    """Formats on the caller's thread (records hold no references then) and queues without
    ever waiting."""

    def __init__(self, channel: LogChannel) -> None:
        super().__init__()
        self._channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._channel.put(line)


@final
class LogChannel:
    """A bounded queue of formatted lines and the thread that writes them to `stream`."""

    def __init__(self, stream: TextIO, size: int = QUEUE_SIZE) -> None:
        self.stream = stream
        self._size = size
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._drops = itertools.count(1)
        self._dropped = 0  # lines dropped so far
        self._reported = 0  # of which the writer has reported
        self._attached: list[tuple[logging.Logger, logging.Handler]] = []
        self._thread = threading.Thread(target=self._write, name="smtpkit-log", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Lines dropped because the queue was full."""
        return self._dropped

    def put(self, line: str) -> None:
        """Queue `line`; drop it (counted) when the queue is full. Never blocks, takes no lock
        (see the module docstring)."""
        if self._queue.qsize() >= self._size:
            self._dropped = next(self._drops)
            return
        self._queue.put(line)

    def attach(self, logger: logging.Logger, formatter: logging.Formatter | None = None) -> None:
        """Feed `logger`'s records to this channel (until `close()`)."""
        handler = _DroppingHandler(self)
        handler.setFormatter(formatter or LogFormat.TEXT.formatter())
        logger.addHandler(handler)
        self._attached.append((logger, handler))

    def close(self) -> None:
        """Detach from the loggers, flush what is queued (for up to `CLOSE_WAIT` seconds) and
        stop the writer."""
        for logger, handler in self._attached:
            logger.removeHandler(handler)
        self._attached.clear()
        self._queue.put(None)
        self._thread.join(CLOSE_WAIT)  # a stuck stream: the daemon writer is left behind

    def _write(self) -> None:
        while True:
            line = self._queue.get()
            self._report_drops()
            if line is None:
                return
            self._emit(line)

    def _report_drops(self) -> None:
        dropped = self._dropped
        new = dropped - self._reported
        self._reported = dropped
        if new:
            self._emit(f"smtpkit: {new} log lines dropped (the log output is too slow)")

    def _emit(self, line: str) -> None:
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed stream: nothing to log to
            pass


def log_to_stderr(
    level: int | str = logging.INFO,
    formatter: logging.Formatter | None = None,
    logger: logging.Logger | None = None,
) -> LogChannel:
    """Send `logger` (default: the `smtpkit` logger) to stderr through a `LogChannel`, so
    that a full or slow stderr never stalls serving. `close()` the channel at exit."""
    channel = LogChannel(sys.stderr)
    target = logger or logging.getLogger("smtpkit")
    channel.attach(target, formatter)
    target.setLevel(level)
    return channel
