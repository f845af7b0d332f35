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


def test_the_table_shows_a_cell_with_a_missing_method_and_averages_each_difference_over_its_own_cells():
    from benchmarks.automl import render_table

    def row(method, iou, seed):
        return {"method": method, "test_iou": iou, "budget_seconds": 900.0, "set": "s", "seed": seed, "n": 3,
                "winner": "c-1"}  # fmt: skip

    table = render_table(
        [
            row("ours", 0.70, 0),
            row("default", 0.66, 0),
            row("random", 0.60, 0),
            row("ours", 0.50, 1),
            row("default", 0.55, 1),
        ]  # fmt: skip
    )
    assert "| 15 min | s | 1 | 0.500 | 0.550 | – | -0.050 | – | 3, c-1 |" in table
    assert table.endswith(
        "- T = 15 min: mean ours − default -0.005, ours ≥ default in 1/2 cells; "
        "mean ours − random +0.100, ours ≥ random in 1/1 cells"
    )
