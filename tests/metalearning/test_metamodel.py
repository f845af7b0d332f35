"""Meta-model: metrics, leave-one-dataset-out evaluation, pickle-free export and ranking, on a synthetic meta-base."""

import csv
import json
import math

import numpy as np
import pytest

from appliance import metalearning as mm
from appliance.automl.metafeatures import engineered_features
from appliance.automl.search_space import search_space
from appliance.errors import ConfigError, ModelFileError
from appliance.metalearning import features, learners
from appliance.pipeline.config import PipelineConfig

AUGMENTATIONS = ("flip", "brightness_blur", "grid_distortion")
FIDELITIES = (0.5, 1.0, 2.0)


def synthetic_set_features(index: int) -> dict[str, float]:
    """Set-level meta-features of fake set ``index``: small/large objects, 1..4 classes, few/many images."""
    rng = np.random.default_rng(100 + index)
    large = index % 2 == 1
    features = {
        "hc_images": float([8, 40, 12, 53, 6, 25][index % 6]),
        "hc_classes": float([1, 2, 3, 1, 4, 2][index % 6]),
        "hc_class_imbalance": float(rng.uniform(0.1, 0.6)),
        "hc_mean_shape": float([512, 1024, 700, 1388, 256, 900][index % 6]),
        "hc_rgb": float(index % 3 == 0),
        "hc_roi_mean": float(4000 if large else 300) * float(rng.uniform(0.8, 1.2)),
        "hc_roi_std": float(rng.uniform(50, 500)),
        "hc_roi_min": float(rng.uniform(1, 20)),
        "hc_roi_max": float(rng.uniform(1e3, 1e5)),
        "user_microscopy_brightfield": float(index % 3 == 0),
        "user_microscopy_fluorescence": float(index % 3 == 1),
        "user_microscopy_phase_contrast": float(index % 3 == 2),
        "user_object_nuclei": float(not large),
        "user_object_cells": float(large),
        "user_magnification": float([20, 40, 10, 63, 20, 40][index % 6]),
        "user_magnification_known": float(index != 4),
    }
    latent = np.array([1.0 if large else -1.0, features["hc_classes"] - 2.5])
    mixing = np.random.default_rng(7).normal(size=(2, 8))
    for j, value in enumerate(latent @ mixing + rng.normal(scale=0.2, size=8)):
        features[f"opt_feature_{j}"] = float(value * 10 + 50)
    return features


def synthetic_quality(features: dict[str, float], config) -> float:
    """The known function the meta-model should learn: hyperparameter effects that depend on the set."""
    large = features["hc_roi_mean"] > 1000
    classes = features["hc_classes"]
    quality = 0.05 * (config.learning_rate == 0.001) - 0.06 * (config.learning_rate == 0.01)
    quality += 0.03 * math.log2(config.patch_size / 64) * (1 if large else -1)
    quality -= 0.02 * abs(math.log2(config.batch_size / (8 if features["hc_images"] < 20 else 16)))
    quality += (0.04 if classes >= 3 else -0.03) * (config.encoder == "resnet50")
    quality += 0.015 * (config.flip > 0) + (0.02 if features["hc_images"] < 20 else -0.01) * (
        config.grid_distortion > 0
    )
    return quality


def synthetic_rows(n_sets: int = 6, configs_per_set: int = 40, seed: int = 0) -> list[dict]:
    """One row per (set, configuration, fidelity) in the meta-base builder's layout."""
    rng = np.random.default_rng(seed)
    space = list(search_space())
    rows = []
    for index in range(n_sets):
        features = synthetic_set_features(index)
        base = 0.9 - 0.07 * (features["hc_classes"] - 1) + rng.uniform(-0.05, 0.05)
        for pick in rng.choice(len(space), size=configs_per_set, replace=False):
            config = space[pick]
            quality = synthetic_quality(features, config)
            for fidelity in FIDELITIES:
                iou = base - 0.05 * (2 - fidelity) + quality * min(1.0, fidelity / 2) + rng.normal(scale=0.004)
                n_aug = sum(getattr(config, a) > 0 for a in AUGMENTATIONS)
                ppi = (features["hc_mean_shape"] / config.patch_size) ** 2
                bpe = ppi * features["hc_images"] / config.batch_size
                rows.append(
                    {
                        "set": f"set{index}",
                        "config_id": config.id,
                        **config.to_dict(),
                        "seed": 0,
                        "fidelity_mp": fidelity,
                        "run_fidelity_mp": FIDELITIES[-1],
                        "val_iou": float(np.clip(iou, 0, 1)),
                        "val_iou_per_class": json.dumps([float(np.clip(iou, 0, 1))]),
                        "train_seconds": 1.0,
                        "device": "cpu",
                        **features,
                        "eng_patches_per_image": ppi,
                        "eng_batches_per_epoch": bpe,
                        "eng_augmentation_batches": n_aug * 2 * bpe,
                        "eng_lr_batches": config.learning_rate * bpe,
                        "eng_backbone_classes": (2.0 if config.encoder == "resnet50" else 0.5) * features["hc_classes"],
                    }
                )
    return rows


LONG_POINTS = (4.0, 8.0, 16.0, 32.0)


def with_long_curves(rows: list[dict], per_set: int = 3) -> list[dict]:
    """``rows`` plus, for the first ``per_set`` configurations of each set, the builder's long run of the same
    configuration: its points up to 2 MP again and :data:`LONG_POINTS`, where large batches catch up."""
    long_rows, taken = [], {}
    for row in rows:
        chosen = taken.setdefault(row["set"], [])
        if row["config_id"] not in chosen and len(chosen) < per_set:
            chosen.append(row["config_id"])
        if row["config_id"] not in chosen:
            continue
        long_rows.append({**row, "run_fidelity_mp": LONG_POINTS[-1]})
        if row["fidelity_mp"] == FIDELITIES[-1]:
            for point in LONG_POINTS:
                gain = (1 - row["val_iou"]) * 0.05 * np.log2(point / 2) * (1 + row["batch_size"] / 16)
                long_rows.append(
                    {
                        **row,
                        "fidelity_mp": point,
                        "run_fidelity_mp": LONG_POINTS[-1],
                        "val_iou": float(row["val_iou"] + gain),
                    }
                )
    return rows + long_rows


def write_csv(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def metabase_path(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("metabase") / "metabase.csv", synthetic_rows())


@pytest.fixture(scope="module")
def metabase(metabase_path):
    return mm.load_metabase(metabase_path)


def _set_features(base: mm.MetaBase, name: str) -> dict[str, float]:
    row = int(np.flatnonzero(base.columns["set"] == name)[0])
    return {c: float(base.columns[c][row]) for c in base.order if c.startswith(("hc_", "user_", "opt_"))}


# --- metrics --------------------------------------------------------------------------------------------------------


def test_metrics_on_a_hand_made_example():
    true = [0.05 * i for i in range(20)]  # 0.00 .. 0.95, mean 0.475, population std 0.05·sqrt(399/12)
    predicted = [0.0] * 20
    predicted[12], predicted[19] = 2.0, 1.0  # predicted best: true 0.60; predicted top 2 (= ceil(0.1·20)): 0.60, 0.95
    metrics = mm.set_metrics(true, predicted)
    std = 0.05 * math.sqrt(399 / 12)
    assert metrics["z"] == pytest.approx((0.775 - 0.475) / std)
    assert metrics["oracle_z"] == pytest.approx((0.925 - 0.475) / std)
    assert metrics["diff_iou"] == pytest.approx(0.925 - 0.775)
    assert metrics["regret"] == pytest.approx(0.95 - 0.60)


def test_a_perfect_predictor_reaches_the_oracle_and_a_reversed_one_falls_below_random():
    true = np.random.default_rng(0).uniform(0.5, 0.9, size=37)
    perfect = mm.set_metrics(true, true)
    assert perfect["z"] == perfect["oracle_z"] > 1
    assert perfect["regret"] == 0 and perfect["diff_iou"] == 0 and perfect["rmse"] == 0
    assert perfect["pearson"] == pytest.approx(1) and perfect["kendall"] == pytest.approx(1)
    reversed_ = mm.set_metrics(true, -true, pointwise=False)
    assert reversed_["z"] < 0 and reversed_["kendall"] == pytest.approx(-1) and math.isnan(reversed_["rmse"])


def test_top_ten_percent_is_rounded_up_and_never_empty():
    assert [mm.top_count(n) for n in (1, 9, 10, 11, 30, 31, 576)] == [1, 1, 1, 2, 3, 4, 58]


# --- loading --------------------------------------------------------------------------------------------------------


def test_a_missing_column_is_named_with_the_file(tmp_path):
    rows = [{k: v for k, v in row.items() if k != "val_iou"} for row in synthetic_rows(2, 3)]
    path = write_csv(tmp_path / "broken.csv", rows)
    with pytest.raises(mm.MetaBaseError, match="val_iou") as error:
        mm.load_metabase(path)
    assert str(path) in str(error.value) and isinstance(error.value, ConfigError)


def test_a_value_that_is_not_a_number_is_named_with_its_row(tmp_path):
    rows = synthetic_rows(2, 3)
    rows[4]["hc_images"] = "many"
    with pytest.raises(mm.MetaBaseError, match=r"'hc_images' row 6 holds 'many'"):
        mm.load_metabase(write_csv(tmp_path / "bad.csv", rows))


def test_loading_keeps_groups_in_file_order_and_drops_rows_without_iou(tmp_path):
    rows = synthetic_rows(2, 3)
    rows[0]["val_iou"] = ""
    base = mm.load_metabase(write_csv(tmp_path / "m.csv", rows))
    assert base.dropped_rows == 1 and base.n_rows == len(rows) - 1
    assert base.sets == ["set0", "set1"] and base.fidelities == list(FIDELITIES)
    assert base.prefixed("eng_")[0] == "eng_patches_per_image" and len(base.prefixed("user_")) == 7


# --- features -------------------------------------------------------------------------------------------------------


def test_variants_parse_and_always_include_hyperparameters():
    assert mm.parse_variant("hc+eng") == ("hp", "hc", "eng")
    assert mm.parse_variant("all") == ("hp", "hc", "eng", "user", "opt_pca", "opt_cos", "opt_pca_x")
    with pytest.raises(ConfigError, match="radiomics"):
        mm.parse_variant("hp+radiomics")


def test_optical_reductions_are_fitted_on_training_sets_only(metabase):
    train = metabase.subset(metabase.columns["set"] != "set3")
    builder = features._FeatureBuilder("hp+hc+eng+opt_pca+opt_cos+opt_pca_x").fit(train)
    cosines = [n for n in builder.feature_names if n.startswith("cos_opt_")]
    assert cosines == [f"cos_opt_set{i}" for i in (0, 1, 2, 4, 5)]
    x = builder.transform(metabase.columns)
    assert x.shape == (metabase.n_rows, len(builder.feature_names)) and np.isfinite(x).all()
    column = builder.feature_names.index("cos_opt_set1")
    assert np.allclose(x[metabase.columns["set"] == "set1", column], 1.0)  # a training set is itself
    # the reduction is a pure function of the training sets: adding the held-out set's rows changes nothing
    again = features._FeatureBuilder("hp+hc+eng+opt_pca+opt_cos+opt_pca_x").fit(train)
    assert np.array_equal(again.transform(metabase.columns), x)


def test_ranking_computes_engineered_features_like_the_metabase(metabase):
    """The engineered features the ranking computes per configuration equal the meta-base's columns."""
    features = _set_features(metabase, "set2")
    rows = np.flatnonzero(metabase.columns["set"] == "set2")
    for row in rows[:10]:
        values = {h: metabase.columns[h][row] for h in mm.HYPERPARAMETERS}
        values["patch_size"], values["batch_size"] = int(values["patch_size"]), int(values["batch_size"])
        engineered = engineered_features(features, PipelineConfig(**values))
        for name, value in engineered.items():
            assert np.isclose(value, metabase.columns[name][row]), name


# --- leave-one-dataset-out ------------------------------------------------------------------------------------------


class _Memoriser:
    """Predicts the IoU it saw for an identical feature row (else 0) and records the sets it trained on."""

    trained_on: list[set] = []

    def __init__(self, seed):
        self.table = {}

    def fit(self, x, y, groups):
        _Memoriser.trained_on.append(set(groups.tolist()))
        self.table = {tuple(row): value for row, value in zip(x.round(9).tolist(), y, strict=True)}
        return self

    def predict(self, x):
        return np.array([self.table.get(tuple(row), 0.0) for row in x.round(9).tolist()])


class _Random:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def fit(self, x, y, groups):
        return self

    def predict(self, x):
        return self.rng.uniform(size=len(x))


def test_leave_one_dataset_out_never_trains_on_the_held_out_set(metabase):
    _Memoriser.trained_on.clear()
    spec = mm.ModelSpec("memoriser", _Memoriser, pointwise=True, deterministic=True)
    table = mm.evaluate(metabase, models=[spec], variants=["hp+hc+eng+opt_cos"], seeds=[0])
    assert len(_Memoriser.trained_on) == len(metabase.sets) == 6
    for held_out, trained_on in zip(table.sets, _Memoriser.trained_on, strict=True):
        assert trained_on == set(metabase.sets) - {held_out}
    z = table.per_set("memoriser", "hp+hc+eng+opt_cos")
    assert all(z[s] < table.oracle_z[s] - 0.1 for s in table.sets)  # it never saw a held-out row


def test_evaluation_is_deterministic_and_a_learned_model_beats_random(metabase):
    random_spec = mm.ModelSpec("random", _Random, pointwise=False, deterministic=False)
    kwargs = {"models": ["rf_d7", "xgb_rank", random_spec], "variants": ["hp+hc+eng"]}
    first, second = mm.evaluate(metabase, seeds=[0, 1], **kwargs), mm.evaluate(metabase, seeds=[1], **kwargs)
    for key in first.results:  # seed 1 gives the same numbers whether or not seed 0 ran before it
        assert np.array_equal(first.results[key][1:], second.results[key], equal_nan=True), key
    assert not np.array_equal(first.results[("rf_d7", "hp+hc+eng")][0], first.results[("rf_d7", "hp+hc+eng")][1])
    assert first.fidelity == 2.0 and first.rows_per_set == {s: 40 for s in metabase.sets}
    random_z = first.summary("random", "hp+hc+eng")["z"][0]
    for model in ("rf_d7", "xgb_rank"):
        z = first.summary(model, "hp+hc+eng")["z"][0]
        assert z > random_z + 0.5 and z > 0.8, (model, z, random_z)
    assert first.best() in {("rf_d7", "hp+hc+eng"), ("xgb_rank", "hp+hc+eng")}
    markdown = first.to_markdown()
    assert "| oracle (true top 10 %) | — |" in markdown and "RF-d7 baseline (hp+hc+eng) z = " in markdown
    assert first.comparison_line().endswith("(goal ≥ 1.15×)")
    assert "| set0 | 40 |" in first.per_set_markdown()
    json.dumps(first.to_dict(), allow_nan=False)  # plain, strict JSON


def test_all_fidelities_variant_and_a_lower_evaluation_fidelity(metabase):
    table = mm.evaluate(metabase, models=["xgb_reg"], variants=["hp+hc+eng"], seeds=[0], use_all_fidelities=True)
    assert list(table.results) == [("xgb_reg", "hp+hc+eng+fid")]
    low = mm.evaluate(metabase, models=["xgb_ndcg"], variants=["hp+hc"], seeds=[0], fidelity=0.5)
    assert low.fidelity == 0.5 and math.isfinite(low.summary("xgb_ndcg", "hp+hc")["z"][0])


def test_by_default_models_are_fitted_and_scored_at_the_largest_point_every_builder_run_reached(tmp_path):
    long = mm.load_metabase(write_csv(tmp_path / "long.csv", with_long_curves(synthetic_rows(3, 10))))
    assert long.fidelities[-1] == 32.0 and long.common_fidelity == 2.0
    assert mm.evaluate(long, models=["rf_d7"], variants=["hp+hc+eng"], seeds=[0]).fidelity == 2.0
    assert mm.MetaModel.fit(long, "rf_d7", "hp+hc+eng").fidelity == 2.0
    assert mm.MetaModel.fit(long, mm.FIDELITY_AWARE_MODEL, "hp+hc+eng").fidelity == 32.0  # its default amount
    rows = [{k: v for k, v in row.items() if k != "run_fidelity_mp"} for row in with_long_curves(synthetic_rows(3, 10))]
    assert mm.load_metabase(write_csv(tmp_path / "no-run.csv", rows)).common_fidelity == 32.0


def test_default_variants_skip_groups_the_metabase_lacks(tmp_path):
    rows = [{k: v for k, v in row.items() if not k.startswith("opt_")} for row in synthetic_rows(3, 12)]
    base = mm.load_metabase(write_csv(tmp_path / "no-opt.csv", rows))
    table = mm.evaluate(base, models=["xgb_reg"], seeds=[0])
    assert [v for _, v in table.results] == ["hp+hc+eng", "hp+hc+eng+user"]
    assert any("opt_" in note for note in table.notes)
    with pytest.raises(mm.MetaBaseError, match="opt_"):
        mm.evaluate(base, models=["xgb_reg"], variants=["all"], seeds=[0])


# --- the shipped model ----------------------------------------------------------------------------------------------


def test_the_forest_export_reproduces_sklearn_exactly(metabase):
    builder = features._FeatureBuilder("all").fit(metabase)
    x = builder.transform(metabase.columns)
    forest = learners._Forest(3, target="iou").fit(x, metabase.columns["val_iou"], metabase.columns["set"])
    forest.model.n_jobs = 1  # sklearn sums trees in order only when single-threaded
    exported = learners._ForestArrays.from_json(json.loads(json.dumps(forest.portable().to_json())))
    probe = np.vstack([x, x * 1.37, x[:, ::-1].copy()[:, : x.shape[1]]])
    assert np.array_equal(exported.predict(probe), forest.model.predict(probe))


@pytest.mark.parametrize(
    ("model", "variant"), [("rf_d7", "all"), ("xgb_rank", "hp+hc+eng+opt_cos+fid"), ("ens", "hp+hc+eng+opt_pca_x")]
)
def test_save_and_load_give_identical_rankings(metabase, tmp_path, model, variant):
    fitted = mm.MetaModel.fit(metabase, model, variant, seed=1)
    fitted.save(tmp_path)
    meta = json.loads((tmp_path / "metamodel-meta.json").read_text())
    model_json = json.loads((tmp_path / "metamodel.json").read_text())  # plain JSON, nothing to unpickle
    assert meta["model_format"] == model_json.get("format", "xgboost-json")
    assert meta["model"] == model and meta["variant"] == variant and meta["fidelity_mp"] == 2.0
    assert meta["training_sets"] == metabase.sets and meta["feature_names"] == fitted.feature_names
    loaded = mm.MetaModel.load(tmp_path)
    features = _set_features(metabase, "set4")
    before, after = mm.rank_configurations(fitted, features), mm.rank_configurations(loaded, features)
    assert [(c.id, s) for c, s in before] == [(c.id, s) for c, s in after]


def test_the_ensemble_averages_its_members_standardised_on_training_rows(metabase):
    base = metabase.subset(metabase.at_fidelity(2.0))
    x = features._FeatureBuilder("hp+hc+eng").fit(base).transform(base.columns)
    y, groups = base.columns["val_iou"], base.columns["set"]
    members = [mm.MODELS[name].factory(0).fit(x, y, groups) for name in ("rf_d7_setz", "xgb_rank")]
    ensemble = mm.MODELS["ens"].factory(0).compose(members, x)
    standardised = [(m.predict(x) - m.predict(x).mean()) / m.predict(x).std() for m in members]
    assert np.allclose(ensemble.predict(x), np.mean(standardised, axis=0))
    assert np.array_equal(ensemble.portable().predict(x), ensemble.predict(x))


def test_loading_a_folder_without_the_model_file_says_so(tmp_path):
    with pytest.raises(ModelFileError, match="metamodel-meta.json"):
        mm.MetaModel.load(tmp_path)


def test_rank_configurations_scores_all_576_best_first(metabase):
    model = mm.MetaModel.fit(metabase, "rf_d7", "hp+hc+eng+user+opt_pca")
    ranked = mm.rank_configurations(model, _set_features(metabase, "set0"))
    assert len(ranked) == 576 and len({c.id for c, _ in ranked}) == 576
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True)
    # scores equal the model's prediction from the meta-base's own rows for the same configurations
    rows = (metabase.columns["set"] == "set0") & metabase.at_fidelity(2.0)
    direct = model.predict({c: metabase.columns[c][rows] for c in model.input_columns})
    by_id = {c.id: s for c, s in ranked}
    assert np.allclose([by_id[i] for i in metabase.columns["config_id"][rows]], direct)
    with pytest.raises(ConfigError, match="hc_mean_shape"):
        mm.rank_configurations(model, {"hc_images": 3.0})
