"""One settings object for the whole appliance, from embedded defaults and ``APPLIANCE_*`` environment variables.

Every field has a default that works out of the box; an environment variable of the same name in upper case with
the ``APPLIANCE_`` prefix overrides it (``APPLIANCE_DATA_DIR=/data``, ``APPLIANCE_GPU_MEMORY_GB=8``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from appliance.errors import ConfigError

REPOSITORY_MODELS = Path(__file__).resolve().parents[1] / "models"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$")
_UNIT_SECONDS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``"90s"``, ``"3m"``, ``"1.5h"`` or a plain number of seconds.

    >>> parse_duration("3m"), parse_duration("90s"), parse_duration("1h"), parse_duration(45)
    (180.0, 90.0, 3600.0, 45.0)
    """
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise ConfigError(f"duration {text!r}: write a number with s, m or h, like 90s, 30m or 1h")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ConfigError(f"duration {text!r} must be positive")
    return seconds


@dataclass(frozen=True)
class Settings:
    """Where the appliance keeps its state and how much it may use.

    Attributes
    ----------
    data_dir : Path
        Root of everything the appliance writes: the SQLite store, run folders with checkpoints, models.
    models_dir : Path
        The shipped meta-model, meta-base and report (``models/`` of the repository).
    default_budget : float
        Training budget per labelled set, in seconds, when none is given.
    top_n : int
        Configurations from the meta-model's ranking that enter successive halving.
    gpu_memory_gb : float
        GPU memory the training process may use; on a larger card it caps itself to this.
    seed : int
        Default seed of splits, weights and sampling.
    """

    data_dir: Path = Path("appliance-data")
    models_dir: Path = REPOSITORY_MODELS
    default_budget: float = 1800.0
    top_n: int = 50
    gpu_memory_gb: float = 8.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.top_n < 1:
            raise ConfigError(f"top_n must be at least 1, got {self.top_n}")
        if self.gpu_memory_gb <= 0:
            raise ConfigError(f"gpu_memory_gb must be positive, got {self.gpu_memory_gb}")
        if self.default_budget <= 0:
            raise ConfigError(f"default_budget must be positive, got {self.default_budget}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Defaults, then ``APPLIANCE_<FIELD>`` variables, then ``overrides`` (None values are ignored)."""
        environ = os.environ if environ is None else environ
        values = {}
        for field in fields(cls):
            raw = environ.get(f"APPLIANCE_{field.name.upper()}")
            if raw is not None and raw != "":
                values[field.name] = _convert(field.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_values(self, **values) -> Settings:
        return replace(self, **values)

    @property
    def store_path(self) -> Path:
        return self.data_dir / "appliance.sqlite"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"


def _convert(name: str, raw: str):
    try:
        if name in ("data_dir", "models_dir"):
            return Path(raw)
        if name == "default_budget":
            return parse_duration(raw)
        if name in ("top_n", "seed"):
            return int(raw)
        return float(raw)
    except ValueError as error:
        raise ConfigError(f"APPLIANCE_{name.upper()}={raw!r}: {error}") from None
