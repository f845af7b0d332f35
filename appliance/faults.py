"""Fault-injection points for the crash tests (``tests/faults/``): inert unless ``APPLIANCE_FAULTS`` is set.

``APPLIANCE_FAULTS`` lists stage names (``ranked,halving-step-0,tested,…``) and ``APPLIANCE_FAULT_LOG`` names a file
recording those that already fired. The first process to reach a listed stage that has not fired yet records it and
SIGKILLs its whole process group, as a power cut or ``kill -9`` of the service would; the restarted service goes on
to the next one. Nothing is read or written when the variable is absent.
"""

from __future__ import annotations

import os
import signal

FAULTS_VARIABLE = "APPLIANCE_FAULTS"
FAULT_LOG_VARIABLE = "APPLIANCE_FAULT_LOG"


def fault_point(stage: str) -> None:
    """Die here (with the whole service) if the crash tests asked for it and this stage has not fired yet."""
    wanted = os.environ.get(FAULTS_VARIABLE)
    if not wanted or stage not in wanted.split(","):
        return
    log = os.environ[FAULT_LOG_VARIABLE]
    fired = set(open(log).read().split()) if os.path.exists(log) else set()
    if stage in fired:
        return
    with open(log, "a") as handle:
        handle.write(f"{stage}\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.killpg(os.getpgid(0), signal.SIGKILL)
