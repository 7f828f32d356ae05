"""A host whose clock is off, for the clock-skew tests: put this folder first on PYTHONPATH
and set ``TEST_CLOCK_SHIFT_S`` (seconds, may be negative); ``time.time``, ``gmtime`` and
``localtime`` are then that far off (the daemons read the time through them). ``time.monotonic``
is not: a host's wrong wall clock does not change how fast time passes."""

import os
import time

_SHIFT = float(os.environ.get("TEST_CLOCK_SHIFT_S") or 0)
if _SHIFT:
    _real_time, _real_gmtime, _real_localtime = time.time, time.gmtime, time.localtime

    def _time() -> float:
        return _real_time() + _SHIFT

    time.time = _time
    time.gmtime = lambda secs=None: _real_gmtime(_time() if secs is None else secs)
    time.localtime = lambda secs=None: _real_localtime(_time() if secs is None else secs)
