"""The search space of the paper (Table 1): 3·4·3·2·2·2·2 = 576 pipeline configurations."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from appliance.pipeline.config import SEARCH_SPACE, PipelineConfig


def search_space() -> Iterator[PipelineConfig]:
    """Yield every configuration of the search space once, in a fixed order (the product of
    :data:`~appliance.pipeline.config.SEARCH_SPACE` values, first key slowest)."""
    names = list(SEARCH_SPACE)
    for values in itertools.product(*(SEARCH_SPACE[name] for name in names)):
        yield PipelineConfig(**dict(zip(names, values, strict=True)))
