"""Rank the 576 configurations for a labelled set: the shipped meta-model when present, else a fixed prior.

The fallback prior (used when ``models/metamodel.json`` is missing or cannot be read) puts the paper's
default configuration first and orders the rest by how many hyperparameters differ from it (fewest
first, then by configuration id). It is a reasonable neighbourhood of a known-good configuration, not
a prediction; the run records which source ranked it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.automl.search_space import search_space
from appliance.errors import ApplianceError
from appliance.pipeline.config import PAPER_DEFAULT, SEARCH_SPACE, PipelineConfig

METAMODEL_SOURCE = "meta-model"
FALLBACK_SOURCE = "fallback prior (paper default, then nearest configurations)"


@dataclass(frozen=True)
class Ranking:
    """All configurations, best first, with predicted scores (None for the fallback) and where it came from."""

    configurations: tuple[PipelineConfig, ...]
    scores: tuple[float | None, ...]
    source: str
    # from the meta-model, for weighing a score against throughput (appliance.automl.race); None: not known
    work_doubling_gain: float | None = None
    score_correlation: float | None = None
    # a fidelity-aware meta-model: the scores of `configurations` after the given MP of training each, and the span
    # of training amounts it learned from (appliance.automl.race asks it at what each configuration will get here)
    score_at: Callable[[Sequence[float]], Sequence[float]] | None = None
    fidelity_range: tuple[float, float] | None = None


def fallback_ranking() -> Ranking:
    """The paper default first, then by number of differing hyperparameters, then by id."""

    def distance(config: PipelineConfig) -> int:
        return sum(getattr(config, name) != getattr(PAPER_DEFAULT, name) for name in SEARCH_SPACE)

    configurations = tuple(sorted(search_space(), key=lambda c: (distance(c), c.id)))
    return Ranking(configurations, (None,) * len(configurations), FALLBACK_SOURCE)


def rank_for_set(
    set_features: Mapping[str, float], *, models_dir: str | Path, fidelity: float | None = None
) -> tuple[Ranking, str | None]:
    """Rank every configuration with the meta-model in ``models_dir``; fall back to the prior when there is none.

    Returns the ranking and, when the fallback was used, the reason.
    """
    from appliance.metalearning import MODEL_FILE, MetaModel, rank_configurations
    from appliance.metalearning.model import configuration_columns

    models_dir = Path(models_dir)
    if not (models_dir / MODEL_FILE).is_file():
        return fallback_ranking(), f"no meta-model at {models_dir / MODEL_FILE}"
    try:
        model = MetaModel.load(models_dir)
        ranked = rank_configurations(model, dict(set_features), fidelity=fidelity)
    except ApplianceError as error:
        return fallback_ranking(), f"meta-model in {models_dir} not usable: {error}"
    configurations = tuple(c for c, _ in ranked)
    columns = configuration_columns(model, dict(set_features), configurations) if model.fidelity_aware else None

    def score_at(training_mp: Sequence[float]) -> tuple[float, ...]:  # the columns built once, in ranking order
        return tuple(float(s) for s in model.predict(columns, fidelity_mp=np.asarray(training_mp, dtype=float)))

    ranking = Ranking(
        configurations,
        tuple(float(s) for _, s in ranked),
        f"{METAMODEL_SOURCE} {model.label} from {models_dir}",
        work_doubling_gain=model.work_doubling_gain,
        score_correlation=model.score_correlation,
        score_at=score_at if model.fidelity_aware else None,
        fidelity_range=model.fidelity_range if model.fidelity_aware else None,
    )
    return ranking, None
