"""The blocking-hook scenario's smtpkit handler: a plain ``def data()`` that sleeps 20 ms.

A plain hook runs on smtpkit's worker pool (``--workers 32``), so the ideal rate is
32 / 0.020 s = 1600 messages/s whatever the transport. The harness serves it with
``--handler blocking_handler:SleepyHandler`` and puts benchmarks/ on PYTHONPATH; a class is its
own handler factory.
"""

from __future__ import annotations

import time
from typing import Any

from smtpkit.handlers import Accept, Handler

SLEEP_SECONDS = 0.020


class SleepyHandler(Handler):
    """Accepts every message after blocking the calling worker thread for 20 ms."""

    def data(self, message: Any) -> Accept:
        time.sleep(SLEEP_SECONDS)
        return Accept()
