"""One settings object for the whole appliance: embedded defaults, an optional TOML file, ``APPLIANCE_*`` variables.

Precedence, lowest first: the defaults below, the TOML file (``APPLIANCE_CONFIG`` or ``--config``; flat keys named
like the fields, durations as ``"30m"``), environment variables named like the fields in upper case with the
``APPLIANCE_`` prefix (``APPLIANCE_DATA_DIR=/data``, ``APPLIANCE_DEFAULT_BUDGET=30m``), then explicit overrides
(command-line options). This module is the only reader of the environment, and it reads it only when asked.

Folders, all under ``data_dir`` unless set::

    inbox/labelled/<set>/   labelled sets dropped by technicians (never modified, except REJECTED.txt)
    inbox/images/<project>/ images saved by the microscope software (never modified)
    results/<project>/      masks, overlays and measurements.csv
    sets/                   managed copies of accepted labelled sets (content-addressed)
    runs/, models/          training runs and exported models
    cache/tensorrt/         TensorRT engines of the exported models (only where TensorRT is installed)
    appliance.sqlite        the store
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from appliance.errors import ConfigError

REPOSITORY_MODELS = Path(__file__).resolve().parents[1] / "models"
SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
"""The public sets beside a development checkout (``../shared/datasets``): benchmarks and tests, never the service."""
CONFIG_VARIABLE = "APPLIANCE_CONFIG"
HIDDEN = "********"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$")
_UNIT_SECONDS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``"90s"``, ``"3m"``, ``"1.5h"`` or a plain number of seconds.

    >>> parse_duration("3m"), parse_duration("90s"), parse_duration("1h"), parse_duration(45)
    (180.0, 90.0, 3600.0, 45.0)
    """
    if isinstance(text, bool):
        raise ConfigError(f"duration {text!r}: write a number with s, m or h, like 90s, 30m or 1h")
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


def parse_bool(text: str | bool) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case).

    >>> parse_bool("Yes"), parse_bool("0"), parse_bool(True)
    (True, False, True)
    """
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{text!r} is not a yes/no value; write true or false")


KEEP_CHECKPOINTS = ("winner", "all", "none")
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Settings:
    """Where the appliance keeps its state, how it watches its folders and how much it may use.

    Attributes
    ----------
    data_dir : Path
        Root of everything the appliance writes: the SQLite store, inbox, results, run folders, models.
    metamodel_dir : Path
        The meta-model that ranks configurations, with its meta-base and report (the repository's ``models/``). The
        models the appliance trains go to :attr:`trained_models_dir`.
    default_budget : float
        Training budget per labelled set, in seconds, when its ``dataset.yaml`` gives no ``budget_minutes``.
    top_n : int
        The most configurations that race in successive halving (the paper's 50). The budget-aware race takes
        fewer when the budget cannot give each of them ``race_floor_steps`` optimiser steps in its first slice.
    race_floor_steps : int
        Optimiser steps every trial must get in its first slice (see :mod:`appliance.automl.race` for the data).
    race_min_winner_share : float
        Fraction of the budget the winner of a race must train for at least (the steps' budgets grow to give it).
    gpu_memory_gb : float
        GPU memory the training process may use; on a larger card it caps itself to this.
    seed : int
        Default seed of splits, weights and sampling.
    inbox_dir, results_dir : Path or None
        The watched inbox (``labelled/`` and ``images/`` below it) and the results folder; default under ``data_dir``.
    quiet_period : float
        Seconds a labelled set must stay unchanged to count as complete when it has no ``READY`` file.
    stable_seconds : float
        Seconds an image file's size and modification time must stay unchanged before it is read.
    polling : bool
        Watch by polling instead of inotify (needed for SMB/NFS shares, which deliver no events).
    polling_interval : float
        Seconds between two polls of the watched folders when ``polling`` is on.
    rescan_interval : float
        Seconds between two full rescans of the inbox (events can be lost; files can arrive while the service is down).
    page_address, page_port, page_password : str, int, str
        Where the status page listens and the password it asks for (empty: none). The password is never printed.
    disk_reserve_gb : float
        Free space to keep on the data disk: below it, new training waits; inference goes on while space allows.
    max_attempts : int
        Times a job is tried (crashes and interruptions included) before it is marked failed.
    lease_seconds : float
        How long a claimed job stays leased without a heartbeat before another worker may take it over.
    min_object_px : int
        Segmented components smaller than this many pixels are not counted as objects in the measurements
        (specks of a few misclassified pixels); they still count in a class's pixel fraction. 0 counts all.
    quality_gate : bool
        Activate a newly trained model only when it beats Otsu thresholding on its test split (mean IoU with the
        background). A model that does not is registered but not activated; it can be activated by hand.
    keep_checkpoints : str
        Which training checkpoints (``.pt``) stay after a run: ``winner`` (each step deletes the checkpoints of the
        trials it drops; the winner's stays), ``all`` (every trial's last checkpoint stays) or ``none`` (the
        winner's goes too once its ONNX export is registered). The exported model folder always stays.
    executor : str
        Where halving trains its trials: ``local`` (this process, one trial after another) or ``ray`` (one trial per
        device of a Ray cluster at once; docs/cluster.md).
    ray_address : str
        The Ray cluster's head (``host:port``) when ``executor`` is ``ray``; empty: the appliance starts a Ray
        instance on this machine and trains one trial per GPU of it.
    ray_cpus_per_trial : int
        On a cluster without GPUs, the CPU cores each trial trains with.
    """

    data_dir: Path = Path("appliance-data")
    metamodel_dir: Path = REPOSITORY_MODELS
    default_budget: float = 1800.0
    top_n: int = 50
    race_floor_steps: int = 60
    race_min_winner_share: float = 0.6
    gpu_memory_gb: float = 8.0
    seed: int = 0
    inbox_dir: Path | None = None
    results_dir: Path | None = None
    quiet_period: float = 60.0
    stable_seconds: float = 2.0
    polling: bool = False
    polling_interval: float = 1.0
    rescan_interval: float = 60.0
    page_address: str = "127.0.0.1"
    page_port: int = 8501
    page_password: str = field(default="", repr=False)
    disk_reserve_gb: float = 5.0
    max_attempts: int = 3
    lease_seconds: float = 60.0
    min_object_px: int = 10
    quality_gate: bool = True
    keep_checkpoints: str = "winner"
    executor: str = "local"
    ray_address: str = ""
    ray_cpus_per_trial: int = 1

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.ray_cpus_per_trial < 1:
            raise ConfigError(f"ray_cpus_per_trial must be at least 1, got {self.ray_cpus_per_trial}")
        if self.top_n < 1:
            raise ConfigError(f"top_n must be at least 1, got {self.top_n}")
        if self.race_floor_steps < 1:
            raise ConfigError(f"race_floor_steps must be at least 1, got {self.race_floor_steps}")
        if not 0 < self.race_min_winner_share < 1:
            raise ConfigError(f"race_min_winner_share must be between 0 and 1, got {self.race_min_winner_share}")
        if self.keep_checkpoints not in KEEP_CHECKPOINTS:
            raise ConfigError(
                f"keep_checkpoints must be one of {', '.join(KEEP_CHECKPOINTS)}, got {self.keep_checkpoints!r}"
            )
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not 0 < self.page_port < 65536:
            raise ConfigError(f"page_port must be a TCP port 1-65535, got {self.page_port}")
        for name in ("gpu_memory_gb", "default_budget", "stable_seconds", "polling_interval", "rescan_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("quiet_period", "disk_reserve_gb", "lease_seconds", "min_object_px"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, config_file: str | Path | None = None, **overrides
    ) -> Settings:
        """Defaults, then the TOML file (``config_file`` or ``APPLIANCE_CONFIG``), then ``APPLIANCE_<FIELD>``
        variables, then ``overrides`` (None values are ignored)."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        config_file = config_file or environ.get(CONFIG_VARIABLE) or None
        if config_file:
            values.update(read_config_file(config_file))
        for old, new in RENAMED.items():
            if environ.get(f"APPLIANCE_{old.upper()}"):
                raise ConfigError(f"APPLIANCE_{old.upper()} is now called APPLIANCE_{new.upper()}; rename the variable")
        for item in fields(cls):
            variable = f"APPLIANCE_{item.name.upper()}"
            raw = environ.get(variable)
            if raw is not None and raw != "":
                values[item.name] = _convert(item.name, raw, source=variable)
        for name, value in overrides.items():
            if value is not None:
                values[name] = _convert(name, value, source=f"option {name}")
        return cls(**values)

    def with_values(self, **values) -> Settings:
        return replace(self, **values)

    def to_dict(self, *, hide_password: bool = True) -> dict:
        """Every field as plain JSON/TOML values; the page password replaced by ``********`` unless asked."""
        values = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "page_password" and hide_password and value:
                value = HIDDEN
            values[item.name] = str(value) if isinstance(value, Path) else value
        values.update({k: str(getattr(self, k)) for k in ("inbox", "labelled_inbox", "images_inbox", "results")})
        return values

    def to_toml(self) -> str:
        """The effective settings as a TOML file that :func:`read_config_file` reads back (password hidden);
        folders derived from others are listed as comments."""
        lines = []
        derived = ("inbox", "labelled_inbox", "images_inbox", "results")
        for name, value in self.to_dict().items():
            if name in derived:
                lines.append(f"# {name}: {value}")
            elif value is None:
                lines.append(f"# {name} = (under data_dir)")
            elif isinstance(value, bool):
                lines.append(f"{name} = {str(value).lower()}")
            elif isinstance(value, int | float):
                lines.append(f"{name} = {value!r}")
            else:
                lines.append(f"{name} = {json.dumps(str(value))}")
        return "\n".join(lines)

    def to_environment(self) -> dict[str, str | None]:
        """Every setting as its ``APPLIANCE_<FIELD>`` variable (None: not set), the password included: how the
        service hands its settings to its children (:mod:`appliance.service.children`); :meth:`from_env` reads
        them back."""
        names = {item.name for item in fields(self)}
        return {
            f"APPLIANCE_{name.upper()}": None if value is None else str(value)
            for name, value in self.to_dict(hide_password=False).items()
            if name in names
        }

    @classmethod
    def from_dict(cls, values: Mapping) -> Settings:
        """The inverse of ``to_dict(hide_password=False)`` (derived folders are ignored)."""
        names = {item.name for item in fields(cls)}
        return cls(**{k: _convert(k, v, source=k) for k, v in values.items() if k in names and v is not None})

    @property
    def store_path(self) -> Path:
        return self.data_dir / "appliance.sqlite"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def trained_models_dir(self) -> Path:
        """The exported models of finished runs, one folder per model id (``model.onnx`` + ``model.json``)."""
        return self.data_dir / "models"

    @property
    def engine_cache_dir(self) -> Path:
        """TensorRT engines of the models served, built on a model's first session (see ``pipeline/predictor.py``)."""
        return self.data_dir / "cache" / "tensorrt"

    @property
    def inbox(self) -> Path:
        return self.inbox_dir if self.inbox_dir is not None else self.data_dir / "inbox"

    @property
    def labelled_inbox(self) -> Path:
        return self.inbox / "labelled"

    @property
    def images_inbox(self) -> Path:
        return self.inbox / "images"

    @property
    def results(self) -> Path:
        return self.results_dir if self.results_dir is not None else self.data_dir / "results"

    @property
    def sets_dir(self) -> Path:
        """Managed copies of accepted labelled sets."""
        return self.data_dir / "sets"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"


def read_config_file(path: str | Path) -> dict:
    """The settings in a TOML file: flat keys named like the :class:`Settings` fields."""
    path = Path(path)
    try:
        content = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"settings file {path} not found; fix {CONFIG_VARIABLE} or --config") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"settings file {path} is not valid TOML: {error}") from None
    names = [item.name for item in fields(Settings)]
    for old, new in RENAMED.items():
        if old in content:
            raise ConfigError(f"settings file {path}: {old} is now called {new}; rename the key")
    unknown = sorted(set(content) - set(names))
    if unknown:
        raise ConfigError(f"settings file {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(names)}")
    return {name: _convert(name, value, source=f"{path}: {name}") for name, value in content.items()}


_PATHS = ("data_dir", "metamodel_dir", "inbox_dir", "results_dir")
RENAMED = {"models_dir": "metamodel_dir"}
"""Settings that were renamed: the old name is refused with the new one, so a setting is never silently ignored."""
_DURATIONS = (
    "default_budget",
    "quiet_period",
    "stable_seconds",
    "polling_interval",
    "rescan_interval",
    "lease_seconds",
)
_INTS = ("top_n", "race_floor_steps", "seed", "page_port", "max_attempts", "min_object_px", "ray_cpus_per_trial")
_FLOATS = ("gpu_memory_gb", "disk_reserve_gb", "race_min_winner_share")
_STRINGS = ("page_address", "page_password", "keep_checkpoints", "executor", "ray_address")
_BOOLS = ("polling", "quality_gate")


def _convert(name: str, raw, *, source: str):
    """``raw`` (text from a variable, or a TOML/Python value) as the type of field ``name``."""
    try:
        if name in _PATHS:
            return Path(raw)
        if name in _DURATIONS:
            if name == "quiet_period" and str(raw).strip() in ("0", "0s", "0.0"):  # 0.0: to_environment's
                return 0.0
            return parse_duration(raw)
        if name in _BOOLS:
            return parse_bool(raw)
        if name in _INTS:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(f"expected a whole number, got {raw!r}")
            return int(raw)
        if name in _FLOATS:
            if isinstance(raw, bool):
                raise ValueError(f"expected a number, got {raw!r}")
            return float(raw)
        if name in _STRINGS:
            return str(raw)
    except (ValueError, TypeError, ConfigError) as error:
        raise ConfigError(f"{source}={raw!r}: {error}") from None
    names = ", ".join(item.name for item in fields(Settings))
    raise ConfigError(f"{source}: unknown setting {name!r}; valid settings: {names}")
