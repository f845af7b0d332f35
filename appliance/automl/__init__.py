"""Search space, meta-learning and successive halving."""

from appliance.automl.search_space import search_space

__all__ = ["search_space"]
