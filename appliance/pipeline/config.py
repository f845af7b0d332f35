"""`PipelineConfig`: one segmentation pipeline configuration, as data.

The seven searchable hyperparameters (paper Table 1) plus the fixed defaults (DESIGN §3). A
configuration has a stable short id (a hash of its canonical form) and a YAML form with the keys
``patch_size, batch_size, learning_rate, encoder, flip, brightness_blur, grid_distortion``. Every
part of the appliance (trainer, meta-model, halving, export, page) uses this one object.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from appliance.errors import ConfigError

PATCH_SIZES = (64, 128, 256)
BATCH_SIZES = (4, 8, 16, 32)
LEARNING_RATES = (0.0005, 0.001, 0.01)
ENCODERS = ("resnet18", "resnet50")
AUGMENTATION_PROBABILITIES = (0.0, 0.5)

SEARCH_SPACE: dict[str, tuple] = {
    "patch_size": PATCH_SIZES,
    "batch_size": BATCH_SIZES,
    "learning_rate": LEARNING_RATES,
    "encoder": ENCODERS,
    "flip": AUGMENTATION_PROBABILITIES,
    "brightness_blur": AUGMENTATION_PROBABILITIES,
    "grid_distortion": AUGMENTATION_PROBABILITIES,
}

# Fixed defaults (not searched): documented here so that they are saved with every run.
ARCHITECTURE = "unet"
OPTIMIZER = "adam"
LOSS = "focal"
FOCAL_GAMMA = 2.0
ENCODER_WEIGHTS = None  # random init: the thesis found no gain from pre-training, and nothing is downloaded


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline configuration. Construct with keywords; values are validated on creation.

    Examples
    --------
    >>> config = PipelineConfig(patch_size=128, batch_size=16, learning_rate=0.001, flip=0.5)
    >>> config.id
    'c-f10d9fea8e'
    >>> PipelineConfig.from_yaml(config.to_yaml()) == config
    True
    """

    patch_size: int = 128
    batch_size: int = 16
    learning_rate: float = 0.001
    encoder: str = "resnet18"
    flip: float = 0.0
    brightness_blur: float = 0.0
    grid_distortion: float = 0.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            allowed = SEARCH_SPACE[field.name]
            if isinstance(value, bool) or value not in allowed:
                raise ConfigError(
                    f"{field.name} = {value!r} is not allowed; choose one of {', '.join(repr(a) for a in allowed)}"
                )
            if field.name in ("learning_rate", "flip", "brightness_blur", "grid_distortion"):
                object.__setattr__(self, field.name, float(value))
            if field.name in ("patch_size", "batch_size"):
                object.__setattr__(self, field.name, int(value))

    @property
    def id(self) -> str:
        """Stable short id: ``c-`` + the first 10 hex digits of the SHA-256 of :meth:`canonical`."""
        return "c-" + hashlib.sha256(self.canonical().encode()).hexdigest()[:10]

    def canonical(self) -> str:
        """Canonical JSON form (sorted keys, normalised number types) that the id hashes."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PipelineConfig:
        if not isinstance(values, dict):
            raise ConfigError(f"a pipeline configuration must be a mapping, got {type(values).__name__}")
        unknown = sorted(set(values) - set(SEARCH_SPACE))
        if unknown:
            raise ConfigError(
                f"unknown configuration key(s) {', '.join(unknown)}; valid keys are {', '.join(SEARCH_SPACE)}"
            )
        return cls(**values)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> PipelineConfig:
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration is not valid YAML: {exc}") from exc
        return cls.from_dict(values)

    @classmethod
    def load(cls, path: str | Path) -> PipelineConfig:
        path = Path(path)
        try:
            return cls.from_yaml(path.read_text())
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def fixed_defaults(self) -> dict[str, Any]:
        """The non-searched settings this configuration trains with (saved beside every model)."""
        return {
            "architecture": ARCHITECTURE,
            "optimizer": OPTIMIZER,
            "loss": LOSS,
            "focal_gamma": FOCAL_GAMMA,
            "encoder_weights": ENCODER_WEIGHTS,
            "patch_stride": self.patch_size // 2,
        }


PAPER_DEFAULT = PipelineConfig(patch_size=128, batch_size=16, learning_rate=0.001, encoder="resnet18", flip=0.5)
"""The paper's hand-picked default configuration (batch 16, patch 128, LR 0.001, flip)."""
