"""Messages for the user that are not errors: warnings of logger ``cryobench``, said once."""
from __future__ import annotations

import logging

log = logging.getLogger("cryobench")
_said: set = set()


def warn_once(message: str) -> None:
    """Log ``message`` as a warning of logger ``cryobench``, once per process (loading a task
    several times, as ``tune`` and ``run`` do, says it once)."""
    if message not in _said:
        _said.add(message)
        log.warning(message)
