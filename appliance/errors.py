"""Named errors of the appliance, in one module.

Every error says which thing is wrong, what the value was, what the rule is and what to do.
The edges (CLI, page, REJECTED.txt, log) turn them into messages; the library only raises them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MESSAGE_LIMIT = 2000  # characters of one message stored, logged or shown (a hostile file can make any text huge)


def readable(text: object, limit: int | None = MESSAGE_LIMIT) -> str:
    """``text`` safe to store, log and show: bytes of a file name that are not UTF-8 written as escapes
    (``caf\\xe9.png``), and at most ``limit`` characters, saying how many were left out."""
    text = str(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape")
        text = raw.decode("utf-8", "backslashreplace")
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}… ({len(text) - limit} more characters left out)"
    return text


def utf8_problem(name: str) -> str | None:
    """Why a file name is not valid UTF-8 text (a name written by a system with another encoding), or None."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"the name '{readable(name)}' is not valid UTF-8 text (it was written with another character encoding)"
    return None


class ApplianceError(Exception):
    """Base class of every error the appliance raises on purpose."""


class ConfigError(ApplianceError, ValueError):
    """A pipeline configuration value is outside its allowed values."""


class ImageReadError(ApplianceError):
    """An image or mask file cannot be read as a 2D image."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class Problem:
    """One problem found while validating a labelled set: the file it concerns and what is wrong."""

    file: str
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "file", readable(self.file, limit=300))
        object.__setattr__(self, "message", readable(self.message, limit=500))

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


class InvalidSetError(ApplianceError):
    """A labelled set failed validation; ``problems`` lists every problem found, not only the first."""

    def __init__(self, root: str | Path, problems: list[Problem]):
        self.root = Path(root)
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"labelled set {self.root} has {len(self.problems)} problem(s):\n{lines}")


class ModelFileError(ApplianceError):
    """An exported model folder is missing a file or its JSON does not match what the predictor needs."""


class CheckpointError(ApplianceError):
    """A training checkpoint cannot be resumed with the given configuration or set."""


class ServiceError(ApplianceError):
    """The service cannot start or run as asked (another instance holds the data dir, a folder is unusable)."""
