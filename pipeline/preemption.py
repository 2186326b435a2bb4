"""Graceful stop on SIGTERM / SIGINT, what Slurm, Kubernetes and spot instances send before a kill.

The handler only records the signal. The trainer shares the flag with all ranks once per step (in the
collective it runs anyway), so every rank stops after the same step, writes a checkpoint and exits 0.
If that has not happened within `grace_s` seconds of the signal (say, a rank is stuck in a collective
because a peer died), a watchdog ends the process with 128 + signal number; the last complete
checkpoint is still `latest`. DeepSpeed's launcher forwards SIGTERM/SIGINT to its workers and kills
them 30 s later, so under it keep a checkpoint's duration below that.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time


class StopRequest:
    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self.signal: int | None = None
        self.received_at = 0.0
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            return  # repeated signals (a launcher forwarding one more) change nothing
        self.signal, self.received_at = signum, time.time()
        watchdog = threading.Timer(self.grace_s, self._expire)
        watchdog.daemon = True
        watchdog.start()

    def _expire(self) -> None:
        print(f"[preemption] no checkpoint within train.preemption_grace_s={self.grace_s} s of "
              f"{signal.Signals(self.signal).name}; exiting, the last complete checkpoint stays latest",
              file=sys.stderr, flush=True)
        os._exit(128 + self.signal)

    def close(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
