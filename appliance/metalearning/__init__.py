"""Meta-learning, the offline half of the AutoML: the meta-base builder, the meta-model that predicts which of the 576
configurations do best on a new set (paper 3.6, 5.4; thesis 4.7), its evaluation and report. The run-time half (set
features, ranking, the race, halving) is :mod:`appliance.automl`; it loads the shipped model through this face.

Modules (everything public is re-exported here):

1. ``base``: :func:`load_metabase` reads the meta-base CSV (one row per set x configuration x fidelity) into a
   :class:`MetaBase` and says which file and which columns are wrong when it cannot.
2. ``features``: feature-set *variants* name which meta-features go into the model, as ``+``-joined groups:
   ``hp`` (the seven hyperparameters, encoder as 0/1 for resnet50; always included), ``hc`` (every ``hc_*`` column),
   ``eng`` (``eng_*``), ``user`` (``user_*``), ``opt_raw`` (the raw ``opt_*`` radiomics means), ``opt_pca`` (4 principal
   components of the z-scored set-level ``opt_*`` vectors), ``opt_cos`` (cosine similarity to each training set),
   ``opt_pca_x`` / ``opt_cos_x`` (the thesis' "engineered radiomics": each component or similarity multiplied by
   learning rate x backbone factor (0.5 resnet18, 2 resnet50) x classes) and ``fid`` (train on every fidelity of the
   meta-base with log(fidelity_mp) as a feature). ``all`` = ``hp+hc+eng+user+opt_pca+opt_cos+opt_pca_x``.
   The optical reductions are fitted on the training sets only (inside each leave-one-dataset-out fold).
3. ``learners`` (:data:`MODELS`): ``rf_d7`` (the paper's random forest, max depth 7, on raw IoU: the baseline),
   ``rf_d7_setz`` (the same forest on IoU standardised within each set: it spends no splits on predicting a set's mean
   IoU, which cannot help ranking inside one set), ``xgb_reg`` / ``xgb_reg_setz`` (gradient-boosted trees, same two
   targets), ``xgb_rank`` (LambdaMART-style ``rank:pairwise`` = RankNet loss, as in the thesis, grouped by set on the
   raw IoU: pairwise needs no integer labels), ``xgb_ndcg`` (``rank:ndcg`` LambdaMART on within-set decile grades
   0..9, the thesis' "binned IoU"), ``ens`` (mean of the standardised scores of ``rf_d7_setz`` and ``xgb_rank``) and
   the fidelity-aware ``rf_d7_curve`` (:data:`FIDELITY_AWARE_MODEL`: fitted on every learning-curve point with the
   training amount as an input, IoU standardised within each set over all its points, so that it answers "how good
   after X MP": ``MetaModel.predict(rows, fidelity_mp=X)``).
4. ``evaluation``: :func:`evaluate` runs leave-one-dataset-out over several seeds and returns an
   :class:`EvaluationTable`; ``model``: :class:`MetaModel` is the shipped model (fit on all sets, saved without
   pickle) and :func:`rank_configurations` ranks all 576 configurations for a new set.
5. ``builder`` trains configurations on the shared sets and writes the meta-base CSV; ``report`` fits, evaluates
   and writes the shipped model and its report (``appliance metamodel train``).
6. ``fidelity``: :func:`evaluate_fidelities` reports the fidelity-aware model at every curve point against RF-d7
   fitted at that point alone, and its extrapolation from the points <= F to those above
   (``appliance metamodel evaluate --fidelity-aware``).
7. ``retrain``: :func:`retrain_with_living` folds the data dir's living meta-base into a new model and activates it
   (``<data dir>/metamodels/active.json``) only when its leave-one-dataset-out z is not below the active model's;
   :func:`active_metamodel_dir` is where ranking finds the active model (``appliance metamodel train --living``).

Metrics per held-out set (thesis 4.7.1): z = (mean true IoU of the predicted top 10 % - mean of all) / std of all
(population std; top 10 % = ceil(0.1 n), at least 1), the oracle z of the true top 10 %, Pearson r, Kendall tau,
RMSE (only for models that predict IoU itself), diff IoU = mean of the true top 10 % - mean of the predicted top 10 %,
and regret = best true IoU - true IoU of the predicted best. They are averaged over held-out sets per seed; the table
shows mean +- std over seeds.
"""

from appliance.metalearning.base import (
    HYPERPARAMETERS,
    LIVING_METABASE,
    META_FILE,
    MODEL_FILE,
    TARGET,
    MetaBase,
    MetaBaseError,
    MetabaseSummary,
    load_metabase,
    summarise_metabase,
)
from appliance.metalearning.evaluation import EvaluationTable, evaluate, set_metrics, top_count
from appliance.metalearning.features import parse_variant
from appliance.metalearning.fidelity import FidelityReport, evaluate_fidelities
from appliance.metalearning.learners import DEFAULT_MODELS, FIDELITY_AWARE_MODEL, MODELS, ModelSpec
from appliance.metalearning.model import MetaModel, rank_configurations, work_doubling_gain
from appliance.metalearning.retrain import (
    LivingMetaBaseError,
    RetrainResult,
    active_metamodel_dir,
    load_living_metabase,
    retrain_with_living,
)

__all__ = [
    "DEFAULT_MODELS",
    "FIDELITY_AWARE_MODEL",
    "HYPERPARAMETERS",
    "LIVING_METABASE",
    "META_FILE",
    "MODELS",
    "MODEL_FILE",
    "TARGET",
    "EvaluationTable",
    "FidelityReport",
    "LivingMetaBaseError",
    "MetaBase",
    "MetaBaseError",
    "MetaModel",
    "MetabaseSummary",
    "ModelSpec",
    "RetrainResult",
    "active_metamodel_dir",
    "evaluate",
    "evaluate_fidelities",
    "load_living_metabase",
    "load_metabase",
    "parse_variant",
    "rank_configurations",
    "retrain_with_living",
    "set_metrics",
    "summarise_metabase",
    "top_count",
    "work_doubling_gain",
]
