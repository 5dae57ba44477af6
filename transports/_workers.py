"""The worker pool for plain (blocking) hooks, shared by every transport.

Why not `concurrent.futures.ThreadPoolExecutor`: its threads are joined at interpreter exit, so
one hook stuck forever kept SIGTERM from ever ending the process, and a stuck thread can't be
replaced. Here every thread is a daemon; a hook past its deadline is *abandoned*: its thread
stops counting as a worker and another takes its place, up to `workers` abandoned threads in
all. Past that, `submit()` refuses (the caller answers 451 at once) until one comes back, so
the pool never grows without bound.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Generic, TypeVar, final

if TYPE_CHECKING:
    from ._observer import Observer

__all__ = ["Job", "WorkerPool"]

log = logging.getLogger("smtpkit")

T = TypeVar("T")

_QUEUED: Final = 0
_RUNNING: Final = 1
_FINISHED: Final = 2
_DROPPED: Final = 3


@final
class Job(Generic[T]):
    """One call on the pool. `done(ok, value)` runs on the worker thread when it finishes (not
    when it was abandoned or dropped first): `value` is the result, or the exception raised."""

    __slots__ = ("args", "done", "fn", "state")

    def __init__(
        self,
        fn: Callable[..., T],
        args: tuple[object, ...],
        done: Callable[[bool, T | BaseException], None],
    ) -> None:
        self.fn = fn
        self.args = args
        self.done = done
        self.state = _QUEUED


@final
class WorkerPool:
    """Up to `workers` daemon threads, started on demand."""

    def __init__(
        self, workers: int, name: str = "smtpkit-worker", observer: Observer | None = None
    ) -> None:
        self.workers = workers
        self.name = name
        #: Told the queue's depth after each change (metrics), when set.
        self.observer = observer
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[Job[object]] = collections.deque()
        self._threads = 0  # live workers, abandoned ones not counted
        self._idle = 0
        self._serial = 0
        self._closed = False
        #: Threads still running a hook that was given up on.
        self.abandoned = 0

    def submit(
        self,
        fn: Callable[..., T],
        args: tuple[object, ...],
        done: Callable[[bool, T | BaseException], None],
    ) -> Job[T] | None:
        """Queue `fn(*args)`; None when `workers` threads are abandoned already (or the pool
        is shut down): the caller must answer without the hook."""
        job: Job[T] = Job(fn, args, done)
        with self._cond:
            if self._closed or self.abandoned >= self.workers:
                return None
            self._queue.append(job)  # type: ignore[arg-type]
            self._wake_or_spawn()
            self._report()
        return job

    def abandon(self, job: Job[T]) -> None:
        """Give up on `job`: dropped if still queued; if running, its thread is left to
        finish alone (its result is discarded) and a new worker may take its place."""
        with self._cond:
            if job.state == _QUEUED:
                job.state = _DROPPED
                self._queue.remove(job)  # type: ignore[arg-type]
                self._report()
                return
            if job.state != _RUNNING:
                return
            job.state = _DROPPED
            self.abandoned += 1
            self._threads -= 1
            if self._queue:
                self._wake_or_spawn()
            count = self.abandoned
        log.warning(
            "hook %s() is stuck; its worker thread is abandoned (%d of at most %d)",
            getattr(job.fn, "__name__", "?"),
            count,
            self.workers,
        )

    def shutdown(self) -> None:
        """Let idle workers exit. Running hooks are not waited for: the threads are daemons."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()

    def _report(self) -> None:
        # Called with the lock held, so depths are reported in order.
        if self.observer is not None:
            self.observer.queue_depth(len(self._queue))

    def _wake_or_spawn(self) -> None:
        # Called with the lock held.
        if self._idle:
            self._cond.notify()
        if len(self._queue) > self._idle and self._threads < self.workers:
            self._threads += 1
            self._serial += 1
            thread = threading.Thread(
                target=self._work, name=f"{self.name}-{self._serial}", daemon=True
            )
            thread.start()

    def _work(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._queue and not self._closed:
                    self._idle += 1
                    cond.wait()
                    self._idle -= 1
                if self._closed:
                    self._threads -= 1
                    return
                job = self._queue.popleft()
                job.state = _RUNNING
                self._report()
            try:
                value: object = job.fn(*job.args)
                ok = True
            except BaseException as exc:  # a hook's SystemExit is the hook's failure
                value = exc
                ok = False
            with cond:
                abandoned = job.state == _DROPPED
                job.state = _FINISHED
                if abandoned:
                    self.abandoned -= 1
            if abandoned:
                log.info("an abandoned hook %s() returned", getattr(job.fn, "__name__", "?"))
                return  # its place was taken
            try:
                job.done(ok, value)
            except Exception:  # reporting must never kill a worker
                log.exception("reporting a hook's result failed")
