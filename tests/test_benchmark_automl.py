"""The AutoML matrix on a machine without pyradiomics (the GPU check image) still ranks with the meta-model."""

import json
import sys

from appliance.automl.ranking import METAMODEL_SOURCE, rank_for_set
from appliance.settings import REPOSITORY_MODELS
from benchmarks.automl import FEATURE_CACHE, cached_features, ranking_without_pyradiomics


def _cache_for(tmp_path, labelled_set, *, images=None, seconds=12.5):
    """The builder's cached features of a shared set, filed under the demo set's name."""
    shipped = json.loads(FEATURE_CACHE.read_text())["cpm15_he_nuclei"]
    entry = {**shipped, "seconds": seconds}
    entry["signature"] = {
        **shipped["signature"],
        "images": len(labelled_set) if images is None else images,
        "metadata": labelled_set.metadata,  # a set that metabase/sets.yaml does not name brings its own
    }
    path = tmp_path / "features.json"
    path.write_text(json.dumps({labelled_set.name: entry}))
    return path, shipped["features"]


def test_cached_features_are_found_by_set_name_and_the_way_they_were_computed(tmp_path, demo_set):
    path, features = _cache_for(tmp_path, demo_set, seconds=7.0)
    assert cached_features(demo_set, path) == (features, 7.0)
    other, _ = _cache_for(tmp_path, demo_set, images=len(demo_set) + 1)
    assert cached_features(demo_set, other) is None  # the set changed since the features were computed
    shipped_metadata, _ = _cache_for(tmp_path, demo_set)
    entries = json.loads(shipped_metadata.read_text())
    entries[demo_set.name]["signature"]["metadata"] = {"microscopy": "electron"}
    shipped_metadata.write_text(json.dumps(entries))
    assert cached_features(demo_set, shipped_metadata) is None  # computed with other user-given metadata
    assert cached_features(demo_set, tmp_path / "missing.json") is None


def test_without_pyradiomics_ours_ranks_on_the_cached_features_and_is_charged_their_seconds(
    tmp_path, demo_set, monkeypatch
):
    path, features = _cache_for(tmp_path, demo_set)
    assert ranking_without_pyradiomics(demo_set, REPOSITORY_MODELS, path) == (None, 0.0)  # installed: the job ranks

    monkeypatch.setitem(sys.modules, "radiomics", None)  # as on an image without it
    ranking, charged = ranking_without_pyradiomics(demo_set, REPOSITORY_MODELS, path)
    assert charged == 12.5
    assert ranking.source.startswith(METAMODEL_SOURCE)
    expected, _ = rank_for_set(features, models_dir=REPOSITORY_MODELS)
    assert ranking.configurations == expected.configurations
    assert ranking_without_pyradiomics(demo_set, REPOSITORY_MODELS, tmp_path / "missing.json") == (None, 0.0)
