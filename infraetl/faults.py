"""Deliberate crash points for the crash suite (inert unless the test variable is set).

``INFRAETL_CRASH_AT=after_commit:5`` makes the process SIGKILL itself the
5th time it passes ``crash_point("after_commit")``: a kill -9 at a precise
place (between commit and ACK, between spool and send) that a signal from
outside could only hit by luck. Points: ``after_commit`` (committed, not
yet synced), ``after_sync`` (synced, ACKs not sent) and ``before_render``
(consumer: the run is complete in the database, the page and the END's ACK
are not done), ``after_spool`` (producer).
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("INFRAETL_CRASH_AT", "")
_POINT, _, _COUNT = _SPEC.partition(":")
_LEFT = int(_COUNT) if _COUNT.isdigit() else 1
_hits = 0


def crash_point(name: str) -> None:
    """SIGKILL this process here if the crash suite asked for it."""
    global _hits
    if _POINT != name:
        return
    _hits += 1
    if _hits >= _LEFT:
        os.kill(os.getpid(), signal.SIGKILL)
