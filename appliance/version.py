"""Which code produced a result: the package version plus the git commit when run from a checkout."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from appliance import __version__


@functools.cache
def code_version() -> str:
    """``0.1.0+<short commit>`` in a checkout, else the package version."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__
