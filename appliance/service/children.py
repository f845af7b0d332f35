"""How the service starts its child processes (the training worker, the status page): each dies with the service,
and each gets the service's settings one way, as ``APPLIANCE_*`` variables (:meth:`Settings.to_environment`)."""

from __future__ import annotations

import ctypes
import os
import signal

from appliance.settings import CONFIG_VARIABLE, Settings

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` of a child: the kernel kills it when the service dies (runs between fork and exec)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def child_environment(settings: Settings) -> dict[str, str]:
    """This process's environment with every setting replaced by the service's effective value (its config file
    already applied, so the child does not read it again); other variables pass through."""
    environment = {name: value for name, value in os.environ.items() if name != CONFIG_VARIABLE}
    for name, value in settings.to_environment().items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return environment
